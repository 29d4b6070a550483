"""PB delivery of what belongs to no room: direct messages reach the client's listener, given with ``listen``.

A direct message is not a room event, so no L{RoomHandle} receives it.
A client that wants them calls ``avatar.callRemote("listen", listener)``
with a L{pb.Referenceable} that has ``remote_dm(data)``; ``data`` is the same
JSON object every front end sends (``from``, ``to``, ``text``, ``ts``,
``account``). A later ``listen`` replaces the listener. A connection without
one receives no direct messages. A listener that raises, or leaves more than
C{max_unanswered} calls unanswered, is dropped (``listen`` again to resume).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import pb

from myservices.errors import SLOW_CONSUMER, ErrorCode
from myservices.handlers.router import Arg, Router

if TYPE_CHECKING:
    from myservices.pb.server import PBConnection

_log = Logger()

listener_commands = Router()


class BoundedListener:
    """Calls on a client's listener object, at most C{max_unanswered} of them unanswered at a time.

    A listener that raises, or falls that far behind, is dropped (L{drop},
    which subclasses extend); a lost connection is not its fault.
    """

    def __init__(self, connection: PBConnection, listener: pb.RemoteReference) -> None:
        self.connection = connection
        self.listener = listener
        self.unanswered = 0
        self.active = True

    def send(self, kind: str, data: dict[str, Any]) -> None:
        """Call C{listener.remote_KIND(data)}; no answer is awaited."""
        if not self.active:
            return
        if self.unanswered >= self.connection.factory.max_unanswered:
            self.drop(SLOW_CONSUMER, f"{self.unanswered} events unanswered")
            return
        self.unanswered += 1
        try:
            d = self.listener.callRemote(kind, data)
        except pb.DeadReferenceError:
            return  # the connection is closing (its logout ends what this listener stands for)
        d.addCallbacks(self._answered, self._failed, errbackArgs=(kind,))

    def _answered(self, _: Any) -> None:
        self.unanswered -= 1

    def _failed(self, failure: Failure, kind: str) -> None:
        self.unanswered -= 1
        if failure.check(pb.PBConnectionLost, pb.DeadReferenceError):
            return
        self.drop(None, f"its remote_{kind} failed: {failure.getErrorMessage()[:200]}")

    def drop(self, error: ErrorCode | None, detail: str) -> None:
        """Stop sending to this listener."""
        if not self.active:
            return
        self.active = False
        self.connection.factory.count("listener", error.code if error else "FAILED")
        self.dropped(detail)

    def dropped(self, detail: str) -> None:
        """After L{drop}: what else ends with the listener."""


class DirectListener(BoundedListener):
    """The client's listener for direct messages (see the module docstring)."""

    def dropped(self, detail: str) -> None:
        _log.info("pb: dropped the direct-message listener of {peer}: {detail}", peer=self.connection.peer, detail=detail)


@listener_commands.command(
    "pb.listen", Arg("listener", pb.RemoteReference, type_name="a pb.Referenceable (your listener object)")
)
def listen(avatar: Any, listener: pb.RemoteReference) -> dict[str, Any]:
    """Direct messages to this connection's nick go to C{listener.remote_dm(data)} from now on."""
    assert avatar.connection is not None
    previous = avatar.direct_listener
    avatar.direct_listener = DirectListener(avatar.connection, listener)
    if previous is not None:
        previous.active = False
    return {}
