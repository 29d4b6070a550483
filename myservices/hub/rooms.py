"""What one hub keeps about its own connections: sessions, and which of them are in which room."""

from __future__ import annotations

from collections.abc import Iterable

from myservices.hub.interfaces import Subscriber
from myservices.ratelimit import TokenBucket


class Session:
    """One connection's state in its hub. C{member_id} names it to the engine, unique across hubs."""

    def __init__(
        self, member_id: str, subscriber: Subscriber, nick: str, bucket: TokenBucket, churn: TokenBucket,
        anonymous: str = "chat",
    ) -> None:
        self.member_id = member_id
        self.subscriber = subscriber
        self.nick = nick
        self.rooms: dict[str, None] = {}  # joined, with presence, in joining order
        self.topics: dict[str, None] = {}  # subscribed, without presence
        self.bucket = bucket  # publishing and direct messages
        self.churn = churn  # nick changes, joins, parts, logins and logouts
        self.closed = False
        self.account: str | None = None  # the logged-in account's username (then also the nick)
        self.token_rooms: frozenset[str] | None = None  # logged in with a token limited to these rooms
        self.logged_in_at: float | None = None  # when it logged in (a later password change ends what it may do)
        self.anonymous = anonymous  # what the connection may do while not logged in: chat, read or none

    def __repr__(self) -> str:
        return f"<Session {self.nick}>"


class LocalRoom:
    """This hub's connections in one room or topic."""

    def __init__(self) -> None:
        self.members: dict[Session, None] = {}
        self.subscribers: dict[Session, None] = {}

    def audience(self) -> Iterable[Session]:
        """Everyone who receives publications, each once."""
        yield from self.members
        for s in self.subscribers:
            if s not in self.members:
                yield s

    @property
    def empty(self) -> bool:
        return not self.members and not self.subscribers
