// The web chat: one WebSocket to /ws/chat on the page's own origin, JSON requests and events
// (docs/protocols.md, "WebSocket"). Reconnects with backoff and then restores the nick and room.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $("status"), nick: $("nick"), room: $("room"), roomName: $("room-name"),
    members: $("members"), messages: $("messages"), text: $("text"), send: $("send"),
  };

  // ?ws=ws://host:18000/chat points the page at another endpoint (it must allow this page's origin)
  function endpoint() {
    const given = new URLSearchParams(location.search).get("ws");
    if (given && /^wss?:\/\//.test(given)) return given;
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/chat";
  }

  const state = {
    ws: null, nick: null, wantedNick: null, room: null, members: [], nextId: 1, pending: new Map(),
    retries: 0, retryTimer: null, maxText: 4000,
    lastId: null, // the last message id seen in the current room: a rejoin asks for what came after it

  };

  function setStatus(kind, text) {
    ui.status.dataset.state = kind;
    ui.status.textContent = text;
  }

  function connect() {
    state.retryTimer = null;
    setStatus(state.retries ? "reconnecting" : "connecting", state.retries ? "reconnecting…" : "connecting…");
    let ws;
    try {
      ws = new WebSocket(endpoint());
    } catch (e) {
      note("error", "cannot open a WebSocket: " + e.message);
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      handle(msg);
    };
    ws.onclose = (ev) => {
      if (state.ws !== ws) return;
      state.ws = null;
      for (const { reject } of state.pending.values()) reject(new Error("connection closed"));
      state.pending.clear();
      enableSending(false);
      if (ev.code !== 1000 && ev.code !== 1005 && ev.reason) note("system", "disconnected: " + ev.reason + " (" + ev.code + ")");
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    if (state.retryTimer) return;
    // 0.5 s, 1 s, 2 s ... up to 30 s, with jitter so a restarted server is not hit by everyone at once
    const delay = Math.min(30000, 500 * 2 ** state.retries) * (0.75 + Math.random() / 2);
    state.retries += 1;
    setStatus("reconnecting", "reconnecting in " + Math.ceil(delay / 1000) + " s…");
    state.retryTimer = setTimeout(connect, delay);
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

  async function handle(msg) {
    switch (msg.type) {
      case "welcome":
        state.nick = msg.nick;
        if (msg.limits && msg.limits.max_text_length) {
          state.maxText = msg.limits.max_text_length;
          ui.text.maxLength = state.maxText;
        }
        state.retries = 0;
        setStatus("connected", "connected");
        await restore();
        break;
      case "reply":
      case "error": {
        const waiter = state.pending.get(msg.id);
        if (waiter) {
          state.pending.delete(msg.id);
          if (msg.type === "reply") waiter.resolve(msg.result);
          else waiter.reject(Object.assign(new Error(msg.error.message), { code: msg.error.code }));
        } else if (msg.type === "error") {
          note("error", msg.error.code + ": " + msg.error.message);
        }
        break;
      }
      case "message":
        if (msg.room === state.room) addMessage(msg, false);
        break;
      case "presence":
        if (msg.kind === "kick") {  // to us alone: removed from a room (our part follows)
          note("system", "you were removed from " + msg.room + ": " + msg.reason);
          break;
        }
        if (msg.room !== state.room) break;
        if (msg.kind === "join" && !state.members.includes(msg.nick)) state.members.push(msg.nick);
        if (msg.kind === "part") state.members = state.members.filter((n) => n !== msg.nick);
        renderMembers();
        if (msg.nick !== state.nick) note("system", msg.nick + (msg.kind === "join" ? " joined" : " left"));
        break;
      case "nick":
        if (msg.old === state.nick) state.nick = msg.new;
        state.members = state.members.map((n) => (n === msg.old ? msg.new : n));
        renderMembers();
        note("system", msg.old + " is now " + msg.new);
        break;
      case "dm": // a direct message (docs/protocols.md, "Direct messages"): shown in whatever room is open
        note("dm", "[dm " + msg.from + " \u2192 " + msg.to + "] " + msg.text);
        break;
    }
  }

  // after (re)connecting: take the nick and room the user had
  async function restore() {
    if (state.wantedNick && state.wantedNick !== state.nick) await setNick(state.wantedNick);
    else ui.nick.value = ui.nick.value || state.nick;
    if (state.room) await join(state.room);
  }

  async function setNick(nick) {
    state.wantedNick = nick;
    try {
      const result = await request("nick", { nick });
      state.nick = result.nick;
      ui.nick.value = result.nick;
      renderMembers();
    } catch (e) {
      note("error", "nick: " + e.message);
    }
  }

  async function join(room) {
    // back in the same room after a reconnect: only what was missed, appended to what is shown
    const rejoin = room === state.room && state.lastId !== null;
    try {
      const result = await request("join", rejoin ? { room, since: state.lastId } : { room });
      if (state.room && state.room !== result.room) {
        request("part", { room: state.room }).catch(() => {});
      }
      state.room = result.room;
      ui.roomName.textContent = "#" + result.room;
      state.members = result.members;
      renderMembers();
      if (!rejoin) {
        ui.messages.replaceChildren();
        state.lastId = null;
      } else if (!result.recovered) {
        note("system", "some messages sent while you were away are no longer kept");
      }
      for (const m of result.history) addMessage(m, true);
      state.lastId = Math.max(state.lastId ?? 0, result.last_id);
      note("system", (rejoin ? "back in #" : "joined #") + result.room);
      enableSending(true);
      ui.text.focus();
    } catch (e) {
      note("error", "join: " + e.message);
    }
  }

  async function send(text) {
    const dm = /^\/dm (\S+) (.+)$/s.exec(text); // "/dm NICK text", as in the line chat
    try {
      if (dm) {
        await request("dm", { nick: dm[1], text: dm[2] });
        note("dm", "[dm " + state.nick + " \u2192 " + dm[1] + "] " + dm[2]);
        return true;
      }
      await request("publish", { room: state.room, text });
      return true;
    } catch (e) {
      note("error", "send: " + e.message);
      return false;
    }
  }

  function enableSending(on) {
    const ok = on && state.room && state.ws;
    ui.text.disabled = !ok;
    ui.send.disabled = !ok;
    ui.text.placeholder = ok ? "Message #" + state.room : "Join a room, then type a message";
  }

  function renderMembers() {
    ui.members.replaceChildren(...state.members.map((nick) => {
      const li = document.createElement("li");
      li.textContent = nick;
      if (nick === state.nick) li.className = "me";
      return li;
    }));
  }

  function addMessage(m, fromHistory) {
    if (m.room === state.room) state.lastId = Math.max(state.lastId ?? 0, m.id);
    const li = document.createElement("li");
    const time = document.createElement("span");
    time.className = "time";
    time.textContent = new Date(m.ts * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const nick = document.createElement("span");
    nick.className = "nick";
    nick.textContent = m.nick;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = m.text;
    li.append(time, nick, text);
    li.dataset.id = m.id;
    if (m.nick === state.nick) li.classList.add("mine");
    if (fromHistory) li.classList.add("history");
    append(li);
  }

  function note(kind, text) {
    const li = document.createElement("li");
    li.className = kind;
    li.textContent = text;
    append(li);
  }

  function append(li) {
    const list = ui.messages;
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.append(li);
    // keep the page light in a busy room
    while (list.childElementCount > 1000) list.firstElementChild.remove();
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  $("nick-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const nick = ui.nick.value.trim();
    if (nick) setNick(nick);
  });
  $("room-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const room = ui.room.value.trim();
    if (room) join(room);
  });
  $("send-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = ui.text.value;
    if (!text.trim() || !state.room) return;
    if (await send(text)) ui.text.value = "";
  });

  connect();
})();
