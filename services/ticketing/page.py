"""The visitor's waiting page, served by the API at ``GET /wait/{room_id}``.

A small page over the public API: it joins once (an ``Idempotency-Key`` kept in the tab's session
storage, so a reload or a retried request keeps the same place), then holds the ticket's stream
(``streams.py``: an ``EventSource``, which the API heartbeats for), so a waiting visitor sends no
requests at all; if the stream is refused or stays down longer than a few seconds, it polls the
heartbeat call at the room's interval until the stream comes back. It shows the number, the
position with a progress bar from the position at join to 0, the estimated wait in words, and once
admitted the way in with a fresh entry token (pushed again before it expires). Texts come from one
catalogue (``MESSAGES``), in the visitor's language (``Accept-Language``); the room's branding
(title, message, logo, colours) is validated when the room is configured. Everything shown is set
with ``textContent``; the only inline script carries a per-response nonce allowed by the
Content-Security-Policy, which allows images only from the logo's origin.
"""

from __future__ import annotations

import html
import json
import re
import secrets
from collections.abc import Mapping
from urllib.parse import urlsplit

from waitroom_core.room import BRANDING_COLOURS

PAGE = """<!doctype html>
<html lang="__LANG__">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE_TEXT__</title>
<style nonce="__NONCE__">
  :root { --accent: __ACCENT__; --bg: __BACKGROUND__; --fg: __FOREGROUND__; }
  * { box-sizing: border-box; }
  body { font: 17px/1.5 system-ui, sans-serif; margin: 0; background: var(--bg); color: var(--fg); }
  main { max-width: 34rem; margin: 0 auto; padding: 2.5rem 1rem; }
  header { display: flex; align-items: center; gap: .9rem; }
  header img { max-height: 3rem; max-width: 9rem; }
  h1 { font-size: 1.45rem; margin: 0; line-height: 1.25; }
  .big { font-size: 3rem; font-weight: 700; margin: .3rem 0; line-height: 1.1; }
  .muted { opacity: .78; }
  .card { background: #fff; color: #1d2330; border-radius: 14px; padding: 1.2rem 1.4rem; margin: 1.2rem 0;
          box-shadow: 0 1px 3px rgba(0,0,0,.12); }
  .card .muted { color: #4b5363; opacity: 1; }
  progress { width: 100%; height: .8rem; accent-color: var(--accent); margin: .6rem 0 .2rem; }
  a.enter, button { display: inline-block; font: inherit; padding: .65rem 1.2rem; border-radius: 9px; cursor: pointer;
                    min-height: 44px; }
  a.enter { background: var(--accent); color: #fff; text-decoration: none; font-weight: 600; }
  button { background: #fff; color: #1d2330; border: 1px solid #8a93a5; }
  a:focus-visible, button:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
  [hidden] { display: none !important; }
  @media (max-width: 420px) { main { padding: 1.2rem .8rem; } .big { font-size: 2.4rem; } }
</style>
</head>
<body>
<main>
<header>
  <img id="logo" alt="" hidden>
  <h1 id="title"></h1>
</header>
<p id="message"></p>
<section class="card" id="waiting" aria-labelledby="ahead-label" hidden>
  <div class="muted" id="ahead-label"></div>
  <div class="big" id="position" aria-live="polite" aria-atomic="true">…</div>
  <progress id="progress" max="100" value="0" aria-labelledby="progress-label"></progress>
  <div class="muted" id="progress-label"></div>
  <div><span id="number-label"></span> <strong id="queue-no"></strong></div>
  <div id="eta-line" hidden><span id="eta-label"></span> <strong id="eta" aria-live="polite"></strong></div>
</section>
<section class="card" id="admitted" aria-live="assertive" hidden>
  <div class="big" id="turn"></div>
  <p><span id="admitted-text"></span> <strong id="admitted-no"></strong></p>
  <p><a class="enter" id="enter" href="#"></a></p>
</section>
<section class="card" id="ended" hidden>
  <p id="ended-text"></p>
  <button id="rejoin" type="button"></button>
</section>
<p class="muted" id="status" role="status"></p>
<p><button id="leave" type="button" hidden></button></p>
</main>
<script nonce="__NONCE__">
(() => {
  const room = __ROOM_JSON__;
  const target = __TARGET_JSON__;
  const text = __TEXT_JSON__;
  const brand = __BRAND_JSON__;
  const api = "/v1/rooms/" + encodeURIComponent(room);
  const key = "waitroom:" + room;
  const $ = (id) => document.getElementById(id);
  const fill = (s, vars) => s.replace(/\\{(\\w+)\\}/g, (_, k) => String(vars[k]));
  let ticket = JSON.parse(sessionStorage.getItem(key) || "null");
  let timer = null;       // the next poll/heartbeat, while not streaming
  let source = null;      // the EventSource, while one is open or reconnecting
  let streaming = false;  // the stream is up: no polling, no heartbeats
  let fallback = null;    // starts polling if a dropped stream does not come back in time

  $("title").textContent = brand.title || fill(text.title, { room });
  if (brand.message) $("message").textContent = brand.message; else $("message").textContent = text.keep_open;
  if (brand.logo_url) { $("logo").src = brand.logo_url; $("logo").alt = brand.title || room; $("logo").hidden = false; }
  for (const [id, k] of [["ahead-label", "ahead"], ["number-label", "your_number"], ["eta-label", "eta"],
                         ["turn", "your_turn"], ["admitted-text", "admitted"], ["enter", "enter"],
                         ["rejoin", "rejoin"], ["leave", "leave"], ["progress-label", "progress"]]) {
    $(id).textContent = text[k];
  }

  function show(which) {
    for (const id of ["waiting", "admitted", "ended"]) $(id).hidden = id !== which;
    $("leave").hidden = which === "ended";
  }
  function say(s) { $("status").textContent = s; }
  function auth() { return { "Authorization": "Bearer " + ticket.ticket_token }; }
  function words(seconds) {
    if (seconds < 60) return text.eta_under_minute;
    const minutes = Math.round(seconds / 60);
    if (minutes === 1) return text.eta_minute;
    if (minutes < 90) return fill(text.eta_minutes, { n: minutes });
    return fill(text.eta_hours, { n: Math.round(minutes / 60) });
  }

  function render(t) {
    if (t.state === "waiting") {
      show("waiting");
      const start = Math.max(Number(sessionStorage.getItem(key + ":start") || 0), t.position);
      sessionStorage.setItem(key + ":start", String(start));
      $("position").textContent = String(t.position);
      $("progress").value = start > 0 ? Math.round(100 * (start - t.position) / start) : 100;
      $("queue-no").textContent = String(t.queue_no);
      $("eta-line").hidden = t.estimated_wait_s == null;
      if (t.estimated_wait_s != null) $("eta").textContent = words(t.estimated_wait_s);
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

  // ------------------------------------------------------------ the stream (the usual way)
  function stream() {
    if (!window.EventSource || !ticket || source) return false;
    const token = encodeURIComponent(ticket.ticket_token);
    source = new EventSource(api + "/tickets/" + ticket.ticket_id + "/events?ticket_token=" + token);
    source.onopen = () => { streaming = true; clearTimeout(timer); clearTimeout(fallback); say(""); };
    source.addEventListener("ticket", (e) => { render(JSON.parse(e.data)); });
    source.addEventListener("ended", (e) => {
      const t = JSON.parse(e.data);
      closeStream();
      if (t.state === "unknown") { poll(); return; }
      end(t.state === "left" ? text.left : text.expired);
    });
    source.onerror = () => {
      streaming = false;
      if (source && source.readyState === EventSource.CLOSED) {  // refused (503, 410): poll instead
        closeStream();
        poll();
      } else {  // the browser reconnects by itself; poll if that takes longer than a heartbeat interval
        say(text.trouble);
        clearTimeout(fallback);
        fallback = setTimeout(() => { if (!streaming) poll(); }, 3000);
      }
    };
    return true;
  }
  function closeStream() { if (source) source.close(); source = null; streaming = false; }

  // ------------------------------------------------------------ polling + heartbeats (the fallback)
  function schedule(seconds) { clearTimeout(timer); timer = setTimeout(poll, Math.max(0.5, seconds) * 1000); }

  async function poll() {
    if (streaming || !ticket) return;
    try {
      const r = await fetch(api + "/tickets/" + ticket.ticket_id + "/heartbeat", { method: "POST", headers: auth() });
      if (streaming) return;
      if (r.status === 200) {
        const t = await r.json();
        render(t);
        say("");
        schedule(t.heartbeat_interval_s);
        if (!source) stream();  // the API answers again: try the stream once more
      } else if (r.status === 410) {
        const left = (await r.json()).error === "ticket_left";
        end(left ? text.left : text.expired);
      } else if (r.status === 202) {
        say(text.getting_number);
        schedule(1);
      } else {
        say(text.trouble);
        schedule(Number(r.headers.get("Retry-After") || 2));
      }
    } catch (e) {
      say(text.trouble);
      schedule(2);
    }
  }

  async function join() {
    say(text.getting_number);
    const idem = sessionStorage.getItem(key + ":idem") || crypto.randomUUID();
    sessionStorage.setItem(key + ":idem", idem);
    let r;
    try {
      r = await fetch(api + "/tickets", { method: "POST", headers: { "Idempotency-Key": idem } });
    } catch (e) {
      say(text.trouble);
      setTimeout(join, 2000);
      return;
    }
    if (r.status === 201 || r.status === 200 || r.status === 202) {
      const body = await r.json();
      ticket = { ticket_id: body.ticket_id, ticket_token: body.ticket_token };
      sessionStorage.setItem(key, JSON.stringify(ticket));
      sessionStorage.removeItem(key + ":start");
      if (body.state !== "pending") render(body);
      say("");
      if (!stream()) schedule(body.heartbeat_interval_s || 1);
    } else {
      const retry = Number(r.headers.get("Retry-After") || 2);
      say(r.status === 404 ? text.no_room : fill(text.busy, { n: retry }));
      if (r.status !== 404) setTimeout(join, retry * 1000);
    }
  }

  function end(s) {
    clearTimeout(timer);
    clearTimeout(fallback);
    closeStream();
    sessionStorage.removeItem(key);
    sessionStorage.removeItem(key + ":idem");
    sessionStorage.removeItem(key + ":start");
    ticket = null;
    show("ended");
    $("ended-text").textContent = s;
    $("rejoin").focus();
  }

  $("leave").addEventListener("click", async () => {
    if (!ticket) return;
    await fetch(api + "/tickets/" + ticket.ticket_id, { method: "DELETE", headers: auth() });
    end(text.left);
  });
  $("rejoin").addEventListener("click", () => join());

  if (ticket) { if (!stream()) poll(); } else join();
})();
</script>
</body>
</html>
"""

#: every text of the page, per language; a language missing a key falls back to English's
MESSAGES: dict[str, dict[str, str]] = {
    "en": {
        "title": "Waiting room: {room}",
        "keep_open": "Keep this page open: it holds your place. We let visitors in in the order they arrived.",
        "ahead": "People ahead of you",
        "progress": "Your progress to the front of the line",
        "your_number": "Your number:",
        "eta": "Estimated wait:",
        "eta_under_minute": "less than a minute",
        "eta_minute": "about 1 minute",
        "eta_minutes": "about {n} minutes",
        "eta_hours": "about {n} hours",
        "your_turn": "It's your turn",
        "admitted": "You have been let in. Your number:",
        "enter": "Enter the site",
        "rejoin": "Join the queue again",
        "leave": "Leave the queue",
        "left": "You left the queue.",
        "expired": "Your place expired because this page stopped answering.",
        "getting_number": "Getting your number…",
        "trouble": "Connection trouble; your place is kept while we retry.",
        "no_room": "This waiting room does not exist.",
        "busy": "Busy; trying again in {n} s…",
    },
    "de": {
        "title": "Warteraum: {room}",
        "keep_open": "Lassen Sie diese Seite geöffnet: Sie hält Ihren Platz. Wir lassen Besucher in der Reihenfolge "
        "ihrer Ankunft ein.",
        "ahead": "Personen vor Ihnen",
        "progress": "Ihr Fortschritt bis zum Anfang der Schlange",
        "your_number": "Ihre Nummer:",
        "eta": "Geschätzte Wartezeit:",
        "eta_under_minute": "weniger als eine Minute",
        "eta_minute": "etwa 1 Minute",
        "eta_minutes": "etwa {n} Minuten",
        "eta_hours": "etwa {n} Stunden",
        "your_turn": "Sie sind an der Reihe",
        "admitted": "Sie wurden eingelassen. Ihre Nummer:",
        "enter": "Zur Website",
        "rejoin": "Erneut anstellen",
        "leave": "Warteschlange verlassen",
        "left": "Sie haben die Warteschlange verlassen.",
        "expired": "Ihr Platz ist verfallen, weil diese Seite nicht mehr geantwortet hat.",
        "getting_number": "Ihre Nummer wird vergeben…",
        "trouble": "Verbindungsprobleme; Ihr Platz bleibt erhalten, während wir es erneut versuchen.",
        "no_room": "Diesen Warteraum gibt es nicht.",
        "busy": "Ausgelastet; neuer Versuch in {n} s…",
    },
}
DEFAULT_LANGUAGE = "en"
DEFAULT_ACCENT = "#1f6feb"
DEFAULT_BACKGROUND = "#f4f6fa"
DEFAULT_FOREGROUND = "#1d2330"


def pick_language(accept_language: str | None) -> str:
    """The catalogue's best language for an ``Accept-Language`` header (RFC 9110 q-values)."""
    best, best_q = DEFAULT_LANGUAGE, -1.0
    for position, part in enumerate((accept_language or "").split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                continue
        primary = tag.strip().lower().split("-")[0]
        # an earlier entry wins a tie: the header's order is the visitor's order
        if primary in MESSAGES and q > 0 and q - position * 1e-6 > best_q:
            best, best_q = primary, q - position * 1e-6
    return best


def render_page(
    room_id: str,
    target_url: str | None,
    *,
    accept_language: str | None = None,
    branding: Mapping[str, str | None] | None = None,
) -> tuple[str, dict[str, str]]:
    """The page for ``room_id`` in the visitor's language, in the room's branding (title, message,
    logo URL, colours: validated when the room was configured), and the headers it must be served
    with (its CSP nonce is fresh; a logo is the only image allowed, from its own origin only)."""
    nonce = secrets.token_urlsafe(16)
    language = pick_language(accept_language)
    text = {**MESSAGES[DEFAULT_LANGUAGE], **MESSAGES[language]}
    # validated when configured; checked again because they go into CSS and the CSP
    brand = {k: v for k, v in (branding or {}).items() if v and (k not in BRANDING_COLOURS or _COLOUR.match(v))}
    title = brand.get("title") or text["title"].replace("{room}", room_id)
    body = (
        PAGE.replace("__NONCE__", nonce)
        .replace("__LANG__", language)
        .replace("__TITLE_TEXT__", html.escape(title))
        .replace("__ACCENT__", brand.get("accent_color") or DEFAULT_ACCENT)
        .replace("__BACKGROUND__", brand.get("background_color") or DEFAULT_BACKGROUND)
        .replace("__FOREGROUND__", brand.get("text_color") or DEFAULT_FOREGROUND)
        .replace("__ROOM_JSON__", _script_json(room_id))
        .replace("__TARGET_JSON__", _script_json(target_url))
        .replace("__TEXT_JSON__", _script_json(text))
        .replace("__BRAND_JSON__", _script_json(brand))
    )
    logo = brand.get("logo_url")
    img_src = f"img-src {_origin(logo)}; " if logo else ""
    headers = {
        "Content-Security-Policy": (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; {img_src}"
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ),
        "Cache-Control": "no-store",
        "Content-Language": language,
        "Vary": "Accept-Language",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    return body, headers


_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _script_json(value: object) -> str:
    """JSON that is safe inside a <script> element (no closing tag, no HTML comment openers)."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
