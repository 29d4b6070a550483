"""The hub's contracts: what a front end hands the hub, and the engine seam under it.

A front end talks to a L{myservices.hub.Hub}; every hub operation is a
coroutine, even in memory, so an engine that spans processes can replace the
memory one without any front end noticing (as C{twisted.words.iwords} does for
its realm). The hub keeps what is local to this process (its connections, their
rate limits and room budgets, delivery to its own connections); everything a
second process would need to share lives behind L{HubEngine}: message ids,
delivery to every hub that serves a room, presence, nicks, membership and
recent history.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from myservices.errors import ErrorCode
from myservices.hub.events import Direct, Disconnect, Event, Kick, Logout, Message, NickChange


@dataclass(frozen=True, eq=False)
class Subscriber:
    """What a front end registers for one connection: two callables, never the protocol object.

    C{deliver(event)} sends one event (encode it with C{event.encoded(fmt,
    encoder)}, which caches the bytes per wire format); C{close(error)} tells
    the client why and disconnects it.
    """

    deliver: Callable[[Event], None]
    close: Callable[[ErrorCode], None]


@dataclass(frozen=True)
class Joined:
    """What joining (or subscribing to) a room returns, taken at one moment.

    C{history} is the room's recent history (oldest first) or, when the
    joiner asked for what it missed since id N, the messages after N.
    C{recovered} says whether those are all of them: False when some were
    older than what is kept (the joiner gets the most recent ones and knows
    there is a gap). C{last_id} is the room's highest id at that moment:
    every later message reaches the joiner live.
    """

    room: str
    history: list[Message] = field(default_factory=list)
    members: list[str] = field(default_factory=list)
    recovered: bool = True
    last_id: int = 0


def missed_since(
    recent: Sequence[Message], last_id: int, since: int | None, capacity: int
) -> tuple[list[Message], bool]:
    """What a joiner missed after id C{since}, from the messages kept (C{recent}, oldest first, at most C{capacity}).

    Returns the messages to send and whether they are all it missed (the
    engines share this rule). Without C{since}: the recent history, complete.
    An id may be missing from a room for good (a commit that failed), so a
    window that is not full holds everything the room still has.
    """
    if since is None:
        return list(recent), True
    if since >= last_id:
        return [], since == last_id  # a client ahead of the room knows ids this room never gave
    missed = [m for m in recent if m.id > since]
    covered = len(recent) < capacity or bool(recent) and recent[0].id <= since + 1
    return missed, covered


@dataclass(frozen=True)
class RoomInfo:
    """A room or topic in use: how many members (with presence) and subscribers (without) it has, and its
    highest message id (ids increase by one per message: two readings give the room's message rate)."""

    name: str
    members: int
    subscribers: int
    last_id: int = 0


ACTIONS = ("join", "subscribe", "publish", "read")  # read: history and who


class Identity(Protocol):
    """Who a session is, as a room policy sees it."""

    account: str | None  # the logged-in account's username; None for anonymous
    token_rooms: frozenset[str] | None  # a token's "rooms" claim: the only rooms it may use


class RoomPolicy(Protocol):
    """Who may do what in which room; the hub asks it for every front end, so the answer is the same everywhere."""

    async def check(self, who: Identity, room: str, action: str) -> None:
        """Return if C{who} may do C{action} (one of L{ACTIONS}) in C{room}; raise RequestError(FORBIDDEN) if not."""

    async def listed(self, who: Identity, rooms: Sequence[str]) -> set[str]:
        """The names among C{rooms} that C{who} may see listed (private rooms only to their members)."""

    def is_admin(self, who: Identity) -> bool:
        """Whether C{who} is an admin (may do anything in any room)."""


class OpenPolicy:
    """Every room is public and open to everyone (the policy before any rule or private room exists)."""

    async def check(self, who: Identity, room: str, action: str) -> None:
        return None

    async def listed(self, who: Identity, rooms: Sequence[str]) -> set[str]:
        return set(rooms)

    def is_admin(self, who: Identity) -> bool:
        return False


class EngineNode(Protocol):
    """A hub as the engine sees it: where the events of the rooms it serves go."""

    node_id: str

    def receive(self, room: str, event: Event) -> None:
        """An event of C{room} (a message to members and subscribers, presence to members)."""

    def receive_nick(self, member_id: str, event: NickChange) -> None:
        """Member C{member_id} took a new nick: tell it, and the members of C{event.rooms}, once each."""

    def receive_direct(self, event: Direct) -> None:
        """A direct message: to this hub's connections named C{event.target}, and a copy to the sender's
        other connections (named C{event.sender}, except C{event.origin}); nicks compare ignoring case."""


class HubEngine(Protocol):
    """Everything the hubs of one daemon (or of many processes) share.

    A member is one connection in one room, named by the id its hub gives
    it (unique across hubs: the hub's node id is part of it). Operations that
    add a connection to a room take an C{attach} callable that the engine
    calls at the one moment the connection starts receiving the room's live
    events: the history returned is exactly what was delivered before it, so
    a joiner sees no message twice and misses none.
    """

    def attach(self, node: EngineNode) -> None:
        """Deliver the events of the rooms C{node} serves to it."""

    def detach(self, node: EngineNode) -> None:
        """Stop delivering to C{node}."""

    async def claim_nick(self, nick: str, member_id: str) -> bool:
        """Reserve C{nick} (case-insensitive) for C{member_id}; False if another holds it."""

    async def release_nick(self, nick: str, member_id: str) -> None:
        """Free C{nick} if C{member_id} holds it."""

    async def guest_number(self) -> int:
        """A number for a guest nick, not handed out before by this engine."""

    async def join(
        self, node_id: str, member_id: str, room: str, nick: str, attach: Callable[[], None], since: int | None = None,
        account: bool = False,
    ) -> Joined:
        """Add a member with presence (everyone in the room, the joiner included, gets a JOIN).

        With C{since}, the history returned is what came after that id (see L{Joined}).
        C{account}: the member is logged in to an account; its JOIN and PART say so.
        """

    async def part(self, member_id: str, room: str) -> None:
        """Remove a member (the others and the leaver get a PART, with the member's account flag)."""

    async def subscribe(
        self, node_id: str, member_id: str, room: str, attach: Callable[[], None], since: int | None = None
    ) -> Joined:
        """Receive C{room}'s messages without presence; with C{since}, what came after that id (no members)."""

    async def unsubscribe(self, member_id: str, room: str) -> None:
        """Stop receiving C{room}'s messages."""

    async def rename(
        self, node_id: str, member_id: str, old: str, new: str, rooms: Sequence[str], account: bool = False
    ) -> None:
        """Record the new nick and account flag of C{member_id} in C{rooms} and tell everyone concerned.

        With C{old} equal to C{new} (logging in under the nick it already had)
        only the account flag is recorded: nobody is told.
        """

    async def publish(self, room: str, nick: str, text: str, account: bool = False) -> Message:
        """Assign the message its id, store it, deliver it to the room in id order; the stored message."""

    async def members(self, room: str) -> list[str]:
        """Nicks of the members (not subscribers) of C{room}, in joining order."""

    async def rooms(self) -> list[RoomInfo]:
        """Every room or topic in use, by name."""

    async def history(self, room: str, limit: int) -> list[Message]:
        """The last C{limit} messages of C{room} (oldest first)."""

    async def direct(self, event: Direct) -> None:
        """Deliver a direct message to every hub (L{EngineNode.receive_direct}), in every process.

        Raises RequestError(NICK_OFFLINE) when no connection anywhere holds
        C{event.target}. Never stored: direct messages are not history.
        """

    async def logout(self, order: Logout) -> None:
        """Hand C{order} to every hub, in every process (L{EngineNode.receive}): they log out those it names."""

    async def disconnect(self, order: Disconnect) -> bool:
        """Hand C{order} to every hub, in every process (L{EngineNode.receive}): they close the connections named
        C{order.nick}. False (and nothing sent) when no connection anywhere holds that nick."""

    async def kick(self, kick: Kick) -> None:
        """Hand C{kick} to every hub serving C{kick.room} (L{EngineNode.receive}): they remove those it names."""
