"""What a trusted caller with no connection of its own does with the hub: the server API and the operators.

A mixin of L{myservices.hub.Hub}. The caller (an application's backend
holding an API key, or an admin) has been authorized before it gets here,
so these skip what guards a connection (membership, the per-connection rate
limit, the room policy); they keep the rules every message and name obeys.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from myservices.errors import DISCONNECTED, ErrorCode
from myservices.hub.events import Disconnect, Event, Message
from myservices.hub.interfaces import missed_since
from myservices.hub.rooms import Session

if TYPE_CHECKING:
    from twisted.logger import Logger

    from myservices.hub.config import HubConfig
    from myservices.hub.interfaces import HubEngine


@dataclass(frozen=True)
class Page:
    """Part of a room's history, oldest first.

    C{complete} is False when messages after the asked-for id were older than
    what is kept (the page starts after a gap). C{last_id} is the room's
    highest id when it was read: a reader that has it has everything.
    """

    messages: list[Message]
    complete: bool
    last_id: int


class ServerSide:
    """Publishing, reading and disconnecting on behalf of the server itself (see the module docstring)."""

    if TYPE_CHECKING:  # the hub's
        config: HubConfig
        engine: HubEngine
        sessions: dict[str, Session]
        log: Logger

        def check_nick(self, nick: str) -> str: ...
        def check_room(self, name: str) -> str: ...
        def check_text(self, text: str) -> str: ...
        def close_session_later(self, session: Session) -> None: ...
        def _send(self, sessions: Iterable[Session], event: Event) -> None: ...

    async def post(self, room: str, text: str, nick: str) -> Message:
        """Publish C{text} to C{room} as C{nick}: stored and delivered to every front end like any message.

        The message is not an account's (C{account} False), so clients can tell
        it from what a logged-in user of that name says.
        """
        room = self.check_room(room)
        self.check_text(text)
        self.check_nick(nick)
        return await self.engine.publish(room, nick, text, False)

    async def read(self, room: str, since: int | None = None, limit: int | None = None) -> Page:
        """Without C{since}, the last C{limit} messages of C{room}; with it, the first C{limit} after that id.

        At most C{history_size} messages are kept per room, so that is also the
        most one page holds.
        """
        room = self.check_room(room)
        capacity = self.config.history_size
        limit = capacity if limit is None else max(0, min(limit, capacity))
        recent = await self.engine.history(room, capacity)
        last_id = recent[-1].id if recent else 0
        if since is None:
            return Page(recent[-limit:] if limit else [], True, last_id)
        messages, complete = missed_since(recent, last_id, since, capacity)
        return Page(messages[:limit], complete, last_id)

    async def disconnect(self, nick: str, reason: str = "") -> bool:
        """Close every connection named C{nick} (any case) on every process; False if nobody had that nick."""
        nick = self.check_nick(nick)
        if reason:
            self.check_text(reason)
        return await self.engine.disconnect(Disconnect(nick=nick.lower(), reason=reason))

    def disconnected(self, order: Disconnect) -> None:
        """From the engine: close this hub's connections that C{order} names; each is told why first."""
        error = ErrorCode(DISCONNECTED.code, order.reason or DISCONNECTED.message, DISCONNECTED.retry)
        for session in list(self.sessions.values()):
            if session.nick.lower() != order.nick or session.closed:
                continue
            self.log.info("hub: {session} disconnected by an operator ({reason})", session=session, reason=order.reason)
            self.close_session_later(session)
            try:
                session.subscriber.close(error)
            except Exception:
                self.log.failure("closing {session} failed", session=session)
