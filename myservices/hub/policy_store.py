"""The room policy's tables: private rooms, their members, bans and closed rooms (all SQL of the policy).

Each function is a transaction body for C{Database.run}: it runs in the
pool's thread, never on the reactor. Usernames are canonical (lower case).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from myservices.db.pool import Txn, is_duplicate_key
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


def room_states_txn(txn: Txn, rooms: Sequence[str], now: float) -> dict[str, RoomState]:
    """The state of each of C{rooms} at time C{now} (a room the tables do not name gets the empty state)."""
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
        txn.execute(f"SELECT room, username, until FROM room_bans WHERE room IN ({marks}) AND until > ?", [*chunk, now])
        for r, u, until in txn.fetchall():
            bans.setdefault(r, {})[u] = float(until)
        txn.execute(f"SELECT room FROM room_closed WHERE room IN ({marks})", chunk)
        closed.update(r for (r,) in txn.fetchall())
    return {
        room: RoomState(owners.get(room), frozenset(members.get(room, ())), bans.get(room, {}), room in closed)
        for room in rooms
    }


def room_create_txn(txn: Txn, room: str, owner: str, now: float, max_rooms: int) -> None:
    """Make C{room} private, owned by C{owner}; FORBIDDEN if it is private already, QUOTA_EXCEEDED past the limit."""
    txn.execute("SELECT owner FROM room_private WHERE room = ?", (room,))
    if txn.fetchone() is not None:
        raise RequestError(FORBIDDEN, f'room "{room}" is a private room already')
    txn.execute("SELECT COUNT(*) FROM room_private WHERE owner = ?", (owner,))
    row = txn.fetchone()
    if row is not None and row[0] >= max_rooms:
        raise RequestError(QUOTA_EXCEEDED, f"an account may own at most {max_rooms} private rooms")
    try:
        txn.execute("INSERT INTO room_private (room, owner, created_at) VALUES (?, ?, ?)", (room, owner, now))
    except Exception as e:
        if is_duplicate_key(e):  # created by someone else meanwhile
            raise RequestError(FORBIDDEN, f'room "{room}" is a private room already') from None
        raise
    txn.execute("DELETE FROM room_members WHERE room = ?", (room,))  # left by a room of that name deleted before


def room_invite_txn(txn: Txn, room: str, username: str, now: float, max_members: int) -> bool:
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
    try:
        txn.execute("INSERT INTO room_members (room, username, added_at) VALUES (?, ?, ?)", (room, username, now))
    except Exception as e:
        if is_duplicate_key(e):  # invited by someone else meanwhile
            return False
        raise
    return True


def room_remove_txn(txn: Txn, room: str, username: str) -> bool:
    """End C{username}'s membership of C{room}; False if it was not a member."""
    txn.execute("DELETE FROM room_members WHERE room = ? AND username = ?", (room, username))
    return bool(txn.rowcount)


def room_delete_txn(txn: Txn, room: str) -> None:
    """C{room} is public again: its owner and members are forgotten."""
    txn.execute("DELETE FROM room_private WHERE room = ?", (room,))
    txn.execute("DELETE FROM room_members WHERE room = ?", (room,))


def room_ban_txn(txn: Txn, room: str, username: str, now: float, until: float, by: str) -> None:
    """Refuse C{username} in C{room} until the time C{until} (a later ban replaces an earlier one).

    The room's bans that are over go at the same time, so the table holds what is in force (and recent).
    """
    txn.execute("DELETE FROM room_bans WHERE room = ? AND (until <= ? OR username = ?)", (room, now, username))
    try:
        txn.execute(
            "INSERT INTO room_bans (room, username, until, banned_by) VALUES (?, ?, ?, ?)", (room, username, until, by)
        )
    except Exception as e:
        if not is_duplicate_key(e):
            raise
        # banned by someone else meanwhile: this ban replaces it
        txn.execute("UPDATE room_bans SET until = ?, banned_by = ? WHERE room = ? AND username = ?",
                    (until, by, room, username))


def room_unban_txn(txn: Txn, room: str, username: str, now: float) -> bool:
    """Lift C{username}'s ban in C{room}; False if there was none in force. Expired bans go too."""
    txn.execute("DELETE FROM room_bans WHERE room = ? AND username = ? AND until > ?", (room, username, now))
    lifted = bool(txn.rowcount)
    txn.execute("DELETE FROM room_bans WHERE room = ? AND (until <= ? OR username = ?)", (room, now, username))
    return lifted


def room_close_txn(txn: Txn, room: str, now: float, by: str) -> None:
    """Close C{room}: only admins may use it until it is reopened."""
    txn.execute("SELECT 1 FROM room_closed WHERE room = ?", (room,))
    if txn.fetchone() is not None:
        return
    try:
        txn.execute("INSERT INTO room_closed (room, closed_at, closed_by) VALUES (?, ?, ?)", (room, now, by))
    except Exception as e:
        if not is_duplicate_key(e):  # closed by someone else meanwhile: closed it is
            raise


def room_reopen_txn(txn: Txn, room: str) -> bool:
    """Reopen C{room}; False if it was not closed."""
    txn.execute("DELETE FROM room_closed WHERE room = ?", (room,))
    return bool(txn.rowcount)
