"""The memory engine: the state every hub of one process shares, with history and ids in the database.

It is the L{HubEngine} for ``[hub] engine = "memory"``: one process, any
number of L{Hub} objects attached (the daemon has one; the tests attach two
to check that hubs only ever share state through the engine).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from myservices.db import DatabaseUnavailable
from myservices.errors import DATABASE_UNAVAILABLE, INTERNAL, NICK_OFFLINE, RequestError
from myservices.hub.config import HubConfig
from myservices.hub.events import Direct, Disconnect, Event, Kick, Logout, Message, NickChange, Presence
from myservices.hub.history import HistoryRejected, HistoryStore
from myservices.hub.interfaces import EngineNode, Joined, RoomInfo, missed_since
from myservices.metrics import Metrics


class Lease(Protocol):
    """Whether this process may use the rooms of its database (L{myservices.hub.lease.HubLease})."""

    def held(self) -> bool:
        """True while it may: checked before every use of a room, so it must be cheap."""

    async def ensure(self) -> None:
        """Wait until it may, or raise the RequestError to answer."""


class EngineRoom:
    """A room or topic: who is in it (by node), its last id and its recent messages."""

    def __init__(self, name: str, history_size: int) -> None:
        self.name = name
        # member id -> (node id, nick, logged in to an account), in joining order
        self.members: dict[str, tuple[str, str, bool]] = {}
        self.subscribers: dict[str, str] = {}  # member id -> node id
        self.recent: deque[Message] = deque(maxlen=history_size)
        self.last_id = 0
        self.delivered = 0  # the last id delivered (ids above it are still being committed)
        self.pending = 0  # messages being committed: the room's ids live here until they are stored
        self.loaded = False
        self.failed: RequestError | None = None  # why loading failed (the room is then forgotten)
        self.waiters: list[Deferred[None]] = []

    def nodes(self) -> set[str]:
        return {node for node, _, _ in self.members.values()} | set(self.subscribers.values())

    @property
    def empty(self) -> bool:
        return not self.members and not self.subscribers and not self.pending


class MemoryEngine(Service):
    """Rooms, ids, nicks and delivery for the hubs of one process; the database keeps history and ids.

    A published message is committed (see L{HistoryStore}) before it is
    delivered, in id order, to every hub serving the room; a room loads its
    last id and recent history the first time it is used. On stop, messages
    still being committed are written first. With a C{lease}, rooms are used
    only while it is held: one daemon per database mints its ids.
    """

    log = Logger()
    name = "hub-engine"  # type: ignore[assignment]  # twisted's Service.name is unannotated (inferred as None)

    def __init__(
        self,
        config: HubConfig,
        clock: IReactorTime,
        history: HistoryStore | None = None,
        metrics: Metrics | None = None,
        lease: Lease | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.store = history
        self.lease = lease  # with a database: ids are minted here, so one process per database
        self.metrics = metrics if metrics is not None else Metrics()
        self.nodes: dict[str, EngineNode] = {}
        self.rooms_by_name: dict[str, EngineRoom] = {}
        self._nicks: dict[str, str] = {}  # lower-case nick -> member id
        self._guests = itertools.count(1)
        # the highest id per room whose commit failed: it may still commit late (a timeout's outcome is
        # unknown), so a room reloaded meanwhile must not give it again; cleared by the room's next commit
        self._unsettled: dict[str, int] = {}
        # counted when scraped, so joins and parts cost nothing extra
        self.metrics.hub_members.set_function(
            lambda: sum(len(r.members) + len(r.subscribers) for r in self.rooms_by_name.values())
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]  # twisted's Service is unannotated
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self.store is not None:
            await self.store.flush()  # every publish still waiting is committed (or answered) first

    # --- nodes and nicks ---------------------------------------------------------

    def attach(self, node: EngineNode) -> None:
        self.nodes[node.node_id] = node

    def detach(self, node: EngineNode) -> None:
        self.nodes.pop(node.node_id, None)

    async def claim_nick(self, nick: str, member_id: str) -> bool:
        return self._nicks.setdefault(nick.lower(), member_id) == member_id

    async def release_nick(self, nick: str, member_id: str) -> None:
        if self._nicks.get(nick.lower()) == member_id:
            del self._nicks[nick.lower()]

    async def guest_number(self) -> int:
        return next(self._guests)

    # --- rooms ---------------------------------------------------------------------

    async def join(
        self, node_id: str, member_id: str, room: str, nick: str, attach: Callable[[], None], since: int | None = None,
        account: bool = False,
    ) -> Joined:
        r = await self._room(room)
        if member_id not in r.members:
            attach()
            r.members[member_id] = (node_id, nick, account)
            self._send(r.nodes(), room, Presence(kind="join", room=room, nick=nick, account=account))
        return self._joined(r, since, [n for _, n, _ in r.members.values()])

    def _joined(self, r: EngineRoom, since: int | None, members: list[str]) -> Joined:
        history, recovered = missed_since(r.recent, r.delivered, since, self.config.history_size)
        return Joined(r.name, history, members, recovered, r.delivered)

    async def part(self, member_id: str, room: str) -> None:
        r = self.rooms_by_name.get(room)
        if r is None or member_id not in r.members:
            return
        nodes = r.nodes()
        _, nick, account = r.members.pop(member_id)
        # the leaver's hub tells the leaver
        self._send(nodes, room, Presence(kind="part", room=room, nick=nick, account=account))
        self._forget_if_empty(r)

    async def subscribe(
        self, node_id: str, member_id: str, room: str, attach: Callable[[], None], since: int | None = None
    ) -> Joined:
        r = await self._room(room)
        if member_id not in r.subscribers:
            attach()
            r.subscribers[member_id] = node_id
        return self._joined(r, since, [])

    async def unsubscribe(self, member_id: str, room: str) -> None:
        r = self.rooms_by_name.get(room)
        if r is not None and r.subscribers.pop(member_id, None) is not None:
            self._forget_if_empty(r)

    async def rename(
        self, node_id: str, member_id: str, old: str, new: str, rooms: Sequence[str], account: bool = False
    ) -> None:
        nodes = {node_id}
        for name in rooms:
            r = self.rooms_by_name.get(name)
            if r is not None and member_id in r.members:
                r.members[member_id] = (r.members[member_id][0], new, account)
                nodes |= r.nodes()
        if old == new:
            return  # only the account flag changed: nothing to tell
        event = NickChange(old=old, new=new, rooms=tuple(rooms))
        for node in sorted(nodes):
            target = self.nodes.get(node)
            if target is not None:
                target.receive_nick(member_id, event)

    async def members(self, room: str) -> list[str]:
        r = self.rooms_by_name.get(room)
        return [nick for _, nick, _ in r.members.values()] if r is not None else []

    async def rooms(self) -> list[RoomInfo]:
        return sorted(
            (RoomInfo(r.name, len(r.members), len(r.subscribers), r.last_id) for r in self.rooms_by_name.values() if not r.empty),
            key=lambda info: info.name,
        )

    async def history(self, room: str, limit: int) -> list[Message]:
        if self.lease is not None and not self.lease.held():
            await self.lease.ensure()
        r = self.rooms_by_name.get(room)
        if r is not None and r.loaded:
            messages = list(r.recent)
        elif self.store is None:
            messages = []
        else:
            try:
                _, messages = await self.store.load(room, self.config.history_size)
            except DatabaseUnavailable as e:
                raise RequestError(DATABASE_UNAVAILABLE, f'history of "{room}" is not available now') from e
        return messages[-limit:] if limit else []

    async def logout(self, order: Logout) -> None:
        for node in list(self.nodes.values()):
            node.receive("", order)

    async def disconnect(self, order: Disconnect) -> bool:
        if order.nick not in self._nicks:
            return False
        for node in list(self.nodes.values()):
            node.receive("", order)
        return True

    async def kick(self, kick: Kick) -> None:
        r = self.rooms_by_name.get(kick.room)
        if r is not None:
            self._send(r.nodes(), kick.room, kick)

    # --- publishing ------------------------------------------------------------------

    async def publish(self, room: str, nick: str, text: str, account: bool = False) -> Message:
        r = await self._room(room)
        r.last_id += 1
        message = Message(room=room, id=r.last_id, ts=self.clock.seconds(), nick=nick, text=text, account=account)
        if self.store is not None:
            r.pending += 1
            try:
                await self.store.commit(message)
            except DatabaseUnavailable as e:
                self._unsettled[room] = max(self._unsettled.get(room, 0), message.id)
                raise RequestError(DATABASE_UNAVAILABLE, "the message was not saved nor delivered; send it again") from e
            except HistoryRejected as e:
                raise RequestError(INTERNAL, "the message could not be saved; it was not delivered") from e
            finally:
                r.pending -= 1
            if self._unsettled.get(room, message.id + 1) <= message.id:
                del self._unsettled[room]  # the stored last id is past it now
        self.metrics.hub_publishes.inc()
        if self.rooms_by_name.get(room) is r:
            r.recent.append(message)
            r.delivered = message.id
            self._send(r.nodes(), room, message)
        self._forget_if_empty(r)
        return message

    async def direct(self, event: Direct) -> None:
        if event.target.lower() not in self._nicks:
            raise RequestError(NICK_OFFLINE, f'no user "{event.target}" is connected')
        for node in sorted(self.nodes):
            self.nodes[node].receive_direct(event)  # each hub ignores it if nobody there has either nick

    def _send(self, nodes: Iterable[str], room: str, event: Event) -> None:
        for node in sorted(nodes):
            target = self.nodes.get(node)
            if target is not None:
                target.receive(room, event)

    # --- loading and forgetting rooms -----------------------------------------------------

    async def _room(self, name: str) -> EngineRoom:
        """The loaded room C{name}, created and loaded from history if needed."""
        if self.lease is not None and not self.lease.held():
            await self.lease.ensure()  # another daemon may be minting this database's ids
        while True:
            room = self.rooms_by_name.get(name)
            if room is None:
                room = self.rooms_by_name[name] = EngineRoom(name, self.config.history_size)
                self.metrics.hub_rooms.set(len(self.rooms_by_name))
                Deferred.fromCoroutine(self._load(room))
            if room.loaded:
                return room
            if room.failed is not None:
                raise room.failed  # at once, when the database failed without waiting
            d: Deferred[None] = Deferred()
            room.waiters.append(d)
            await d  # fails when the load failed
            # look again: while we waited, everyone else may have left and the room been forgotten

    async def _load(self, room: EngineRoom) -> None:
        """Load the room's last id and history, then wake its waiters; never fails (the waiters do)."""
        failure: RequestError | None = None
        try:
            if self.store is not None:
                room.last_id, messages = await self.store.load(room.name, self.config.history_size)
                room.last_id = max(room.last_id, self._unsettled.get(room.name, 0))
                room.recent.extend(messages)
                room.delivered = room.last_id
        except DatabaseUnavailable as e:
            # without its last id the room could repeat ids: it stays unusable until the database answers
            self.log.warn("room {room}: cannot load its history: {error}", room=room.name, error=e)
            failure = RequestError(DATABASE_UNAVAILABLE, f'room "{room.name}" cannot be loaded now; try again')
        except Exception:
            self.log.failure("room {room}: loading failed", room=room.name)
            failure = RequestError(INTERNAL)
        waiters, room.waiters = room.waiters, []
        if failure is not None:
            room.failed = failure
            if self.rooms_by_name.get(room.name) is room:
                del self.rooms_by_name[room.name]  # the next use loads it again
                self.metrics.hub_rooms.set(len(self.rooms_by_name))
            for d in waiters:
                d.errback(failure)
            return
        room.loaded = True
        for d in waiters:
            d.callback(None)

    def _forget_if_empty(self, room: EngineRoom) -> None:
        if room.empty and room.loaded and self.rooms_by_name.get(room.name) is room:
            del self.rooms_by_name[room.name]
            self.metrics.hub_rooms.set(len(self.rooms_by_name))
