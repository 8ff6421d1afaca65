// The operator's console: the admin API's rooms, kept live by its event stream
// (/v1/admin/console/events, Server-Sent Events read with fetch() so the admin token travels as a
// bearer header, never in a URL). The token is kept in this tab's sessionStorage only. Everything
// shown is set with textContent; the charts are uPlot's (vendor/).
"use strict";
(() => {
  const TOKEN_KEY = "waitroom:admin-token";
  const API = "/v1/admin";
  const $ = (id) => document.getElementById(id);

  let token = sessionStorage.getItem(TOKEN_KEY);
  let stream = null; // {controller, room}
  let retryTimer = null;
  let current = null; // the room shown, or null for the table
  let roomNow = null; // its latest row
  let charts = null;
  let series = null; // columns of the chart data, by field
  let historyS = 3600;
  let alertsSeen = [];

  // ------------------------------------------------------------------ helpers

  function auth() { return { "Authorization": "Bearer " + token }; }

  function say(text, isError) {
    const toast = $("toast");
    toast.textContent = text;
    toast.classList.toggle("error", Boolean(isError));
    toast.hidden = !text;
    clearTimeout(say.timer);
    if (text) say.timer = setTimeout(() => { toast.hidden = true; }, isError ? 8000 : 4000);
  }

  function seconds(value) {
    if (value === null || value === undefined) return "–";
    if (value < 60) return (Math.round(value * 10) / 10) + " s";
    const m = Math.floor(value / 60), s = Math.round(value % 60);
    return m + " min " + (s ? s + " s" : "");
  }
  function num(value) { return value === null || value === undefined ? "–" : String(value); }
  function clock(at) { return new Date(at * 1000).toLocaleTimeString(); }

  async function call(method, path, body) {
    const headers = auth();
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(API + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    let payload = null;
    try { payload = await r.json(); } catch (e) { payload = null; }
    if (r.status === 401 || r.status === 403) { signOut(describe(payload, r)); throw new Error("signed out"); }
    if (!r.ok) throw new Error(describe(payload, r));
    return payload;
  }

  function describe(payload, r) {
    if (!payload || !payload.error) return "HTTP " + r.status;
    const detail = typeof payload.detail === "string" ? payload.detail
      : Array.isArray(payload.detail) ? payload.detail.map((d) => (d.loc || []).slice(1).join(".") + ": " + d.msg).join("; ")
      : JSON.stringify(payload.detail);
    return payload.error + ": " + detail;
  }

  // ------------------------------------------------------------------ sign in

  function showSignIn(message) {
    $("signin").hidden = false;
    $("rooms-view").hidden = true;
    $("room-view").hidden = true;
    $("sign-out").hidden = true;
    $("live").hidden = true;
    $("signin-error").textContent = message || "";
    $("token").focus();
  }

  function signOut(message) {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    stopStream();
    showSignIn(message);
  }

  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const candidate = $("token").value.trim();
    const r = await fetch(API + "/rooms", { headers: { "Authorization": "Bearer " + candidate } });
    if (r.ok) {
      token = candidate;
      sessionStorage.setItem(TOKEN_KEY, token);
      $("token").value = "";
      $("signin-error").textContent = "";
      route();
    } else {
      let payload = null;
      try { payload = await r.json(); } catch (e) { payload = null; }
      $("signin-error").textContent = describe(payload, r);
    }
  });
  $("sign-out").addEventListener("click", () => signOut(""));

  // ------------------------------------------------------------------ the stream

  function stopStream() {
    clearTimeout(retryTimer);
    if (stream) stream.controller.abort();
    stream = null;
  }

  async function openStream(room) {
    stopStream();
    const controller = new AbortController();
    const mine = { controller, room };
    stream = mine;
    const url = API + "/console/events" + (room ? "?room=" + encodeURIComponent(room) : "");
    try {
      const r = await fetch(url, { headers: auth(), signal: controller.signal, cache: "no-store" });
      if (r.status === 401 || r.status === 403) {
        let payload = null;
        try { payload = await r.json(); } catch (e) { payload = null; }
        signOut(describe(payload, r));
        return;
      }
      if (r.status === 404 && room) { showGone(); return; }
      if (!r.ok) throw new Error("HTTP " + r.status);
      $("live").hidden = false;
      $("live").classList.remove("off");
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          if (stream === mine) dispatch(frame);
        }
      }
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    if (stream !== mine) return;
    // The service restarted or the network dropped: say so and come back.
    $("live").classList.add("off");
    retryTimer = setTimeout(() => { if (stream === mine) openStream(room); }, 2000);
  }

  function dispatch(frame) {
    let event = "message", data = "";
    for (const line of frame.split("\n")) {
      if (line.startsWith(":")) continue; // keep-alive
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") event = value;
      else if (field === "data") data += (data ? "\n" : "") + value;
    }
    if (!data) return;
    const body = JSON.parse(data);
    if (event === "rooms") renderRooms(body.rooms);
    else if (event === "history") startCharts(body);
    else if (event === "room") renderRoom(body.room);
    else if (event === "points") addPoints(body.points);
    else if (event === "alerts") addAlerts(body.alerts);
  }

  // ------------------------------------------------------------------ the rooms table

  function cell(row, text, className) {
    const td = row.insertCell();
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function renderRooms(rooms) {
    const body = $("rooms").tBodies[0];
    body.replaceChildren();
    $("no-rooms").hidden = rooms.length > 0;
    for (const room of rooms) {
      const row = body.insertRow();
      row.dataset.room = room.room_id;
      const link = document.createElement("a");
      link.href = "#/rooms/" + encodeURIComponent(room.room_id);
      link.textContent = room.room_id;
      row.insertCell().append(link);
      cell(row, num(room.capacity), "n");
      cell(row, num(room.active), "n active");
      cell(row, num(room.waiting), "n waiting");
      cell(row, num(room.admissions_1m), "n");
      cell(row, seconds(room.wait_p90_s), "n");
      cell(row, seconds(room.estimated_wait_s), "n");
      cell(row, room.paused ? "paused" : "no", room.paused ? "paused" : "");
      const open = room.open_alerts || [];
      cell(row, open.length ? open.map((a) => a.rule).join(", ") : "–", open.length ? "alert" : "");
    }
  }

  $("create-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = $("create-id").value.trim();
    const body = { capacity: Number($("create-capacity").value) };
    if ($("create-timeout").value) body.heartbeat_timeout_s = Number($("create-timeout").value);
    if ($("create-target").value.trim()) body.target_url = $("create-target").value.trim();
    try {
      await call("PUT", "/rooms/" + encodeURIComponent(id), body);
      say("Room " + id + " is ready.");
      $("create-form").reset();
      location.hash = "#/rooms/" + encodeURIComponent(id);
    } catch (e) {
      if (token) say(e.message, true);
    }
  });

  // ------------------------------------------------------------------ one room

  function showGone() {
    $("room-gone").hidden = false;
  }

  function renderRoom(room) {
    $("room-gone").hidden = room !== null;
    if (room === null) return;
    const first = roomNow === null;
    roomNow = room;
    $("t-capacity").textContent = num(room.capacity);
    $("t-active").textContent = num(room.active);
    $("t-waiting").textContent = num(room.waiting);
    $("t-admissions").textContent = num(room.admissions_1m);
    $("t-p90").textContent = seconds(room.wait_p90_s);
    $("t-eta").textContent = seconds(room.estimated_wait_s);
    $("t-tickets").textContent = num(room.tickets_total);
    $("room-paused").hidden = !room.paused;
    $("pause").textContent = room.paused ? "Resume admissions" : "Pause admissions";
    $("pause").classList.toggle("primary", room.paused);
    // The form follows the room unless the operator is editing it.
    if (first || !$("config-form").contains(document.activeElement)) fillConfig(room);
  }

  function fillConfig(room) {
    $("cfg-capacity").value = room.capacity;
    $("cfg-timeout").value = room.heartbeat_timeout_s;
    $("cfg-target").value = room.target_url || "";
  }

  $("config-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!current) return;
    const body = {
      capacity: Number($("cfg-capacity").value),
      heartbeat_timeout_s: Number($("cfg-timeout").value),
    };
    const target = $("cfg-target").value.trim();
    if (target) body.target_url = target;
    try {
      const room = await call("PUT", "/rooms/" + encodeURIComponent(current), body);
      document.activeElement.blur();
      if (room && room.room_id) fillConfig(room);
      say("Saved.");
    } catch (e) {
      if (token) say(e.message, true);
    }
  });

  $("pause").addEventListener("click", async () => {
    if (!current || !roomNow) return;
    const paused = !roomNow.paused;
    try {
      await call("PUT", "/rooms/" + encodeURIComponent(current), { paused });
      say(paused ? "Admissions paused." : "Admissions resumed.");
    } catch (e) {
      if (token) say(e.message, true);
    }
  });

  $("admit-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!current) return;
    const count = Number($("admit-count").value);
    const above = $("admit-above").checked;
    $("confirm-text").textContent = "Admit the next " + count + " waiting in " + current + " now" +
      (above ? ", even above its capacity?" : " (within its capacity)?");
    const dialog = $("confirm");
    dialog.returnValue = "";
    dialog.showModal();
    $("confirm-ok").focus();
    dialog.onclose = async () => {
      if (dialog.returnValue !== "ok") return;
      try {
        await call("POST", "/rooms/" + encodeURIComponent(current) + "/admit", { count, above_capacity: above });
        say("Admitting " + count + ".");
      } catch (e) {
        if (token) say(e.message, true);
      }
    };
  });
  $("confirm-ok").addEventListener("click", () => $("confirm").close("ok"));
  $("confirm-cancel").addEventListener("click", () => $("confirm").close("cancel"));

  // ------------------------------------------------------------------ charts

  const CHARTS = {
    counts: { el: "chart-counts", series: [
      ["capacity", "capacity", "#8b93a4", [4, 4]], ["active", "active", "#1f6feb"], ["waiting", "waiting", "#e8710a"]] },
    rates: { el: "chart-rates", series: [
      ["admissions_1m", "admitted/min", "#188038"], ["expiries_1m", "expired/min", "#d93025"]] },
    wait: { el: "chart-wait", series: [
      ["wait_p50_s", "p50", "#8ab4f8"], ["wait_p90_s", "p90", "#1f6feb"], ["wait_p99_s", "p99", "#174ea6"],
      ["estimated_wait_s", "estimate", "#e8710a", [6, 3]]] },
  };

  function chartWidth(el) { return Math.max(260, el.clientWidth - 4); }

  function startCharts(history) {
    destroyCharts();
    historyS = history.history_s;
    series = {};
    history.fields.forEach((field) => { series[field] = []; });
    series.fields = history.fields;
    charts = {};
    for (const [name, spec] of Object.entries(CHARTS)) {
      const el = $(spec.el);
      el.replaceChildren();
      const options = {
        width: chartWidth(el),
        height: 180,
        // Counts, rates and waits start at 0, whatever the hour's lowest value.
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
        series: [{}].concat(spec.series.map(([, label, stroke, dash]) => ({
          label, stroke, width: 2, dash, spanGaps: true,
        }))),
        axes: [{}, { size: 48 }],
        legend: { live: false },
      };
      charts[name] = { plot: new uPlot(options, columns(spec), el), spec, el };
    }
    addPoints(history.points);
    $("alerts").replaceChildren();
    alertsSeen = [];
    addAlerts(history.alerts);
  }

  function destroyCharts() {
    if (charts) for (const c of Object.values(charts)) c.plot.destroy();
    charts = null;
  }

  function columns(spec) {
    return [series.at].concat(spec.series.map(([field]) => series[field]));
  }

  function addPoints(points) {
    if (!series || !points.length) return;
    for (const p of points) series.fields.forEach((field, i) => series[field].push(p[i]));
    const horizon = series.at[series.at.length - 1] - historyS;
    let drop = 0;
    while (drop < series.at.length && series.at[drop] < horizon) drop++;
    if (drop) for (const field of series.fields) series[field].splice(0, drop);
    for (const c of Object.values(charts)) c.plot.setData(columns(c.spec));
  }

  window.addEventListener("resize", () => {
    if (charts) for (const c of Object.values(charts)) c.plot.setSize({ width: chartWidth(c.el), height: 180 });
  });

  function addAlerts(alerts) {
    const list = $("alerts");
    for (const a of alerts) {
      alertsSeen.push(a);
      const item = document.createElement("li");
      item.className = a.kind;
      const what = document.createElement("strong");
      what.textContent = (a.kind === "breached" ? "breach " : "recovered ") + a.rule;
      const when = document.createElement("span");
      when.className = "muted";
      when.textContent = " " + clock(a.at) + " — value " + (Math.round(a.value * 100) / 100) +
        ", threshold " + a.threshold + (a.summary ? " — " + a.summary : "");
      item.append(what, when);
      list.prepend(item); // newest first
    }
    $("no-alerts").hidden = alertsSeen.length > 0;
  }

  // ------------------------------------------------------------------ routing (#/ or #/rooms/<id>)

  function route() {
    if (!token) { showSignIn(""); return; }
    $("signin").hidden = true;
    $("sign-out").hidden = false;
    const match = /^#\/rooms\/(.+)$/.exec(location.hash);
    const room = match ? decodeURIComponent(match[1]) : null;
    current = room;
    roomNow = null;
    $("rooms-view").hidden = room !== null;
    $("room-view").hidden = room === null;
    if (room !== null) {
      $("room-id").textContent = room;
      $("room-gone").hidden = true;
      destroyCharts();
      series = null;
    }
    openStream(room);
  }

  window.addEventListener("hashchange", route);
  route();
})();
