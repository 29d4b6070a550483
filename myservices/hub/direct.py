"""Direct messages: text from one connection to every connection of a nick, on every front end and process.

A mixin of L{myservices.hub.Hub}; the engine carries them between hubs
(L{HubEngine.direct}). They are never stored.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from myservices.errors import RATE_LIMITED, RequestError
from myservices.hub.events import Direct, Event
from myservices.hub.rooms import Session

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from myservices.hub.config import HubConfig
    from myservices.hub.interfaces import HubEngine
    from myservices.metrics import Metrics


class DirectMessages:
    """Sending and receiving direct messages (see the module docstring)."""

    if TYPE_CHECKING:  # the hub's
        config: HubConfig
        engine: HubEngine
        clock: IReactorTime
        metrics: Metrics
        sessions: dict[str, Session]

        def check_nick(self, nick: str) -> str: ...
        def check_text(self, text: str) -> str: ...
        def _may(self, session: Session, write: bool) -> None: ...
        def _send(self, sessions: Iterable[Session], event: Event) -> None: ...

    async def direct(self, session: Session, nick: str, text: str) -> Direct:
        """Send C{text} to every connection named C{nick} (ignoring case), on every front end and process.

        Rate limited with publishing (the same bucket). Never stored. The
        sender's other connections with its nick get a copy; the sending
        connection gets none, except when it writes to itself (allowed, as
        on IRC). RequestError(NICK_OFFLINE) if nobody holds C{nick}.
        """
        self.check_nick(nick)
        self.check_text(text)
        self._may(session, write=True)
        if not session.bucket.allow():
            raise RequestError(
                RATE_LIMITED, f"at most {self.config.publish_rate:g} messages per second",
                retry_after=session.bucket.wait(),
            )
        event = Direct(
            sender=session.nick, target=nick, text=text, ts=self.clock.seconds(),
            account=session.account is not None, origin=session.member_id,
        )
        await self.engine.direct(event)  # raises NICK_OFFLINE
        self.metrics.hub_directs.inc()
        return event

    def receive_direct(self, event: Direct) -> None:
        # a scan of this hub's sessions: nicks are not indexed (several connections may share one)
        target, sender = event.target.lower(), event.sender.lower()
        self._send(
            (
                s for s in self.sessions.values()
                if s.nick.lower() == target or (s.nick.lower() == sender and s.member_id != event.origin)
            ),
            event,
        )
