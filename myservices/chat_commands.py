"""The line chat's commands: each parses its arguments, calls the hub and renders the answer as lines.

A mixin of L{myservices.chat.ChatProtocol}, which owns the connection: it
reads lines, runs them (publishing lines at once, answered in order; every
other command alone) and writes what they return or raise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from myservices.chat_lines import HELP, gap_line, history_line, stamp
from myservices.errors import BAD_ARGUMENTS, FORBIDDEN, NOT_IN_ROOM, UNAUTHENTICATED, RequestError
from myservices.handlers.commands import SINCE
from myservices.hub import Hub, Joined, Message, Session
from myservices.login_limits import peer_host
from myservices.logins import Logins

# commands whose arguments are secrets: a log shows only the command
SECRET_COMMANDS = ("/login", "/register", "/passwd")


def redacted(line: str) -> str:
    """C{line} fit for a log: the arguments of a command that carries a password or token left out."""
    command = line.split(" ", 1)[0].lower()
    return f"{command} [redacted]" if command in SECRET_COMMANDS else line

if TYPE_CHECKING:
    from myservices.hub.moderation import Moderation


class ChatCommands:
    """C{/NAME args} runs C{do_NAME(args)}; a returned string is the command's final line."""

    hub: Hub
    session: Session | None
    current: str | None

    if TYPE_CHECKING:  # the protocol's
        factory: Any
        transport: Any
        def send_line(self, line: str) -> None: ...
        def close_gracefully(self) -> None: ...

    def _session(self) -> Session:
        # lines are read only once the session is open (see connectionMade)
        assert self.session is not None
        return self.session

    async def _say(self, text: str) -> None:
        if self.current is None:
            raise RequestError(NOT_IN_ROOM, "join a room first (/join ROOM), or use /msg ROOM TEXT")
        await self.hub.publish(self._session(), self.current, text)

    # --- commands -------------------------------------------------------------

    @staticmethod
    def _words(args: str, least: int, most: int, usage: str) -> list[str]:
        words = args.split()
        if not least <= len(words) <= most:
            raise RequestError(BAD_ARGUMENTS, f"usage: {usage}")
        return words

    def _room_arg(self, words: list[str], usage: str) -> str:
        if words:
            return self.hub.check_room(words[0])
        if self.current is None:
            raise RequestError(BAD_ARGUMENTS, f"usage: {usage} (you are in no room)")
        return self.current

    async def do_nick(self, args: str) -> None:
        (nick,) = self._words(args, 1, 1, "/nick NAME")
        await self.hub.set_nick(self._session(), nick)
        self.send_line(f"OK nick {nick}")

    @staticmethod
    def _since(words: list[str], usage: str) -> int | None:
        if len(words) < 2:
            return None
        word = words[1]
        # ASCII digits only (str.isdigit() takes "²"); the length bound keeps int() cheap
        if not (word.isascii() and word.isdigit()) or len(word) > 30:
            raise RequestError(BAD_ARGUMENTS, f"usage: {usage} (SINCE: the id of the last message you saw, 0 or more)")
        return int(SINCE.check(int(word)))

    async def do_join(self, args: str) -> None:
        words = self._words(args, 1, 2, "/join ROOM [SINCE]")
        since = self._since(words, "/join ROOM [SINCE]")
        joined = await self.hub.join(self._session(), words[0], since)
        self.current = joined.room
        self._send_joined("join", joined, since, history=True)

    def _send_joined(self, command: str, joined: Joined, since: int | None, history: bool = False) -> None:
        """HISTORY lines (with SINCE: what was missed), a GAP line if not all of it is kept, then the OK line.

        Without SINCE the reply is what it always was; with it, the OK line ends with the room's last id.
        """
        if history or since is not None:
            self._send_history(joined.room, joined.history)
        if since is None:
            self.send_line(f"OK {command} {joined.room}")
            return
        if not joined.recovered:
            self.send_line(gap_line(joined, since))
        self.send_line(f"OK {command} {joined.room} {joined.last_id}")

    async def do_part(self, args: str) -> None:
        room = self._room_arg(self._words(args, 0, 1, "/part [ROOM]"), "/part ROOM")
        session = self._session()
        await self.hub.part(session, room)
        if self.current == room:
            self.current = next(reversed(session.rooms), None)
        self.send_line(f"OK part {room}")

    async def do_msg(self, args: str) -> str:
        name, _, text = args.partition(" ")
        if not name or not text:
            raise RequestError(BAD_ARGUMENTS, "usage: /msg ROOM TEXT")
        message = await self.hub.publish(self._session(), name, text)
        return f"OK msg {message.room} {message.id}"  # after the replies to the lines before it

    async def do_rooms(self, args: str) -> None:
        self._words(args, 0, 0, "/rooms")
        for info in await self.hub.rooms(by=self._session()):
            self.send_line(f"ROOM {info.name} {info.members} {info.subscribers}")
        self.send_line("END rooms")

    async def do_who(self, args: str) -> None:
        room = self._room_arg(self._words(args, 0, 1, "/who [ROOM]"), "/who ROOM")
        for nick in await self.hub.who(room, by=self._session()):
            self.send_line(f"WHO {room} {nick}")
        self.send_line(f"END who {room}")

    async def do_history(self, args: str) -> None:
        words = self._words(args, 0, 2, "/history [ROOM] [N]")
        limit = None
        if len(words) == 2 or (words and words[-1].isascii() and words[-1].isdigit()):
            n = words.pop()
            # str.isdigit() also takes "²" and "⑴", which int() refuses: only ASCII digits are a number here
            if not (n.isascii() and n.isdigit()):
                raise RequestError(BAD_ARGUMENTS, "usage: /history [ROOM] [N] (N: a number of messages)")
            limit = int(n) if len(n) <= 9 else 10**9  # more than history_size is history_size
        room = self._room_arg(words, "/history ROOM [N]")
        self._send_history(room, await self.hub.history(room, limit, by=self._session()))
        self.send_line(f"END history {room}")

    async def do_sub(self, args: str) -> None:
        words = self._words(args, 1, 2, "/sub TOPIC [SINCE]")
        since = self._since(words, "/sub TOPIC [SINCE]")
        self._send_joined("sub", await self.hub.subscribe(self._session(), words[0], since), since)

    async def do_unsub(self, args: str) -> None:
        (name,) = self._words(args, 1, 1, "/unsub TOPIC")
        topic = self.hub.check_room(name)
        await self.hub.unsubscribe(self._session(), topic)
        self.send_line(f"OK unsub {topic}")

    async def do_pub(self, args: str) -> str:
        name, _, text = args.partition(" ")
        if not name or not text:
            raise RequestError(BAD_ARGUMENTS, "usage: /pub TOPIC TEXT")
        message = await self.hub.publish(self._session(), name, text, as_member=False)
        return f"OK pub {message.room} {message.id}"

    # --- accounts ---------------------------------------------------------------------

    def _logins(self) -> Logins:
        logins: Logins | None = self.factory.logins
        if logins is None:
            raise RequestError(UNAUTHENTICATED, "accounts are not available on this server")
        return logins

    def _address(self) -> str | None:
        return peer_host(self.transport.getPeer())

    @staticmethod
    def _name_and_secret(args: str, usage: str) -> tuple[str, str]:
        # the password is the rest of the line: it may contain spaces
        name, _, secret = args.partition(" ")
        if not name or not secret:
            raise RequestError(BAD_ARGUMENTS, f"usage: {usage}")
        return name, secret

    async def do_register(self, args: str) -> str:
        username, password = self._name_and_secret(args, "/register NAME PASSWORD")
        account = await self._logins().register(self._session(), username, password, self._address())
        return f"OK register {account.username}"

    async def do_login(self, args: str) -> str:
        session = self._session()
        if " " in args:
            username, password = self._name_and_secret(args, "/login NAME PASSWORD, or /login TOKEN")
            done = await self._logins().login(session, username, password, self._address())
        elif args:
            done = await self._logins().login_token(session, args, self._address())
        else:
            raise RequestError(BAD_ARGUMENTS, "usage: /login NAME PASSWORD, or /login TOKEN")
        return f"OK login {done.account.username}"

    async def do_logout(self, args: str) -> str:
        self._words(args, 0, 0, "/logout")
        await self._logins().logout(self._session())
        return f"OK logout {self._session().nick}"

    async def do_passwd(self, args: str) -> str:
        old, new = self._name_and_secret(args, "/passwd OLD NEW (OLD without spaces; NEW is the rest of the line)")
        await self._logins().change_password(self._session(), old, new, self._address())
        return "OK passwd"

    async def do_whoami(self, args: str) -> str:
        self._words(args, 0, 0, "/whoami")
        session = self._session()
        who = session.account or "-"
        return f"OK whoami {session.nick} {who}{' admin' if self.hub.policy.is_admin(session) else ''}"

    async def do_dm(self, args: str) -> str:
        nick, _, text = args.partition(" ")
        if not nick or not text:
            raise RequestError(BAD_ARGUMENTS, "usage: /dm NICK TEXT")
        await self.hub.direct(self._session(), nick, text)
        return f"OK dm {nick}"

    async def do_help(self, args: str) -> None:
        for line in HELP:
            self.send_line(f"INFO {line}")
        self.send_line("END help")

    async def do_quit(self, args: str) -> None:
        self.send_line("BYE goodbye")
        self.close_gracefully()

    # --- room policy: private rooms (owners), kicks, bans, closing (admins) --------------------

    def _moderation(self) -> Moderation:
        if self.hub.moderation is None:
            raise RequestError(FORBIDDEN, "room moderation is not available on this server")
        return self.hub.moderation

    async def do_create(self, args: str) -> str:
        (room,) = self._words(args, 1, 1, "/create ROOM")
        return f"OK create {await self._moderation().create(self._session(), room)}"

    async def do_invite(self, args: str) -> str:
        room, user = self._words(args, 2, 2, "/invite ROOM USER")
        name, username, _ = await self._moderation().invite(self._session(), room, user)
        return f"OK invite {name} {username}"

    async def do_remove(self, args: str) -> str:
        room, user = self._words(args, 2, 2, "/remove ROOM USER")
        name, username, _ = await self._moderation().remove(self._session(), room, user)
        return f"OK remove {name} {username}"

    async def do_delete(self, args: str) -> str:
        (room,) = self._words(args, 1, 1, "/delete ROOM")
        return f"OK delete {await self._moderation().delete(self._session(), room)}"

    async def do_kick(self, args: str) -> str:
        room, _, rest = args.strip().partition(" ")
        nick, _, reason = rest.strip().partition(" ")
        if not room or not nick:
            raise RequestError(BAD_ARGUMENTS, "usage: /kick ROOM NICK [REASON]")
        name, who = await self._moderation().kick(self._session(), room, nick, reason.strip()[:200])
        return f"OK kick {name} {who}"

    async def do_disconnect(self, args: str) -> str:
        nick, _, reason = args.strip().partition(" ")
        if not nick:
            raise RequestError(BAD_ARGUMENTS, "usage: /disconnect NICK [REASON]")
        who, online = await self._moderation().disconnect(self._session(), nick, reason.strip()[:200])
        return f"OK disconnect {who}" if online else f"OK disconnect {who} (nobody had that nick)"

    async def do_ban(self, args: str) -> str:
        room, user, seconds = self._words(args, 3, 3, "/ban ROOM USER SECONDS")
        if not (seconds.isascii() and seconds.isdigit()) or len(seconds) > 12:
            raise RequestError(BAD_ARGUMENTS, "usage: /ban ROOM USER SECONDS (SECONDS: a whole number)")
        name, username, until = await self._moderation().ban(self._session(), room, user, int(seconds))
        return f"OK ban {name} {username} {stamp(until)}"

    async def do_unban(self, args: str) -> str:
        room, user = self._words(args, 2, 2, "/unban ROOM USER")
        name, username, _ = await self._moderation().unban(self._session(), room, user)
        return f"OK unban {name} {username}"

    async def do_close(self, args: str) -> str:
        (room,) = self._words(args, 1, 1, "/close ROOM")
        return f"OK close {await self._moderation().close(self._session(), room)}"

    async def do_reopen(self, args: str) -> str:
        (room,) = self._words(args, 1, 1, "/reopen ROOM")
        name, _ = await self._moderation().reopen(self._session(), room)
        return f"OK reopen {name}"

    def _send_history(self, room: str, messages: list[Message]) -> None:
        for m in messages:
            self.send_line(history_line(room, m))
