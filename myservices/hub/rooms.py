"""What the hub keeps per connection and per room, and what a front end hands it for a connection."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Protocol

from twisted.internet.defer import Deferred

from myservices.errors import ErrorCode, RequestError
from myservices.hub.events import Event, Message
from myservices.ratelimit import TokenBucket


class Subscriber(Protocol):
    """What a front end hands the hub for one connection."""

    def deliver(self, event: Event) -> None:
        """Send one event to the client (encode with C{event.encoded(fmt, encoder)})."""

    def close(self, error: ErrorCode) -> None:
        """Tell the client why and disconnect it."""


class Session:
    """One connection's state in the hub."""

    def __init__(self, subscriber: Subscriber, nick: str, bucket: TokenBucket) -> None:
        self.subscriber = subscriber
        self.nick = nick
        self.rooms: dict[str, Room] = {}  # joined, with presence
        self.topics: dict[str, Room] = {}  # subscribed, without presence
        self.bucket = bucket
        self.closed = False

    def __repr__(self) -> str:
        return f"<Session {self.nick}>"


class Room:
    """A room or topic: who receives it and its recent messages."""

    def __init__(self, name: str, history_size: int) -> None:
        self.name = name
        self.members: dict[Session, None] = {}  # ordered, for stable /who output
        self.subscribers: dict[Session, None] = {}
        self.recent: deque[Message] = deque(maxlen=history_size)
        self.last_id = 0
        self.pending = 0  # messages being committed: the room's ids live here until they are stored
        self.loaded = False
        self.failed: RequestError | None = None  # why loading failed (the room is then forgotten)
        self._waiters: list[Deferred[None]] = []

    def audience(self) -> Iterable[Session]:
        """Everyone who receives publications, each once."""
        yield from self.members
        for s in self.subscribers:
            if s not in self.members:
                yield s

    @property
    def empty(self) -> bool:
        return not self.members and not self.subscribers and not self.pending
