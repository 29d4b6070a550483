// The web chat: one WebSocket to /ws/chat on the page's own origin, JSON requests and events
// (docs/protocols.md, "WebSocket"). Reconnects with backoff and then restores the nick and room.
// Logging in: POST /api/login on the page's origin sets an HttpOnly cookie; the page then reconnects
// and the WebSocket upgrade carries the cookie, so the server logs the new connection in.
// Every user string goes into the page as text (textContent), never as markup.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const ui = {
    who: $("who"), status: $("status"), nick: $("nick"), nickHint: $("nick-hint"), room: $("room"),
    roomName: $("room-name"), members: $("members"), messages: $("messages"), text: $("text"), send: $("send"),
    loginForm: $("login-form"), loginUsername: $("login-username"), loginPassword: $("login-password"),
    loginError: $("login-error"), loggedIn: $("logged-in"), logout: $("logout"),
    privateRoom: $("private-room"), create: $("create"), privateFeedback: $("private-feedback"),
    inviteRoom: $("invite-room"), inviteUsername: $("invite-username"), invite: $("invite"),
    inviteFeedback: $("invite-feedback"), dms: $("dms"), dmNick: $("dm-nick"), dmText: $("dm-text"),
    dmFeedback: $("dm-feedback"),
  };

  // ?ws=ws://host:18000/chat points the page at another endpoint (it must allow this page's origin;
  // the login cookie reaches it only on the same host)
  function endpoint() {
    const given = new URLSearchParams(location.search).get("ws");
    if (given && /^wss?:\/\//.test(given)) return given;
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/chat";
  }

  const state = {
    ws: null, nick: null, account: null, wantedNick: null, room: null, members: [], nextId: 1,
    pending: new Map(), retries: 0, retryTimer: null, maxText: 4000, refocus: false,
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
    let welcomed = false;
    ws.onmessage = (ev) => {
      if (state.ws !== ws) return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch (e) { return; }
      // before its welcome a connection hears only of itself (the cookie's login renaming its guest nick)
      if (msg.type !== "welcome" && !welcomed) return;
      if (msg.type === "welcome") welcomed = true;
      handle(msg);
    };
    ws.onclose = (ev) => {
      if (state.ws !== ws) return;
      dropped();
      if (ev.code !== 1000 && ev.code !== 1005 && ev.reason) note("system", "disconnected: " + ev.reason + " (" + ev.code + ")");
      scheduleReconnect();
    };
  }

  // the connection is gone (or being replaced): what waited on it fails
  function dropped() {
    state.ws = null;
    for (const { reject } of state.pending.values()) reject(new Error("connection closed"));
    state.pending.clear();
    enableSending(false);
  }

  function scheduleReconnect() {
    if (state.retryTimer) return;
    // 0.5 s, 1 s, 2 s ... up to 30 s, with jitter so a restarted server is not hit by everyone at once
    const delay = Math.min(30000, 500 * 2 ** state.retries) * (0.75 + Math.random() / 2);
    state.retries += 1;
    setStatus("reconnecting", "reconnecting in " + Math.ceil(delay / 1000) + " s…");
    state.retryTimer = setTimeout(connect, delay);
  }

  // after a login or logout: a new connection, whose upgrade carries the cookie as it is now
  function reconnectNow() {
    const ws = state.ws;
    state.refocus = true;
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

  async function handle(msg) {
    switch (msg.type) {
      case "welcome": {
        const before = state.account;
        state.nick = msg.nick;
        state.account = msg.username || null;
        if (state.account !== before) {
          note("system", state.account ? "logged in as " + state.account : "logged out: you are " + state.nick);
        }
        if (msg.limits && msg.limits.max_text_length) {
          state.maxText = msg.limits.max_text_length;
          ui.text.maxLength = state.maxText;
          ui.dmText.maxLength = state.maxText;
        }
        if (msg.login_error) loginProblem(msg.login_error);
        state.retries = 0;
        setStatus("connected", "connected");
        renderIdentity();
        // the login form or the logout button that had the focus is hidden now: hand it to the other
        if (state.refocus && document.activeElement === document.body) {
          (state.account ? ui.logout : ui.loginUsername).focus();
        }
        state.refocus = false;
        await restore();
        break;
      }
      case "reply":
      case "error": {
        const waiter = state.pending.get(msg.id);
        if (waiter) {
          state.pending.delete(msg.id);
          if (msg.type === "reply") waiter.resolve(msg.result);
          else waiter.reject(failure(msg.error));
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
          note("system", "you were removed from #" + msg.room + ": " + msg.reason);
          if (msg.room === state.room) leftRoom();
          break;
        }
        if (msg.room !== state.room) break;
        if (msg.kind === "join" && !state.members.includes(msg.nick)) state.members.push(msg.nick);
        if (msg.kind === "part") state.members = state.members.filter((n) => n !== msg.nick);
        renderMembers();
        if (msg.nick !== state.nick) note("system", msg.nick + (msg.kind === "join" ? " joined" : " left"));
        break;
      case "nick":
        if (msg.old === state.nick) {
          state.nick = msg.new;
          renderIdentity();
        }
        state.members = state.members.map((n) => (n === msg.old ? msg.new : n));
        renderMembers();
        note("system", msg.old + " is now " + msg.new);
        break;
      case "dm": // a direct message (docs/protocols.md, "Direct messages")
        addDm(msg, false);
        if (!ui.dmNick.value && msg.from !== state.nick) ui.dmNick.value = msg.from; // ready to answer
        break;
    }
  }

  function failure(error) {
    return Object.assign(new Error(error.message), { code: error.code, retryAfter: error.retry_after });
  }

  // an error as a sentence a user can act on
  function explain(e) {
    const wait = e.retryAfter ? "try again in " + Math.max(1, Math.ceil(e.retryAfter)) + " s" : null;
    switch (e.code) {
      case "LOGIN_FAILED": return "Wrong username or password.";
      case "RATE_LIMITED": return wait ? "Too many attempts: " + wait + "." : e.message;
      case "FORBIDDEN": return "Not allowed: " + e.message;
      case "UNAUTHENTICATED": return "Log in first.";
      case "NICK_OFFLINE": return "Nobody with that nick is connected.";
      case "TOKEN_EXPIRED": return "Your login has expired: log in again.";
      case "TOKEN_INVALID": return "Your login is no longer valid (" + e.message + "): log in again.";
      default: return e.message + (e.code ? " (" + e.code + ")" : "");
    }
  }

  // after (re)connecting: take the nick and room the user had
  async function restore() {
    if (!state.account && state.wantedNick && state.wantedNick !== state.nick) await setNick(state.wantedNick);
    else if (state.account || !ui.nick.value) ui.nick.value = state.nick;
    if (state.room) await join(state.room);
  }

  async function setNick(nick) {
    state.wantedNick = nick;
    try {
      const result = await request("nick", { nick });
      state.nick = result.nick;
      ui.nick.value = result.nick;
      renderIdentity();
      renderMembers();
    } catch (e) {
      note("error", "nick: " + explain(e));
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
      note("error", "join #" + room + ": " + explain(e));
      if (room === state.room) leftRoom(); // could not get back in (a private room, after logging out)
    }
  }

  function leftRoom() {
    state.room = null;
    state.lastId = null;
    state.members = [];
    ui.roomName.textContent = "no room";
    renderMembers();
    enableSending(false);
  }

  async function send(text) {
    const dm = /^\/dm (\S+) (.+)$/s.exec(text); // "/dm NICK text", as in the line chat
    if (dm) return sendDm(dm[1], dm[2], (e) => note("error", "dm: " + explain(e)));
    try {
      await request("publish", { room: state.room, text });
      return true;
    } catch (e) {
      note("error", "send: " + explain(e));
      return false;
    }
  }

  async function sendDm(nick, text, onError) {
    try {
      const result = await request("dm", { nick, text });
      addDm({ from: state.nick, to: nick, text, ts: result.ts, account: Boolean(state.account) }, true);
      return true;
    } catch (e) {
      onError(e);
      return false;
    }
  }

  // --- logging in and out ---------------------------------------------------------

  // POST to the HTTP service that served this page: same origin, so the cookie it sets is this host's
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

  async function logIn(username, password, register) {
    if (register) await request("register", { username, password });
    await api("login", { username, password });
    ui.loginPassword.value = "";
    state.wantedNick = null; // a logged-in connection's nick is its username
    ui.nick.value = "";
    reconnectNow();
  }

  async function logOut() {
    try {
      await api("logout");
    } catch (e) {
      note("error", "log out: " + explain(e));
      return;
    }
    state.wantedNick = null;
    ui.nick.value = "";
    reconnectNow();
  }

  // the cookie's token was refused at connect: this connection is a guest
  function loginProblem(error) {
    feedback(ui.loginError, explain(failure(error)), true);
    if (error.code === "TOKEN_INVALID" || error.code === "TOKEN_EXPIRED") api("logout").catch(() => {});
  }

  // --- rendering -------------------------------------------------------------------

  function renderIdentity() {
    const account = state.account;
    ui.who.textContent = account ? "logged in as " + account : (state.nick || "?") + " (not logged in)";
    ui.who.dataset.account = account ? "true" : "false";
    document.body.dataset.account = account ? "true" : "false";
    ui.loginForm.hidden = Boolean(account);
    ui.loggedIn.hidden = !account;
    if (account) ui.loginError.textContent = "";
    ui.nick.disabled = Boolean(account);
    ui.nickHint.hidden = !account;
    ui.privateRoom.disabled = ui.create.disabled = !account;
    renderControls();
  }

  function renderControls() {
    const inviting = Boolean(state.account && state.room && state.ws);
    ui.inviteRoom.textContent = state.room ? "#" + state.room : "the open room";
    ui.inviteUsername.disabled = ui.invite.disabled = !inviting;
  }

  function enableSending(on) {
    const ok = on && state.room && state.ws;
    ui.text.disabled = !ok;
    ui.send.disabled = !ok;
    ui.text.placeholder = ok ? "Message #" + state.room : "Join a room, then type a message";
    renderControls();
  }

  function renderMembers() {
    ui.members.replaceChildren(...state.members.map((nick) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "link";
      button.textContent = nick;
      button.title = "send " + nick + " a direct message";
      button.addEventListener("click", () => { ui.dmNick.value = nick; ui.dmText.focus(); });
      li.append(button);
      if (nick === state.nick) li.className = "me";
      return li;
    }));
  }

  function span(className, text) {
    const s = document.createElement("span");
    s.className = className;
    s.textContent = text;
    return s;
  }

  // who wrote it, marked when that was an account (a guest can take any free nick; an account's is its own)
  function author(nick, account) {
    const parts = [span("nick", nick)];
    if (account) {
      const badge = span("badge", "account");
      badge.title = nick + " is logged in with an account";
      parts.push(" ", badge);
    }
    return parts;
  }

  function clock(ts) {
    return span("time", new Date(ts * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
  }

  function addMessage(m, fromHistory) {
    if (m.room === state.room) state.lastId = Math.max(state.lastId ?? 0, m.id);
    const li = document.createElement("li");
    li.append(clock(m.ts), " ", ...author(m.nick, m.account), " ", span("text", m.text));
    li.dataset.id = m.id;
    if (m.nick === state.nick) li.classList.add("mine");
    if (fromHistory) li.classList.add("history");
    append(ui.messages, li);
  }

  function addDm(m, mine) {
    const li = document.createElement("li");
    li.className = mine ? "dm mine" : "dm";
    li.append(clock(m.ts), " ", ...author(m.from, m.account), " \u2192 ", span("nick", m.to), ": ", span("text", m.text));
    append(ui.dms, li);
  }

  function note(kind, text) {
    const li = document.createElement("li");
    li.className = kind;
    li.textContent = text;
    append(ui.messages, li);
  }

  function append(list, li) {
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.append(li);
    // keep the page light in a busy room
    while (list.childElementCount > 1000) list.firstElementChild.remove();
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  // --- forms -------------------------------------------------------------------------

  function feedback(element, text, error) {
    element.textContent = text;
    element.classList.toggle("bad", Boolean(error));
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
  ui.loginForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const register = Boolean(ev.submitter && ev.submitter.value === "register");
    const buttons = ui.loginForm.querySelectorAll("button");
    buttons.forEach((b) => { b.disabled = true; });
    feedback(ui.loginError, register ? "creating the account…" : "logging in…", false);
    try {
      await logIn(ui.loginUsername.value.trim(), ui.loginPassword.value, register);
    } catch (e) {
      feedback(ui.loginError, (register ? "Could not create the account: " : "") + explain(e), true);
      ui.loginPassword.focus();
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  });
  ui.logout.addEventListener("click", logOut);
  $("private-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const room = ui.privateRoom.value.trim();
    if (!room) return;
    try {
      const result = await request("create", { room });
      feedback(ui.privateFeedback, "#" + result.room + " is private: invite accounts to it.", false);
      ui.privateRoom.value = "";
      await join(result.room);
    } catch (e) {
      feedback(ui.privateFeedback, explain(e), true);
    }
  });
  $("invite-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const username = ui.inviteUsername.value.trim();
    if (!username || !state.room) return;
    try {
      const r = await request("invite", { room: state.room, username });
      feedback(ui.inviteFeedback, r.added ? "Invited " + r.username + " to #" + r.room + "."
        : r.username + " may already join #" + r.room + ".", false);
      ui.inviteUsername.value = "";
    } catch (e) {
      feedback(ui.inviteFeedback, explain(e), true);
    }
  });
  $("dm-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const nick = ui.dmNick.value.trim();
    const text = ui.dmText.value;
    if (!nick || !text.trim()) return;
    feedback(ui.dmFeedback, "", false);
    if (await sendDm(nick, text, (e) => feedback(ui.dmFeedback, explain(e), true))) ui.dmText.value = "";
  });

  connect();
})();
