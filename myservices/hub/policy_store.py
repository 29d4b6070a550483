"""The room policy's tables: private rooms, their members, bans and closed rooms (all SQL of the policy).

Each function is a transaction body for C{Database.run}: it runs in the
pool's thread, never on the reactor. Usernames are canonical (lower case).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from myservices.db.pool import Txn
from myservices.errors import FORBIDDEN, NOT_FOUND, QUOTA_EXCEEDED, RequestError

_CHUNK = 200  # rooms per IN (...) list


@dataclass(frozen=True)
class RoomState:
    """What the database says about one room: its owner if private, members, bans (username -> until), closing."""

    owner: str | None = None
    members: frozenset[str] = frozenset()
    bans: dict[str, float] = field(default_factory=dict)
    closed: bool = False

    @property
    def private(self) -> bool:
        return self.owner is not None

    def is_member(self, account: str | None) -> bool:
        return account is not None and (account == self.owner or account in self.members)


def load_states_txn(txn: Txn, rooms: Sequence[str]) -> dict[str, RoomState]:
    """The state of each of C{rooms} (a room the tables do not name gets the empty state)."""
    owners: dict[str, str] = {}
    members: dict[str, set[str]] = {}
    bans: dict[str, dict[str, float]] = {}
    closed: set[str] = set()
    for start in range(0, len(rooms), _CHUNK):
        chunk = list(rooms[start : start + _CHUNK])
        marks = ", ".join("?" * len(chunk))
        txn.execute(f"SELECT room, owner FROM room_private WHERE room IN ({marks})", chunk)
        owners.update((r, o) for r, o in txn.fetchall())
        txn.execute(f"SELECT room, username FROM room_members WHERE room IN ({marks})", chunk)
        for r, u in txn.fetchall():
            members.setdefault(r, set()).add(u)
        txn.execute(f"SELECT room, username, until FROM room_bans WHERE room IN ({marks})", chunk)
        for r, u, until in txn.fetchall():
            bans.setdefault(r, {})[u] = float(until)
        txn.execute(f"SELECT room FROM room_closed WHERE room IN ({marks})", chunk)
        closed.update(r for (r,) in txn.fetchall())
    return {
        room: RoomState(owners.get(room), frozenset(members.get(room, ())), bans.get(room, {}), room in closed)
        for room in rooms
    }


def create_txn(txn: Txn, room: str, owner: str, now: float, max_rooms: int) -> None:
    """Make C{room} private, owned by C{owner}; FORBIDDEN if it is private already, QUOTA_EXCEEDED past the limit."""
    txn.execute("SELECT owner FROM room_private WHERE room = ?", (room,))
    if txn.fetchone() is not None:
        raise RequestError(FORBIDDEN, f'room "{room}" is a private room already')
    txn.execute("SELECT COUNT(*) FROM room_private WHERE owner = ?", (owner,))
    row = txn.fetchone()
    if row is not None and row[0] >= max_rooms:
        raise RequestError(QUOTA_EXCEEDED, f"an account may own at most {max_rooms} private rooms")
    txn.execute("INSERT INTO room_private (room, owner, created_at) VALUES (?, ?, ?)", (room, owner, now))
    txn.execute("DELETE FROM room_members WHERE room = ?", (room,))  # left by a room of that name deleted before


def invite_txn(txn: Txn, room: str, username: str, now: float, max_members: int) -> bool:
    """Make the account C{username} a member of C{room}; False if it was one. NOT_FOUND without such an account."""
    txn.execute("SELECT 1 FROM accounts WHERE username = ?", (username,))
    if txn.fetchone() is None:
        raise RequestError(NOT_FOUND, f'no account "{username}"')
    txn.execute("SELECT username FROM room_members WHERE room = ?", (room,))
    current = {u for (u,) in txn.fetchall()}
    if username in current:
        return False
    if len(current) >= max_members:
        raise RequestError(QUOTA_EXCEEDED, f"a private room has at most {max_members} members")
    txn.execute("INSERT INTO room_members (room, username, added_at) VALUES (?, ?, ?)", (room, username, now))
    return True


def remove_txn(txn: Txn, room: str, username: str) -> bool:
    """End C{username}'s membership of C{room}; False if it was not a member."""
    txn.execute("DELETE FROM room_members WHERE room = ? AND username = ?", (room, username))
    return bool(txn.rowcount)


def delete_txn(txn: Txn, room: str) -> None:
    """C{room} is public again: its owner and members are forgotten."""
    txn.execute("DELETE FROM room_private WHERE room = ?", (room,))
    txn.execute("DELETE FROM room_members WHERE room = ?", (room,))


def ban_txn(txn: Txn, room: str, username: str, until: float, by: str) -> None:
    """Refuse C{username} in C{room} until the time C{until} (a later ban replaces an earlier one)."""
    txn.execute("DELETE FROM room_bans WHERE room = ? AND username = ?", (room, username))
    txn.execute(
        "INSERT INTO room_bans (room, username, until, banned_by) VALUES (?, ?, ?, ?)", (room, username, until, by)
    )


def unban_txn(txn: Txn, room: str, username: str, now: float) -> bool:
    """Lift C{username}'s ban in C{room}; False if there was none in force. Expired bans go too."""
    txn.execute("DELETE FROM room_bans WHERE room = ? AND until <= ?", (room, now))
    txn.execute("DELETE FROM room_bans WHERE room = ? AND username = ?", (room, username))
    return bool(txn.rowcount)


def close_txn(txn: Txn, room: str, now: float, by: str) -> None:
    """Close C{room}: only admins may use it until it is reopened."""
    txn.execute("DELETE FROM room_closed WHERE room = ?", (room,))
    txn.execute("INSERT INTO room_closed (room, closed_at, closed_by) VALUES (?, ?, ?)", (room, now, by))


def reopen_txn(txn: Txn, room: str) -> bool:
    """Reopen C{room}; False if it was not closed."""
    txn.execute("DELETE FROM room_closed WHERE room = ?", (room,))
    return bool(txn.rowcount)
