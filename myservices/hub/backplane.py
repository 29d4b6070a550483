"""The seam for scale-out: how a hub's publications reach every hub that serves the room.

The hub only ever calls L{Backplane.publish} and receives through the
callback given to L{Backplane.start}. Today's L{InProcessBackplane} delivers
straight back to the one hub; a Redis or NATS backplane will send to the other
daemons too, without any front end changing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from myservices.hub.events import Message


class Backplane(Protocol):
    """Carries messages between hubs."""

    def start(self, deliver: Callable[[Message], None]) -> None:
        """Begin delivering messages (from every hub, this one included) to C{deliver}."""

    def publish(self, message: Message) -> None:
        """Send a message with its room, id and time already assigned."""

    def stop(self) -> None:
        """Stop delivering."""


class InProcessBackplane:
    """One process, one hub: publishing delivers synchronously, in order."""

    def __init__(self) -> None:
        self._deliver: Callable[[Message], None] | None = None

    def start(self, deliver: Callable[[Message], None]) -> None:
        self._deliver = deliver

    def publish(self, message: Message) -> None:
        if self._deliver is not None:
            self._deliver(message)

    def stop(self) -> None:
        self._deliver = None
