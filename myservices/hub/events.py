"""What the hub delivers: messages, presence and nick changes (and statistics to admins), each encoded once per
wire format."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class UnencodableEvent(Exception):
    """The event cannot be put in this wire format; C{first} is true only for the first connection told."""

    def __init__(self, fmt: str, first: bool) -> None:
        super().__init__(f"cannot encode the event for {fmt}")
        self.first = first


_FAILED = object()


@dataclass(eq=False)
class Event:
    """Base of hub events. C{encoded} caches the bytes per wire format, so a room
    of N members on one front end costs one encoding, not N."""

    _encoded: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def encoded(self, fmt: str, encoder: Callable[[Event], Any]) -> Any:
        """C{encoder(self)}, once per format; raises L{UnencodableEvent} (to every caller) if it fails."""
        data = self._encoded.get(fmt)
        if data is None:
            try:
                data = self._encoded[fmt] = encoder(self)
            except Exception as e:
                self._encoded[fmt] = _FAILED
                raise UnencodableEvent(fmt, first=True) from e
        elif data is _FAILED:
            raise UnencodableEvent(fmt, first=False)
        return data


@dataclass(eq=False)
class Message(Event):
    """A publication in a room or topic. C{id} increases per room; C{ts} is seconds since the epoch."""

    room: str = ""
    id: int = 0
    ts: float = 0.0
    nick: str = ""
    text: str = ""
    account: bool = False  # the nick was a logged-in account's (an anonymous user's otherwise)


@dataclass(eq=False)
class Presence(Event):
    """A member joined or left a room (C{kind} is "join" or "part").

    C{kind} "kick" is sent only to a connection removed from a room (kicked,
    banned, removed from a private room, or the room closed), just before its
    PART, with C{reason} saying why.
    """

    kind: str = ""
    room: str = ""
    nick: str = ""
    reason: str = ""
    account: bool = False  # the member was logged in to an account (a guest's nick otherwise)


@dataclass(eq=False)
class Kick(Event):
    """An order to every hub serving C{room}: remove these connections from it (never sent to a client).

    A connection goes if its nick (any case) is in C{nicks}, its account in
    C{accounts}, or C{everyone}; each is told C{reason} first.
    """

    room: str = ""
    nicks: frozenset[str] = frozenset()  # lower case
    accounts: frozenset[str] = frozenset()
    everyone: bool = False
    reason: str = ""


@dataclass(eq=False)
class Logout(Event):
    """An order to every hub: log out the connections of C{account} but C{keep} (a member id; never sent to a client).

    Sent after a password change, so a session that knew the old password
    ends on every process, not only on the one where it changed.
    """

    account: str = ""
    keep: str = ""


@dataclass(eq=False)
class Disconnect(Event):
    """An order to every hub: close the connections named C{nick} (lower case), telling them C{reason}
    (never sent to a client). An operator's (the server API's or an admin's) way to end a user's sessions."""

    nick: str = ""
    reason: str = ""


@dataclass(eq=False)
class NickChange(Event):
    """A user took a new nick."""

    old: str = ""
    new: str = ""
    rooms: tuple[str, ...] = ()  # the renamed user's rooms: their members are told


@dataclass(eq=False)
class Direct(Event):
    """A direct message from one nick to another: never stored, never part of a room.

    C{account} says whether the sender was logged in with an account (a
    guest's nick proves nothing). C{origin} is the sending connection's
    member id: it is answered, not sent a copy (internal, never on a client's wire).
    """

    sender: str = ""
    target: str = ""
    text: str = ""
    ts: float = 0.0
    account: bool = False
    origin: str = ""


@dataclass(eq=False)
class Stats(Event):
    """A snapshot of the daemon's statistics, pushed to the admins watching them (L{myservices.operator})."""

    data: dict[str, Any] = field(default_factory=dict)
