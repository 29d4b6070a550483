"""The room policy of the daemon: rules by room-name pattern, private rooms, bans and closed rooms.

L{RoomPolicies} is the L{RoomPolicy} the hub asks before every join,
subscribe, publish, history and who, and when it lists rooms; it also keeps
the state that owners and admins change (L{myservices.hub.moderation} calls
those methods after checking who may).

Rules come from the config (no database). Private rooms, members, bans and
closed rooms live in the database (so they hold across processes and
restarts) and are cached per room: a check costs a database query only when
the room's entry is missing or older than C{[rooms] cache_ttl}. A change made
by this process drops its entry at once; a change made by another process is
seen here within C{cache_ttl} seconds (the staleness bound). A ban's end is
compared with the clock at each check, so it ends on time. While the database
is down, a room's last state read stands (asked again every C{cache_ttl});
a room never read is answered DATABASE_UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from myservices.errors import FORBIDDEN, DatabaseUnavailable, RequestError
from myservices.hub.interfaces import Identity
from myservices.hub.policy_config import ACCOUNTS, ADMINS, ANYONE, RoomsConfig, Who
from myservices.hub.policy_store import (
    RoomState,
    room_ban_txn,
    room_close_txn,
    room_create_txn,
    room_delete_txn,
    room_invite_txn,
    room_remove_txn,
    room_reopen_txn,
    room_states_txn,
    room_unban_txn,
)

if TYPE_CHECKING:
    from myservices.db import Database

_ACTION_WORDS = {"join": "join", "subscribe": "subscribe to", "publish": "publish to", "read": "read"}


def permits(who: Who, identity: Identity) -> bool:
    """Whether a rule's C{who} ("anyone", "accounts", "admins" or usernames) lets C{identity} in."""
    if who == ANYONE:
        return True
    if who == ACCOUNTS:
        return identity.account is not None
    if who == ADMINS:
        return False  # admins pass every check before the rules (RoomPolicies.check)
    return identity.account is not None and identity.account in who


class RoomPolicies:
    """Rules, private rooms, bans and closed rooms: the daemon's L{myservices.hub.interfaces.RoomPolicy}."""

    log = Logger()

    def __init__(self, config: RoomsConfig, database: Database, clock: IReactorTime) -> None:
        self.config = config
        self.database = database
        self.clock = clock
        self._cache: dict[str, tuple[float, RoomState]] = {}  # room -> (when read, state), oldest first
        self._loading: dict[str, list[Deferred[RoomState]]] = {}
        self._changes = 0  # local changes so far: a load that started before one is not cached

    # --- who is who ---------------------------------------------------------------------

    def is_admin(self, who: Identity) -> bool:
        """An admin session: one logged in to an account listed in C{[rooms] admins} (read at each check)."""
        return self.config.is_admin(who.account)

    # --- RoomPolicy ---------------------------------------------------------------------

    async def check(self, who: Identity, room: str, action: str) -> None:
        """Return if C{who} may do C{action} in C{room}; RequestError(FORBIDDEN) saying why if not."""
        if who.token_rooms is not None and room not in who.token_rooms:
            raise RequestError(FORBIDDEN, f'this login is limited to other rooms than "{room}"')
        if self.is_admin(who):
            return
        rule = self.config.rule_for(room)
        if rule is not None and not permits(rule.who(action), who):
            raise RequestError(FORBIDDEN, f'you may not {_ACTION_WORDS[action]} room "{room}"')
        state = await self.state(room)
        if state.closed:
            raise RequestError(FORBIDDEN, f'room "{room}" is closed')
        if state.private and not state.is_member(who.account):
            raise RequestError(FORBIDDEN, f'room "{room}" is private')
        until = state.bans.get(who.account) if who.account is not None else None
        if until is not None:
            left = until - self.clock.seconds()
            if left > 0:
                raise RequestError(FORBIDDEN, f'you are banned from room "{room}"', retry_after=left)

    async def listed(self, who: Identity, rooms: Sequence[str]) -> set[str]:
        """The rooms among C{rooms} that C{who} may see: those it may read (rules), not private ones it is not in."""
        if who.token_rooms is not None:
            rooms = [r for r in rooms if r in who.token_rooms]
        if self.is_admin(who):
            return set(rooms)
        rooms = [r for r in rooms if (rule := self.config.rule_for(r)) is None or permits(rule.who("read"), who)]
        states = await self.states(rooms)
        return {r for r in rooms if not states[r].private or states[r].is_member(who.account)}

    # --- the cached state ------------------------------------------------------------------

    async def state(self, room: str) -> RoomState:
        """The state of C{room}, from the cache while it is fresh."""
        cached = self._cache.get(room)
        if cached is not None and self.clock.seconds() - cached[0] < self.config.cache_ttl:
            return cached[1]
        waiters = self._loading.get(room)
        if waiters is not None:  # one query per room at a time: the others wait for it
            d: Deferred[RoomState] = Deferred()
            waiters.append(d)
            return await d
        self._loading[room] = []
        try:
            state = (await self._load([room]))[room]
        except BaseException as e:
            for w in self._loading.pop(room, []):
                w.errback(e)
            raise
        for w in self._loading.pop(room, []):
            w.callback(state)
        return state

    async def states(self, rooms: Sequence[str]) -> dict[str, RoomState]:
        """The states of C{rooms}: the fresh ones from the cache, the others in one query."""
        now = self.clock.seconds()
        found: dict[str, RoomState] = {}
        missing = []
        for room in rooms:
            cached = self._cache.get(room)
            if cached is not None and now - cached[0] < self.config.cache_ttl:
                found[room] = cached[1]
            else:
                missing.append(room)
        if missing:
            found.update(await self._load(missing))
        return found

    async def _load(self, rooms: Sequence[str]) -> dict[str, RoomState]:
        changes, read_at = self._changes, self.clock.seconds()
        try:
            states: dict[str, RoomState] = await self.database.run(room_states_txn, list(rooms), read_at)
        except DatabaseUnavailable:
            # what was read last stands while the database is down (each room asks again a cache_ttl later);
            # a room never read is refused (DATABASE_UNAVAILABLE): nothing is known of it
            stale = {room: self._cache[room][1] for room in rooms if room in self._cache}
            if len(stale) < len(rooms):
                raise
            self.log.warn("room policy: the database is not available; using what was read before for {rooms}",
                          rooms=len(rooms))
            states = stale
        if changes == self._changes and self.config.cache_ttl > 0:  # nothing changed here while it was read
            for room, state in states.items():
                self._cache.pop(room, None)
                self._cache[room] = (read_at, state)
            while len(self._cache) > self.config.max_cached_rooms:
                del self._cache[next(iter(self._cache))]
        return states

    def forget(self, room: str) -> None:
        """Drop what is cached of C{room} (it changed here)."""
        self._changes += 1
        self._cache.pop(room, None)

    # --- changes (the caller has checked who may) ------------------------------------------

    async def create(self, room: str, owner: str) -> None:
        """Make C{room} a private room owned by C{owner}."""
        try:
            await self.database.run(
                room_create_txn, room, owner, self.clock.seconds(), self.config.max_private_rooms_per_account
            )
        finally:
            self.forget(room)

    async def delete(self, room: str) -> None:
        """Make private room C{room} public again (owner and members forgotten)."""
        try:
            await self.database.run(room_delete_txn, room)
        finally:
            self.forget(room)

    async def invite(self, room: str, username: str) -> bool:
        """Make C{username} a member of private room C{room}; False if it was one."""
        try:
            added: bool = await self.database.run(
                room_invite_txn, room, username, self.clock.seconds(), self.config.max_private_members
            )
        finally:
            self.forget(room)
        return added

    async def remove(self, room: str, username: str) -> bool:
        """End C{username}'s membership of C{room}; False if it was not a member."""
        try:
            removed: bool = await self.database.run(room_remove_txn, room, username)
        finally:
            self.forget(room)
        return removed

    async def ban(self, room: str, username: str, seconds: float, by: str) -> float:
        """Refuse C{username} in C{room} for C{seconds}; the time the ban ends."""
        until = self.clock.seconds() + seconds
        try:
            await self.database.run(room_ban_txn, room, username, self.clock.seconds(), until, by)
        finally:
            self.forget(room)
        return until

    async def unban(self, room: str, username: str) -> bool:
        """Lift C{username}'s ban in C{room}; False if there was none."""
        try:
            lifted: bool = await self.database.run(room_unban_txn, room, username, self.clock.seconds())
        finally:
            self.forget(room)
        return lifted

    async def close(self, room: str, by: str) -> None:
        """Close C{room}: only admins may join, subscribe, publish or read it until it is reopened."""
        try:
            await self.database.run(room_close_txn, room, self.clock.seconds(), by)
        finally:
            self.forget(room)

    async def reopen(self, room: str) -> bool:
        """Reopen C{room}; False if it was not closed."""
        try:
            reopened: bool = await self.database.run(room_reopen_txn, room)
        finally:
            self.forget(room)
        return reopened
