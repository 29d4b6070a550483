"""The Redis engine: the state every hub shares, in one Redis, for any number of processes and hosts.

It is the L{HubEngine} for ``[hub] engine = "redis"``. Ids are handed out
by one atomic script per publish (within blocks the database reserved, see
L{storage}), which appends the message to the room's stream and publishes it
on the room's channel; every process subscribed to the channel delivers it to
its own connections in channel order (L{feeds}); the publishing process then
commits it to the database and answers the sender. Presence, nicks and the
room list live in Redis with expiry times that each process refreshes for its
own connections (L{presence}). Every Redis call is bounded by ``[hub]
engine_timeout``; past it, or while Redis is not connected, operations fail
with ENGINE_UNAVAILABLE. Messages are never delivered locally only.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from myservices.errors import DATABASE_UNAVAILABLE, NICK_OFFLINE, RequestError
from myservices.hub.config import HubConfig, parse_redis_url
from myservices.hub.events import Direct, Disconnect, Event, Kick, Logout, Message, NickChange
from myservices.hub.history import HistoryStore
from myservices.hub.interfaces import EngineNode, Joined, RoomInfo, missed_since
import myservices.hub.redis.scripts as scripts
from myservices.hub.redis.client import EngineUnavailable, RedisLink
from myservices.hub.redis.codec import decode_message, direct_payload, message_prefix, nick_change
from myservices.hub.redis.codec import disconnect as disconnect_payload
from myservices.hub.redis.codec import kick as kick_payload
from myservices.hub.redis.codec import logout as logout_payload
from myservices.hub.redis.feeds import Feed, Feeds
from myservices.hub.redis.presence import LocalPresence
from myservices.hub.redis.storage import EpochChanged, Storage
from myservices.metrics import Metrics

ATTEMPTS = 5  # seeding or reserving, then publishing again: more means Redis keeps losing its data


class RedisEngine(Service):
    """Rooms, ids, nicks, presence and delivery shared through Redis (see the module docstring)."""

    log = Logger()
    name = "hub-engine"  # type: ignore[assignment]  # twisted's Service.name is unannotated (inferred as None)

    def __init__(
        self, config: HubConfig, clock: IReactorTime, history: HistoryStore | None = None, metrics: Metrics | None = None
    ) -> None:
        self.config = config
        self.clock = clock
        self.store = history
        self.metrics = metrics if metrics is not None else Metrics()
        self.prefix = config.redis_prefix
        self.address = parse_redis_url(config.redis_url, config.redis_password)
        self.ttl_ms = max(1, int(config.presence_ttl * 1000))
        self.nodes: dict[str, EngineNode] = {}
        self.epoch: str | None = None
        self._refreshed_epoch: str | None = None  # the epoch of the last refresh: a new one means a data loss
        timeout, delay = config.engine_timeout, config.redis_reconnect_delay
        self.commands = RedisLink(
            "commands", self.address, clock, timeout, delay, self.metrics,
            prepare=self._check_epoch, on_ready=self._commands_ready,
        )
        self.feeds = Feeds(
            self.prefix, self.commands, clock, config.engine_timeout, config.history_size, self.metrics,
            self._deliver, self._deliver_nick, self._deliver_direct,
        )
        self.subscriber = RedisLink(
            "subscriber", self.address, clock, timeout, delay, self.metrics, subscriber=True,
            on_ready=self.feeds.connected, on_lost=self.feeds.lost, on_message=self.feeds.on_message,
        )
        self.feeds.link = self.subscriber
        self.presence = LocalPresence(self.prefix, self.commands, config.presence_ttl, self.metrics)
        self.storage = Storage(
            history, self.commands, self.prefix, config.history_size, config.id_block, config.max_history_backlog,
            self.metrics, lambda: self.epoch,
        )
        self._tick = LoopingCall(self._periodic)
        self._tick.clock = clock
        self.metrics.hub_members.set_function(lambda: self.presence.count)
        self.metrics.hub_engine_up.set_function(lambda: 1 if self.commands.ready and self.subscriber.ready else 0)

    # --- the service ------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # twisted's Service is unannotated
        self.log.info("hub: engine redis at {url}, prefix {prefix!r}", url=self.address.safe, prefix=self.prefix)
        self.commands.start()
        self.subscriber.start()
        self._tick.start(self.config.presence_ttl / 3, now=False).addErrback(
            lambda f: self.log.failure("hub: the engine's periodic work stopped", f)
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._tick.running:
            self._tick.stop()
        self.feeds.stop()  # nothing waits for the channels any more
        if self.store is not None:
            await self.store.flush()  # every message still being committed is written (or kept) first
        await self.storage.save_late()
        await self.subscriber.stop()
        await self.commands.stop()

    def health(self) -> str:
        """For /readyz: "ok" while both Redis connections are up."""
        return "ok" if self.commands.ready and self.subscriber.ready else "redis unavailable"

    async def when_connected(self, timeout: float | None = None) -> None:
        """Wait until both connections are ready (within C{timeout}, by default engine_timeout)."""
        timeout = self.config.engine_timeout if timeout is None else timeout
        await self.commands.wait_ready(timeout)
        await self.subscriber.wait_ready(timeout)

    async def _check_epoch(self, conn: Any) -> None:
        """On each new connection, before any command: has Redis lost its data since we last saw it?"""
        key = self.prefix + "epoch"
        await conn.execute_command("SET", key, uuid.uuid4().hex, "NX")
        epoch = await conn.execute_command("GET", key)
        if self.epoch is not None and epoch != self.epoch:
            self.metrics.hub_engine_data_losses.inc()
            self.log.warn("hub: Redis lost its data (it restarted empty?); presence and nicks are restored, "
                          "rooms continue from the ids the database reserved")
        self.epoch = epoch

    def _commands_ready(self) -> None:
        # presence and nicks back at once (after a data loss Redis has none of them)
        Deferred.fromCoroutine(self._periodic()).addErrback(
            lambda f: self.log.failure("hub: restoring presence failed", f)
        )

    async def _periodic(self) -> None:
        """Every presence_ttl/3: refresh presence and nicks, catch up feeds, save what waits; never raises."""
        try:
            if self.commands.ready:
                epoch = self.epoch
                await self.presence.refresh(announce=epoch == self._refreshed_epoch)
                self._refreshed_epoch = epoch
                await self.feeds.catch_up_stale()
                await self.storage.sweep()
            await self.storage.save_late()
        except EngineUnavailable:
            pass  # the next tick tries again
        except Exception:
            self.log.failure("hub: the engine's periodic work failed")

    # --- nodes and nicks ------------------------------------------------------------------------------

    def attach(self, node: EngineNode) -> None:
        self.nodes[node.node_id] = node

    def detach(self, node: EngineNode) -> None:
        self.nodes.pop(node.node_id, None)

    def _deliver(self, room: str, event: Event) -> None:
        for node in list(self.nodes.values()):
            node.receive(room, event)  # a hub ignores the rooms it has nobody in

    def _deliver_nick(self, member_id: str, event: NickChange) -> None:
        for node in list(self.nodes.values()):
            node.receive_nick(member_id, event)

    def _deliver_direct(self, event: Direct) -> None:
        for node in list(self.nodes.values()):
            node.receive_direct(event)

    async def direct(self, event: Direct) -> None:
        # the nick's holder is in Redis: checked and published by one script; the sender is answered once its
        # own process delivered it (its other connections have their copy), as for a publish
        feed = self.feeds.dm_feed
        marker = self.feeds.expect()
        try:
            await self.feeds.confirmed(feed)
            payload = direct_payload(event, marker.token)
            sent = await self.commands.eval(scripts.DIRECT, [self.prefix, event.target.lower(), payload])
            if not sent:
                raise RequestError(NICK_OFFLINE, f'no user "{event.target}" is connected')
            try:
                await self.feeds.reached(feed, marker)
            except EngineUnavailable:
                pass  # it was sent: the sender is answered all the same
        finally:
            self.feeds.abandon(feed, marker)

    async def claim_nick(self, nick: str, member_id: str) -> bool:
        lower = nick.lower()
        held = bool(await self.commands.eval(scripts.CLAIM_NICK, [self.prefix, lower, member_id, self.ttl_ms]))
        if held:
            self.presence.nicks[lower] = member_id
        return held

    async def release_nick(self, nick: str, member_id: str) -> None:
        lower = nick.lower()
        if self.presence.nicks.get(lower) == member_id:
            del self.presence.nicks[lower]  # no longer refreshed: it expires even if Redis is not reached now
        try:
            await self.commands.eval(scripts.RELEASE_NICK, [self.prefix, lower, member_id])
        except EngineUnavailable:
            self.log.info("hub: nick {nick} is released when it expires (Redis is not available)", nick=nick)

    async def guest_number(self) -> int:
        return int(await self.commands.call("INCR", self.prefix + "guests"))

    # --- rooms ---------------------------------------------------------------------------------------

    async def join(
        self, node_id: str, member_id: str, room: str, nick: str, attach: Callable[[], None], since: int | None = None,
        account: bool = False,
    ) -> Joined:
        return await self._enter(member_id, room, nick, attach, since, account)

    async def subscribe(
        self, node_id: str, member_id: str, room: str, attach: Callable[[], None], since: int | None = None
    ) -> Joined:
        return await self._enter(member_id, room, "", attach, since)

    async def _enter(
        self, member_id: str, room: str, nick: str, attach: Callable[[], None], since: int | None,
        account: bool = False,
    ) -> Joined:
        key = (room, member_id)
        feed = self.feeds.acquire(room)  # subscribed before the script runs: nothing after it is missed
        try:
            await self.feeds.confirmed(feed)
            joined = await self._enter_script(feed, member_id, room, nick, attach, since, account)
        except BaseException:
            self.feeds.release(room)
            raise
        if key in self.presence.members if nick else key in self.presence.subscribers:
            self.feeds.release(room)  # joined twice: the first join holds the feed for this member
        elif nick:
            self.presence.members[key] = (nick, account)
        else:
            self.presence.subscribers.add(key)
        return joined

    async def _enter_script(
        self, feed: Feed, member_id: str, room: str, nick: str, attach: Callable[[], None], since: int | None,
        account: bool,
    ) -> Joined:
        marker = self.feeds.expect(attach)
        try:
            stored: list[Message] = []
            force, degraded = False, False
            for _ in range(ATTEMPTS):
                args = [self.prefix, room, member_id, nick, -1 if since is None else since, int(force),
                        self.config.history_size, self.ttl_ms, marker.token, int(account)]
                result = await self.commands.eval(scripts.ENTER, args)
                if result != "NEED_DB":
                    break
                stored, degraded = await self._stored(room)
                force = True
            top, payloads, members = int(result[0]), result[1], list(result[2])
            recent = self._merge(stored, [decode_message(p) for p in payloads], top)
            history, recovered = missed_since(recent, top, since, self.config.history_size)
            if degraded and since is not None and since < top:
                recovered = False  # the database could not tell what the stream does not hold
            self.feeds.ready(feed, marker, top)
            await self.feeds.reached(feed, marker)
        except BaseException:
            self.feeds.abandon(feed, marker)
            raise
        return Joined(room, history, members, recovered, top)

    async def _stored(self, room: str) -> tuple[list[Message], bool]:
        """The room's messages in the database (seeding Redis with them); and whether that failed."""
        try:
            return await self.storage.seed(room), False
        except EpochChanged:
            return [], False
        except RequestError as e:
            if e.error is not DATABASE_UNAVAILABLE:
                raise
            self.log.warn("hub: room {room}: history from the stream only, the database is unavailable", room=room)
            return [], True

    def _merge(self, stored: list[Message], stream: list[Message], top: int | None = None) -> list[Message]:
        """The last history_size of both, by id (up to C{top}), each once."""
        by_id = {m.id: m for m in stored if top is None or m.id <= top}
        by_id.update((m.id, m) for m in stream if top is None or m.id <= top)
        size = self.config.history_size
        return [by_id[i] for i in sorted(by_id)][-size:] if size else []

    async def part(self, member_id: str, room: str) -> None:
        if self.presence.members.pop((room, member_id), None) is None:
            return
        await self._leave(scripts.PART, member_id, room, wait=True)

    async def unsubscribe(self, member_id: str, room: str) -> None:
        key = (room, member_id)
        if key not in self.presence.subscribers:
            return
        self.presence.subscribers.discard(key)
        await self._leave(scripts.UNSUBSCRIBE, member_id, room, wait=False)

    async def _leave(self, script: str, member_id: str, room: str, wait: bool) -> None:
        """Remove presence; a member's PART reaches this process's members (the leaver too) before it returns.

        Never fails: while Redis is unavailable the presence expires by itself
        (and whoever reaps it publishes the PART).
        """
        feed = self.feeds.feeds.get(self.feeds.channel(room))
        marker = self.feeds.expect()
        try:
            args = [self.prefix, room, member_id] + ([marker.token] if wait else [])
            was_there = await self.commands.eval(script, args)
            if wait and was_there and feed is not None and feed.confirmed:
                await self.feeds.reached(feed, marker)
        except EngineUnavailable:
            self.log.info("hub: {member} leaves {room} when its presence expires (Redis is not available)",
                          member=member_id, room=room)
        finally:
            if feed is not None:
                self.feeds.abandon(feed, marker)
            else:
                self.feeds.markers.pop(marker.token, None)
            self.feeds.release(room)

    async def rename(
        self, node_id: str, member_id: str, old: str, new: str, rooms: Sequence[str], account: bool = False
    ) -> None:
        self.presence.renamed(member_id, new, list(rooms), account)
        if old == new:  # only the account flag changed: recorded, nobody is told
            try:
                await self.commands.eval(scripts.RENAME, [self.prefix, member_id, new, int(account), "", *rooms])
            except EngineUnavailable:
                self.log.info("hub: {nick}'s presence says it is an account's at the next refresh", nick=new)
            return
        feed = self.feeds.nick_feed
        marker = self.feeds.expect()
        payload = nick_change(NickChange(old=old, new=new, rooms=tuple(rooms)), member_id, marker.token)
        try:
            await self.feeds.confirmed(feed)
            await self.commands.eval(scripts.RENAME, [self.prefix, member_id, new, int(account), payload, *rooms])
            await self.feeds.reached(feed, marker)
        except EngineUnavailable:
            # the nick is taken (claimed) already; its announcement is what failed, and presence catches up
            self.log.warn("hub: the nick change {old} -> {new} may not have been announced (Redis is not available)",
                          old=old, new=new)
        finally:
            self.feeds.abandon(feed, marker)

    async def logout(self, order: Logout) -> None:
        # on the channel every process listens to, like kicks: each hands it to its hubs, this one too
        await self.commands.call("PUBLISH", self.feeds.nick_feed.channel, logout_payload(order))

    async def disconnect(self, order: Disconnect) -> bool:
        channel = self.feeds.nick_feed.channel
        return bool(await self.commands.eval(scripts.DISCONNECT, [self.prefix, order.nick, channel, disconnect_payload(order)]))

    async def kick(self, kick: Kick) -> None:
        # on the channel every process listens to (the nick changes'): each hands it to its hubs, this one too
        await self.commands.call("PUBLISH", self.feeds.nick_feed.channel, kick_payload(kick))

    async def members(self, room: str) -> list[str]:
        return list(await self.commands.eval(scripts.WHO, [self.prefix, room]))

    async def rooms(self) -> list[RoomInfo]:
        flat = await self.commands.eval(scripts.ROOMS, [self.prefix])
        infos = [RoomInfo(flat[i], int(flat[i + 1]), int(flat[i + 2]), int(flat[i + 3])) for i in range(0, len(flat), 4)]
        return sorted(infos, key=lambda info: info.name)

    async def history(self, room: str, limit: int) -> list[Message]:
        base, length, _, payloads = await self.commands.eval(scripts.READ, [self.prefix, room, 0])
        stream = [decode_message(p) for p in payloads]
        stored: list[Message] = []
        if base < 0 or (base > 0 and length < self.config.history_size):
            # not in Redis, or its stream does not reach back far enough: the database has the rest (a room
            # nobody uses is not put into Redis for it: any name can be asked for)
            try:
                stored = await self.storage.load(room)
            except RequestError:
                if base < 0:
                    raise  # DATABASE_UNAVAILABLE: nothing to answer from
                self.log.warn("hub: history of {room} from the stream only, the database is unavailable", room=room)
        messages = self._merge(stored, stream)
        return messages[-limit:] if limit else []

    # --- publishing -----------------------------------------------------------------------------------

    async def publish(self, room: str, nick: str, text: str, account: bool = False) -> Message:
        if self.storage.refusing:
            # before Redis hands out an id: nothing is delivered, and a retry cannot duplicate the message
            raise RequestError(DATABASE_UNAVAILABLE, "the message was not saved nor delivered; send it again")
        # behind publishes waiting for the room's seed or ids: a connection's messages keep their order
        await self.storage.settled(room)
        ts = self.clock.seconds()
        args = [self.prefix, room, self.config.history_size, message_prefix(room, ts, nick, text, account)]
        for _ in range(ATTEMPTS):
            result = await self.commands.eval(scripts.PUBLISH, args)
            if isinstance(result, int):
                break
            try:
                if result == "SEED":
                    await self.storage.seed(room)
                else:
                    await self.storage.reserve(room)
            except EpochChanged:
                continue
        else:
            raise EngineUnavailable()
        message = Message(room=room, id=result, ts=ts, nick=nick, text=text, account=account)
        self.metrics.hub_publishes.inc()
        await self.storage.save(message)
        await self.feeds.delivered(room, message.id)  # a sender in the room sees its message before the answer
        return message
