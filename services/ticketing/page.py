"""The visitor's waiting page, served by the API at ``GET /wait/{room_id}``.

A small page over the public API: it joins once (an ``Idempotency-Key`` kept in the tab's session
storage, so a reload or a retried request keeps the same place), heartbeats at the room's interval,
shows the number, the position and the estimated wait, and once admitted offers the way in with a
fresh entry token. Everything shown is set with ``textContent``; the only inline script carries a
per-response nonce allowed by the Content-Security-Policy.
"""

from __future__ import annotations

import html
import json
import secrets

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Waiting room — __ROOM_TEXT__</title>
<style nonce="__NONCE__">
  body { font: 17px/1.5 system-ui, sans-serif; max-width: 34rem; margin: 3rem auto; padding: 0 1rem; color: #1d2330; }
  h1 { font-size: 1.4rem; margin-bottom: .2rem; }
  .big { font-size: 3rem; font-weight: 700; margin: .5rem 0; }
  .muted { color: #5b6475; }
  .card { border: 1px solid #d9dde6; border-radius: 12px; padding: 1.2rem 1.4rem; margin: 1.2rem 0; }
  a.enter, button { display: inline-block; font: inherit; padding: .55rem 1.1rem; border-radius: 8px; cursor: pointer; }
  a.enter { background: #1f6feb; color: #fff; text-decoration: none; }
  button { background: #fff; border: 1px solid #b8bfcc; }
  [hidden] { display: none !important; }
</style>
</head>
<body>
<h1>Waiting room: <span id="room"></span></h1>
<p class="muted">Keep this page open: it holds your place. We let visitors in in the order they arrived.</p>
<div class="card" id="waiting" hidden>
  <div class="muted">People ahead of you</div>
  <div class="big" id="position">…</div>
  <div>Your number: <strong id="queue-no"></strong></div>
  <div id="eta-line" hidden>Estimated wait: <strong id="eta"></strong></div>
</div>
<div class="card" id="admitted" hidden>
  <div class="big">It's your turn</div>
  <p>Your number <strong id="admitted-no"></strong> has been let in.</p>
  <p><a class="enter" id="enter" href="#">Enter the site</a></p>
</div>
<div class="card" id="ended" hidden>
  <p id="ended-text"></p>
  <button id="rejoin">Join the queue again</button>
</div>
<p class="muted" id="status" role="status"></p>
<p><button id="leave" hidden>Leave the queue</button></p>
<script nonce="__NONCE__">
(() => {
  const room = __ROOM_JSON__;
  const target = __TARGET_JSON__;
  const api = "/v1/rooms/" + encodeURIComponent(room);
  const key = "waitroom:" + room;
  const $ = (id) => document.getElementById(id);
  $("room").textContent = room;
  let ticket = JSON.parse(sessionStorage.getItem(key) || "null");
  let timer = null;

  function show(which) {
    for (const id of ["waiting", "admitted", "ended"]) $(id).hidden = id !== which;
    $("leave").hidden = which === "ended";
  }
  function say(text) { $("status").textContent = text; }
  function schedule(seconds) { clearTimeout(timer); timer = setTimeout(beat, Math.max(0.5, seconds) * 1000); }
  function auth() { return { "Authorization": "Bearer " + ticket.ticket_token }; }

  function render(t) {
    if (t.state === "waiting") {
      show("waiting");
      $("position").textContent = String(t.position);
      $("queue-no").textContent = String(t.queue_no);
      $("eta-line").hidden = t.estimated_wait_s == null;
      if (t.estimated_wait_s != null) $("eta").textContent = Math.max(1, Math.round(t.estimated_wait_s)) + " s";
    } else if (t.state === "admitted") {
      show("admitted");
      $("admitted-no").textContent = String(t.queue_no);
      const link = $("enter");
      if (target && t.entry_token) {
        const url = new URL(target);
        url.searchParams.set("waitroom_token", t.entry_token);
        link.href = url.toString();
        link.hidden = false;
      } else {
        link.hidden = true;
      }
      link.dataset.token = t.entry_token || "";
    }
  }

  async function join() {
    say("Getting your number…");
    const idem = sessionStorage.getItem(key + ":idem") || crypto.randomUUID();
    sessionStorage.setItem(key + ":idem", idem);
    const r = await fetch(api + "/tickets", { method: "POST", headers: { "Idempotency-Key": idem } });
    if (r.status === 201 || r.status === 200 || r.status === 202) {
      const body = await r.json();
      ticket = { ticket_id: body.ticket_id, ticket_token: body.ticket_token };
      sessionStorage.setItem(key, JSON.stringify(ticket));
      if (body.state !== "pending") render(body);
      say("");
      schedule(body.heartbeat_interval_s || 1);
    } else {
      const retry = Number(r.headers.get("Retry-After") || 2);
      say(r.status === 404 ? "This waiting room does not exist." : "Busy; trying again in " + retry + " s…");
      if (r.status !== 404) setTimeout(join, retry * 1000);
    }
  }

  async function beat() {
    try {
      const r = await fetch(api + "/tickets/" + ticket.ticket_id + "/heartbeat", { method: "POST", headers: auth() });
      if (r.status === 200) {
        const t = await r.json();
        render(t);
        say("");
        schedule(t.heartbeat_interval_s);
      } else if (r.status === 410) {
        const left = (await r.json()).error === "ticket_left";
        end(left ? "You left the queue." : "Your place expired because this page stopped answering.");
      } else if (r.status === 202) {
        say("Getting your number…");
        schedule(1);
      } else {
        say("Connection trouble; your place is kept while we retry.");
        schedule(Number(r.headers.get("Retry-After") || 2));
      }
    } catch (e) {
      say("Connection trouble; your place is kept while we retry.");
      schedule(2);
    }
  }

  function end(text) {
    clearTimeout(timer);
    sessionStorage.removeItem(key);
    sessionStorage.removeItem(key + ":idem");
    ticket = null;
    show("ended");
    $("ended-text").textContent = text;
  }

  $("leave").addEventListener("click", async () => {
    if (!ticket) return;
    await fetch(api + "/tickets/" + ticket.ticket_id, { method: "DELETE", headers: auth() });
    end("You left the queue.");
  });
  $("rejoin").addEventListener("click", () => join());

  if (ticket) beat(); else join();
})();
</script>
</body>
</html>
"""


def render_page(room_id: str, target_url: str | None) -> tuple[str, dict[str, str]]:
    """The page for ``room_id`` and the headers it must be served with (its CSP nonce is fresh)."""
    nonce = secrets.token_urlsafe(16)
    body = (
        PAGE.replace("__NONCE__", nonce)
        .replace("__ROOM_TEXT__", html.escape(room_id))
        .replace("__ROOM_JSON__", _script_json(room_id))
        .replace("__TARGET_JSON__", _script_json(target_url))
    )
    headers = {
        "Content-Security-Policy": (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ),
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    return body, headers


def _script_json(value: object) -> str:
    """JSON that is safe inside a <script> element (no closing tag, no HTML comment openers)."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
