// The operator page: one WebSocket to /ws/chat on the page's own origin, logged in by the cookie that
// POST /api/login sets (as on the chat page). An admin's connection sends admin.watch and then receives a
// "stats" event every [admin] interval seconds (docs/operator.md); anyone else is refused by the server
// (FORBIDDEN), and the page says so. Kick and disconnect are the chat protocol's kick and disconnect.
// Every string from the server goes into the page as text (textContent), never as markup.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const ui = {
    who: $("who"), status: $("status"), node: $("node"), logout: $("logout"),
    loginForm: $("login-form"), loginUsername: $("login-username"), loginPassword: $("login-password"),
    loginError: $("login-error"), refused: $("refused"),
    roomsBody: $("rooms-body"), roomsCount: $("rooms-count"), roomsEmpty: $("rooms-empty"), roomsMore: $("rooms-more"), roomsError: $("rooms-error"),
    actionFeedback: $("action-feedback"), health: $("health"), sessions: $("sessions"), errors: $("errors"),
    errorsEmpty: $("errors-empty"), rateNow: $("rate-now"), connectionsNow: $("connections-now"),
    connectionsLegend: $("connections-legend"), lagNow: $("lag-now"),
  };
  const COLORS = ["#2f6fde", "#1f9d55", "#c98a00", "#c2382b", "#7a4cc2", "#11868f", "#b5497e", "#6b7280"];
  const HISTORY = 300; // points kept per chart: five minutes at the default interval

  const state = {
    ws: null, nextId: 1, pending: new Map(), retries: 0, retryTimer: null, account: null, interval: 1, lastStats: 0,
    open: new Set(), // rooms whose members are shown
    members: new Map(), // room -> { count, nicks, loading }
    rows: new Map(), // room -> { row, cells, membersRow }
  };

  // --- the connection ----------------------------------------------------------------

  function endpoint() {
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/chat";
  }

  function setStatus(kind, text) {
    ui.status.dataset.state = kind;
    ui.status.textContent = text;
  }

  function show(view) {
    document.body.dataset.view = view;
    $("login-view").hidden = view !== "login";
    $("refused-view").hidden = view !== "refused";
    $("dashboard").hidden = view !== "dashboard";
    ui.logout.hidden = !state.account;
  }

  function connect() {
    state.retryTimer = null;
    setStatus(state.retries ? "reconnecting" : "connecting", state.retries ? "reconnecting…" : "connecting…");
    let ws;
    try {
      ws = new WebSocket(endpoint());
    } catch (e) {
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    ws.onmessage = (ev) => {
      if (state.ws !== ws) return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      handle(msg);
    };
    ws.onclose = () => {
      if (state.ws !== ws) return;
      dropped();
      scheduleReconnect();
    };
  }

  function dropped() {
    state.ws = null;
    for (const { reject } of state.pending.values()) reject(new Error("connection closed"));
    state.pending.clear();
  }

  function scheduleReconnect() {
    if (state.retryTimer) return;
    const delay = Math.min(30000, 500 * 2 ** state.retries) * (0.75 + Math.random() / 2);
    state.retries += 1;
    setStatus("reconnecting", "reconnecting in " + Math.ceil(delay / 1000) + " s…");
    state.retryTimer = setTimeout(connect, delay);
  }

  // after a login or logout: a new connection, whose upgrade carries the cookie as it is now
  function reconnectNow() {
    const ws = state.ws;
    dropped();
    if (ws) ws.close(1000);
    clearTimeout(state.retryTimer);
    state.retries = 0;
    connect();
  }

  function request(type, args) {
    return new Promise((resolve, reject) => {
      const ws = state.ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) { reject(new Error("not connected")); return; }
      const id = state.nextId++;
      state.pending.set(id, { resolve, reject });
      ws.send(JSON.stringify(Object.assign({ type, id }, args)));
    });
  }

  function failure(error) {
    return Object.assign(new Error(error.message || error.code), { code: error.code, retryAfter: error.retry_after });
  }

  function explain(e) {
    switch (e.code) {
      case "LOGIN_FAILED": return "Wrong username or password.";
      case "RATE_LIMITED": return "Too many attempts: try again in " + Math.max(1, Math.ceil(e.retryAfter || 1)) + " s.";
      case "FORBIDDEN": return "Not allowed: " + e.message;
      case "NICK_OFFLINE": return "Nobody with that nick is connected.";
      case "NOT_IN_ROOM": return "Not in that room any more.";
      default: return e.message + (e.code ? " (" + e.code + ")" : "");
    }
  }

  async function handle(msg) {
    switch (msg.type) {
      case "welcome":
        state.retries = 0;
        setStatus("connected", "connected");
        state.account = msg.username || null;
        ui.who.textContent = state.account ? "logged in as " + state.account : "not logged in";
        if (msg.login_error) feedback(ui.loginError, explain(failure(msg.login_error)), true);
        if (!state.account) { show("login"); return; }
        try {
          state.interval = (await request("admin.watch")).interval;
          state.lastStats = Date.now();
          show("dashboard");
        } catch (e) {
          if (e.code === "FORBIDDEN") show("refused");
          else { show("login"); feedback(ui.loginError, explain(e), true); }
        }
        return;
      case "reply":
      case "error": {
        const waiter = state.pending.get(msg.id);
        if (!waiter) return;
        state.pending.delete(msg.id);
        if (msg.type === "reply") waiter.resolve(msg.result);
        else waiter.reject(failure(msg.error));
        return;
      }
      case "stats":
        state.lastStats = Date.now();
        if (ui.status.dataset.state === "stale") setStatus("connected", "connected");
        render(msg);
        return;
      default: // hub events this connection is not meant to get (it joins no room)
    }
  }

  // --- logging in and out -------------------------------------------------------------

  async function api(path, body) {
    const response = await fetch("/api/" + path, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body ?? {}),
      credentials: "same-origin", cache: "no-store",
    });
    const answer = await response.json().catch(() => null);
    if (response.ok) return answer;
    const error = (answer && answer.error) || { code: "HTTP_" + response.status, message: response.statusText };
    const retry = Number(response.headers.get("Retry-After"));
    throw Object.assign(failure(error), { retryAfter: retry > 0 ? retry : undefined });
  }

  function feedback(element, text, error) {
    element.textContent = text;
    element.classList.toggle("bad", Boolean(error));
  }

  ui.loginForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const button = $("login");
    button.disabled = true;
    feedback(ui.loginError, "logging in…", false);
    try {
      await api("login", { username: ui.loginUsername.value.trim(), password: ui.loginPassword.value });
      ui.loginPassword.value = "";
      feedback(ui.loginError, "", false);
      reconnectNow();
    } catch (e) {
      feedback(ui.loginError, explain(e), true);
    } finally {
      button.disabled = false;
    }
  });

  ui.logout.addEventListener("click", async () => {
    try { await api("logout"); } catch (e) { /* the cookie stays: the page reconnects as it was */ }
    state.account = null;
    reconnectNow();
  });

  // --- charts: a line per series on a <canvas>, newest on the right -------------------------

  class Chart {
    constructor(canvas, format) {
      this.canvas = canvas;
      this.format = format;
      this.series = new Map(); // name -> values (aligned on this.times)
      this.times = [];
    }

    push(time, values) {
      this.times.push(time);
      for (const [name, data] of this.series) data.push(name in values ? values[name] : null);
      for (const name of Object.keys(values)) {
        if (!this.series.has(name)) this.series.set(name, [...Array(this.times.length - 1).fill(null), values[name]]);
      }
      if (this.times.length > HISTORY) {
        this.times.shift();
        for (const data of this.series.values()) data.shift();
      }
      this.draw();
    }

    color(name) {
      return COLORS[[...this.series.keys()].indexOf(name) % COLORS.length];
    }

    draw() {
      const canvas = this.canvas;
      const ratio = window.devicePixelRatio || 1;
      const width = canvas.clientWidth || canvas.width;
      const height = canvas.clientHeight || canvas.height;
      if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
      if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
      const g = canvas.getContext("2d");
      g.setTransform(ratio, 0, 0, ratio, 0, 0);
      g.clearRect(0, 0, width, height);
      let top = 0;
      for (const data of this.series.values()) for (const v of data) if (v !== null && v > top) top = v;
      top = niceCeiling(top);
      const left = 4, bottom = height - 14, right = width - 4, up = 14;
      g.strokeStyle = "#e3e6ea";
      g.fillStyle = "#6b7280";
      g.font = "11px system-ui, sans-serif";
      g.lineWidth = 1;
      for (const f of [0, 0.5, 1]) {
        const y = bottom - (bottom - up) * f;
        g.beginPath(); g.moveTo(left, y); g.lineTo(right, y); g.stroke();
      }
      g.fillText(this.format(top), left + 2, up - 3);
      if (this.times.length > 1) {
        const span = this.times[this.times.length - 1] - this.times[0];
        g.fillText(Math.round(span) + " s", right - 40, height - 2);
      }
      // a minute wide at first, then up to HISTORY points: newest on the right
      const step = (right - left) / (Math.min(HISTORY, Math.max(60, this.times.length)) - 1);
      const x0 = right - step * (this.times.length - 1);
      for (const [name, data] of this.series) {
        g.strokeStyle = this.color(name);
        g.lineWidth = 2;
        g.beginPath();
        let drawing = false;
        data.forEach((v, i) => {
          if (v === null) { drawing = false; return; }
          const x = x0 + i * step;
          const y = bottom - (bottom - up) * (top ? v / top : 0);
          if (drawing) g.lineTo(x, y); else g.moveTo(x, y);
          drawing = true;
        });
        g.stroke();
      }
    }
  }

  function niceCeiling(v) {
    if (v <= 0) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  const number = (v) => (v >= 100 ? Math.round(v).toString() : (Math.round(v * 10) / 10).toString());
  const charts = {
    rate: new Chart($("chart-rate"), (v) => number(v) + "/s"),
    connections: new Chart($("chart-connections"), (v) => number(v)),
    lag: new Chart($("chart-lag"), (v) => number(v) + " ms"),
  };
  window.addEventListener("resize", () => Object.values(charts).forEach((c) => c.draw()));

  // --- rendering a snapshot ---------------------------------------------------------------

  function render(s) {
    ui.node.textContent = s.node ? "process " + s.node : "";
    charts.rate.push(s.time, { messages: s.message_rate });
    ui.rateNow.textContent = number(s.message_rate) + "/s";
    charts.connections.push(s.time, s.connections);
    const total = Object.values(s.connections).reduce((a, b) => a + b, 0);
    ui.connectionsNow.textContent = String(total);
    renderLegend(s.connections);
    const lag = s.reactor_lag === null ? null : s.reactor_lag * 1000;
    charts.lag.push(s.time, lag === null ? {} : { lag });
    ui.lagNow.textContent = lag === null ? "not measured" : number(lag) + " ms";
    renderRooms(s);
    renderHealth(s.health);
    ui.sessions.textContent = String(s.sessions);
    renderErrors(s.errors);
  }

  function renderLegend(connections) {
    ui.connectionsLegend.replaceChildren(...Object.entries(connections).map(([service, count]) => {
      const li = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = charts.connections.color(service); // CSSOM, which the CSP allows
      li.append(swatch, service + " " + count);
      li.dataset.service = service;
      return li;
    }));
  }

  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text;
    row.append(td);
    return td;
  }

  function button(text, className, title, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = className;
    b.textContent = text;
    b.title = title;
    b.addEventListener("click", onClick);
    return b;
  }

  // rows are kept per room and updated in place: a button stays the same element while it is shown
  function renderRooms(s) {
    const seen = new Set();
    for (const room of s.rooms) {
      seen.add(room.name);
      let entry = state.rows.get(room.name);
      if (!entry) entry = addRoomRow(room.name);
      entry.cells.members.textContent = String(room.members);
      entry.cells.subscribers.textContent = String(room.subscribers);
      entry.cells.rate.textContent = number(room.rate);
      ui.roomsBody.append(entry.row, entry.membersRow); // in the snapshot's order (busiest first)
      const known = state.members.get(room.name);
      if (state.open.has(room.name) && (!known || known.count !== room.members)) loadMembers(room.name, room.members);
    }
    for (const [name, entry] of state.rows) {
      if (seen.has(name)) continue;
      entry.row.remove();
      entry.membersRow.remove();
      state.rows.delete(name);
      state.members.delete(name);
    }
    ui.roomsEmpty.hidden = s.rooms.length > 0 || Boolean(s.rooms_error);
    ui.roomsCount.textContent = s.rooms_total ? "(" + s.rooms_total + ")" : "";
    ui.roomsMore.hidden = !s.rooms_omitted;
    ui.roomsMore.textContent = s.rooms_omitted ? s.rooms_omitted + " quieter rooms are not listed." : "";
    ui.roomsError.hidden = !s.rooms_error; // cleared by the next snapshot that has the rooms again
    ui.roomsError.textContent = s.rooms_error ? "The room list is unavailable (" + s.rooms_error + ")." : "";
  }

  function addRoomRow(name) {
    const row = document.createElement("tr");
    row.className = "room";
    row.dataset.room = name;
    const first = document.createElement("td");
    const toggle = button("#" + name, "link room-toggle", "show or hide the members of #" + name, () => toggleRoom(name));
    toggle.setAttribute("aria-expanded", String(state.open.has(name)));
    first.append(toggle);
    row.append(first);
    const cells = { members: cell(row, ""), subscribers: cell(row, ""), rate: cell(row, "") };
    cell(row, "");
    const membersRow = document.createElement("tr");
    membersRow.className = "members-row";
    membersRow.dataset.room = name;
    membersRow.hidden = !state.open.has(name);
    const td = document.createElement("td");
    td.colSpan = 5;
    const list = document.createElement("ul");
    list.className = "members";
    td.append(list);
    membersRow.append(td);
    const entry = { row, cells, membersRow, list, toggle };
    state.rows.set(name, entry);
    return entry;
  }

  function toggleRoom(name) {
    const entry = state.rows.get(name);
    const open = !state.open.has(name);
    if (open) state.open.add(name); else state.open.delete(name);
    if (entry) {
      entry.membersRow.hidden = !open;
      entry.toggle.setAttribute("aria-expanded", String(open));
    }
    if (open) loadMembers(name, Number(entry ? entry.cells.members.textContent : 0));
  }

  async function loadMembers(name, count) {
    const known = state.members.get(name);
    if (known && known.loading) return;
    state.members.set(name, { count, nicks: known ? known.nicks : [], loading: true });
    let nicks;
    try {
      nicks = (await request("who", { room: name })).members;
    } catch (e) {
      state.members.delete(name);
      return;
    }
    state.members.set(name, { count, nicks, loading: false });
    const entry = state.rows.get(name);
    if (entry) renderMembers(name, entry.list, nicks);
  }

  function renderMembers(room, list, nicks) {
    if (!nicks.length) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = "no members (subscribers only)";
      list.replaceChildren(li);
      return;
    }
    list.replaceChildren(...nicks.map((nick) => {
      const li = document.createElement("li");
      li.dataset.nick = nick;
      const label = document.createElement("span");
      label.className = "nick";
      label.textContent = nick;
      li.append(
        label,
        button("kick", "small kick", "remove " + nick + " from #" + room, () => kick(room, nick)),
        button("disconnect", "small secondary disconnect", "close every connection of " + nick, () => disconnect(nick)),
      );
      return li;
    }));
  }

  async function kick(room, nick) {
    try {
      await request("kick", { room, nick, reason: "kicked by an admin" });
      feedback(ui.actionFeedback, "Kicked " + nick + " from #" + room + ".", false);
      state.members.delete(room);
      if (state.open.has(room)) loadMembers(room, -1);
    } catch (e) {
      feedback(ui.actionFeedback, "kick " + nick + ": " + explain(e), true);
    }
  }

  async function disconnect(nick) {
    try {
      await request("disconnect", { nick, reason: "disconnected by an admin" });
      feedback(ui.actionFeedback, "Disconnected " + nick + ".", false);
    } catch (e) {
      feedback(ui.actionFeedback, "disconnect " + nick + ": " + explain(e), true);
    }
  }

  function renderHealth(health) {
    ui.health.replaceChildren(...Object.entries(health).map(([name, verdict]) => {
      const li = document.createElement("li");
      li.className = verdict === "ok" ? "ok" : "bad";
      li.dataset.check = name;
      li.append(name + ": " + verdict);
      return li;
    }));
    if (!Object.keys(health).length) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = "checking…";
      ui.health.replaceChildren(li);
    }
  }

  function renderErrors(errors) {
    ui.errorsEmpty.hidden = errors.length > 0;
    ui.errors.replaceChildren(...errors.slice().reverse().map((e) => {
      const li = document.createElement("li");
      li.className = e.level;
      const when = document.createElement("span");
      when.className = "time";
      when.textContent = new Date(e.time * 1000).toLocaleTimeString();
      const where = document.createElement("span");
      where.className = "namespace";
      where.textContent = e.level + " " + e.namespace;
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = e.text;
      li.append(when, " ", where, " ", text);
      return li;
    }));
  }

  // snapshots stop when the account is no longer an admin, or the server is stuck: say so
  setInterval(() => {
    if (document.body.dataset.view !== "dashboard" || !state.ws || !state.lastStats) return;
    const quiet = (Date.now() - state.lastStats) / 1000;
    if (quiet > Math.max(5, 5 * (state.interval || 1))) setStatus("stale", "no statistics for " + Math.round(quiet) + " s");
  }, 1000);

  show("connecting");
  connect();
})();
