"""Delivery: this process's subscriptions to the rooms' channels, in channel order (which is id order).

A L{Feed} is one channel this process listens to: a room's (subscribed
while any of its connections is in the room, or about to be) or the nick
changes' and the direct messages' (always). Events are handled strictly in the order Redis sent them.

A join, part, subscribe or rename publishes its event with a private marker
(L{Marker}). When the marker comes round on the channel, the operation takes
effect here at exactly that point: a joiner is attached there, so every
message before the marker is in its history and every one after reaches it
live; none twice, none missed. A join's marker may arrive before the join
script's answer: the feed then holds the room's later events until the
answer is in. After the marker, the rest of the feed waits one reactor turn,
so the operation's caller answers its client before the next events go out.

After a lost subscriber connection every feed is subscribed again and caught
up from the room's stream (messages after the last id delivered here);
messages the stream no longer holds are a gap, logged and counted. Until
the catch-up has read the stream (the commands connection may come back
later than the subscriber's), the feed holds its live events (at most
L{HOLD_LIMIT}; beyond, the catch-up is given up as a gap): delivering them
first would move the last id past the missed messages, which would then
never be delivered. A join waits for its feed's catch-up; should a joiner
still reach its marker after later messages went out (a catch-up read after
its join), its join fails (ENGINE_UNAVAILABLE, retry) instead of missing them.
"""

from __future__ import annotations

import heapq
import itertools
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from myservices.hub.events import Direct, Disconnect, Event, Kick, Logout, Message, NickChange
import myservices.hub.redis.scripts as scripts
from myservices.hub.redis.client import EngineUnavailable, RedisLink, bounded
from myservices.hub.redis.codec import decode, decode_message
from myservices.metrics import Metrics

NICK_CHANNEL = "ch:*nick"
DM_CHANNEL = "ch:*dm"  # every process subscribes: a nick may be held anywhere (several connections, later)
HOLD_LIMIT = 1000  # live events a feed holds while it cannot catch up; beyond, they go out and the rest is a gap


class Marker:
    """An operation waiting for its own event on a channel: C{reached} fires when it comes round."""

    def __init__(self, token: str, on_reach: Callable[[], None] | None) -> None:
        self.token = token
        self.on_reach = on_reach
        self.ready = on_reach is None  # a join is ready once its script answered (its history is known)
        self.top = 0  # the room's last id when the operation took effect
        self.reached: Deferred[None] = Deferred()
        self.waiting = False  # someone awaits C{reached} (only then may it fail)
        self.missed = False  # a joiner's marker came after messages its history does not hold: the join fails


class Feed:
    """One channel: who here needs it, what was delivered, what waits."""

    def __init__(self, channel: str, room: str | None) -> None:
        self.channel = channel
        self.room = room  # None for the nick changes
        self.refs = 0
        self.last_id = 0  # the last message id delivered here
        self.queue: deque[tuple[Event | None, str | None, str | None]] = deque()
        self.holding = False  # stale: live events wait until the catch-up delivered what was missed
        self.catching = False  # the catch-up's read of the stream is on its way
        self.losses = 0  # subscriber connections lost: a catch-up read before the last loss is not enough
        self.paused: IDelayedCall | None = None
        self.confirmed = False
        self.subscribing = False
        self.stale = False  # events may have been missed: catch up from the stream
        self.confirm_waiters: list[Deferred[None]] = []
        self.id_waiters: list[tuple[int, int, Deferred[None]]] = []  # a heap: (id, seq, waiter)


class Feeds:
    """Every channel this process listens to, on one subscriber connection (see the module docstring)."""

    log = Logger()

    def __init__(
        self,
        prefix: str,
        commands: RedisLink,
        clock: IReactorTime,
        timeout: float,
        history_size: int,
        metrics: Metrics,
        deliver: Callable[[str, Event], None],
        deliver_nick: Callable[[str, NickChange], None],
        deliver_direct: Callable[[Direct], None] = lambda event: None,
    ) -> None:
        self.prefix = prefix
        self.commands = commands
        self.clock = clock
        self.timeout = timeout
        self.history_size = history_size
        self.metrics = metrics
        self._deliver_room = deliver
        self._deliver_nick = deliver_nick
        self._deliver_direct = deliver_direct
        self.link: RedisLink | None = None  # the subscriber connection, set by the engine
        self.nick_feed = Feed(prefix + NICK_CHANNEL, None)
        self.nick_feed.refs = 1
        self.dm_feed = Feed(prefix + DM_CHANNEL, None)
        self.dm_feed.refs = 1
        self.feeds: dict[str, Feed] = {self.nick_feed.channel: self.nick_feed, self.dm_feed.channel: self.dm_feed}
        self.markers: dict[str, Marker] = {}
        self.stopped = False
        self._tokens = (f"{uuid.uuid4().hex[:12]}.{n}" for n in itertools.count(1))
        self._waiter_seq = itertools.count()  # ties in the id heap: Deferreds do not compare

    def channel(self, room: str) -> str:
        return f"{self.prefix}ch:{room}"

    def rooms(self) -> list[str]:
        return [f.room for f in self.feeds.values() if f.room is not None]

    # --- subscriptions ---------------------------------------------------------------------------

    def acquire(self, room: str) -> Feed:
        """The feed of C{room}, subscribing to it if this process was not; release it with L{release}."""
        channel = self.channel(room)
        feed = self.feeds.get(channel)
        if feed is None:
            feed = self.feeds[channel] = Feed(channel, room)
            self.metrics.hub_rooms.set(len(self.feeds) - 2)
        feed.refs += 1
        if not feed.confirmed and not feed.subscribing:
            self._start_subscribing(feed)
        return feed

    async def confirmed(self, feed: Feed) -> None:
        """Wait until Redis confirmed the subscription and the feed caught up (within the timeout)."""
        if feed.confirmed and not feed.stale:
            return
        d: Deferred[None] = Deferred()
        feed.confirm_waiters.append(d)
        if not feed.confirmed and not feed.subscribing:
            self._start_subscribing(feed)  # an earlier try failed: this one fails (or succeeds) for us
        elif feed.confirmed and not feed.catching:
            Deferred.fromCoroutine(self._catch_up(feed)).addErrback(  # an earlier catch-up failed: this one is ours
                lambda f: self.log.failure("redis: catching up {channel} failed", f, channel=feed.channel)
            )
        await bounded(d, self.timeout, self.clock, self.metrics)

    def release(self, room: str) -> None:
        feed = self.feeds.get(self.channel(room))
        if feed is None:
            return
        feed.refs -= 1
        if feed.refs > 0:
            return
        del self.feeds[feed.channel]
        self.metrics.hub_rooms.set(len(self.feeds) - 2)
        if feed.paused is not None and feed.paused.active():
            feed.paused.cancel()
        self._fire_id_waiters(feed, all_of_them=True)
        if self.link is not None and self.link.ready:
            # even if not confirmed yet: a SUBSCRIBE on its way is undone by this one, which follows it
            Deferred.fromCoroutine(self.link.unsubscribe(feed.channel)).addErrback(
                lambda f: f.trap(EngineUnavailable)
            )

    def _start_subscribing(self, feed: Feed) -> None:
        feed.subscribing = True
        Deferred.fromCoroutine(self._subscribe(feed)).addErrback(
            lambda f: self.log.failure("redis: subscribing to {channel} failed", f, channel=feed.channel)
        )

    async def _subscribe(self, feed: Feed) -> None:
        if feed.room is None:
            feed.stale = False  # nick changes and direct messages are not kept anywhere: nothing to catch up
        feed.holding = feed.stale  # from the confirmation on, live events wait behind the stream's
        try:
            if self.link is None:
                raise EngineUnavailable()
            await self.link.subscribe(feed.channel)
        except EngineUnavailable as e:
            feed.subscribing = False
            self._fire_confirmed(feed, e)
            return
        feed.subscribing = False
        feed.confirmed = True
        if feed.stale:
            await self._catch_up(feed)  # it tells the waiters
        else:
            self._fire_confirmed(feed, None)

    @staticmethod
    def _fire_confirmed(feed: Feed, error: Exception | None) -> None:
        waiters, feed.confirm_waiters = feed.confirm_waiters, []
        for d in waiters:
            if d.called:
                continue  # timed out
            if error is None:
                d.callback(None)
            else:
                d.errback(error)

    def connected(self) -> None:
        """The subscriber connection is (again) ready: subscribe to every channel, and catch up."""
        for feed in list(self.feeds.values()):
            if not feed.confirmed and not feed.subscribing:
                self._start_subscribing(feed)

    def lost(self) -> None:
        for feed in self.feeds.values():
            if feed.confirmed:
                feed.stale = True
            feed.confirmed = False
            feed.losses += 1

    def catch_up_stale(self) -> Deferred[Any]:
        """Try again to catch up the feeds whose catch-up failed (the periodic tick calls it)."""
        pending = [
            Deferred.fromCoroutine(self._catch_up(feed))
            for feed in list(self.feeds.values())
            if feed.stale and feed.confirmed and not feed.catching
        ]
        return gatherResults(pending, consumeErrors=True)

    async def _catch_up(self, feed: Feed) -> None:
        """Deliver what the stream holds after the last id delivered here, then the held events; never raises."""
        assert feed.room is not None
        feed.catching, losses = True, feed.losses
        try:
            base, length, oldest, payloads = await self.commands.eval(
                scripts.READ, [self.prefix, feed.room, feed.last_id]
            )
            messages = [decode_message(p) for p in payloads]
        except EngineUnavailable as e:
            # still stale, still holding: tried again when the commands connection is back, and by the tick
            self._fire_confirmed(feed, e)
            return
        finally:
            feed.catching = False
        if self.feeds.get(feed.channel) is not feed:
            return  # released meanwhile
        if base >= 0 and self.history_size and length >= self.history_size and oldest > feed.last_id + 1:
            self._gap(feed, oldest - 1)
        for m in messages:
            self._deliver(feed, m, None)
        if feed.losses != losses or not feed.confirmed:
            return  # lost again meanwhile: the next subscription catches up again
        feed.stale = feed.holding = False
        self._fire_confirmed(feed, None)
        self._drain(feed)

    def _gap(self, feed: Feed, last: int) -> None:
        self.metrics.hub_engine_gaps.inc()
        self.log.warn(
            "redis: room {room}: messages {first} to {last} were missed here and are no longer in Redis",
            room=feed.room, first=feed.last_id + 1, last=last,
        )

    # --- markers ----------------------------------------------------------------------------------

    def expect(self, on_reach: Callable[[], None] | None = None) -> Marker:
        """A new marker; with C{on_reach} (a join's attach), the feed holds at it until L{ready}."""
        marker = Marker(next(self._tokens), on_reach)
        self.markers[marker.token] = marker
        return marker

    def ready(self, feed: Feed, marker: Marker, top: int) -> None:
        marker.ready = True
        marker.top = top
        self._drain(feed)

    async def reached(self, feed: Feed, marker: Marker) -> None:
        """Wait for the marker to come round (within the timeout); on failure it is given up."""
        if self.stopped:
            self.abandon(feed, marker)
            raise EngineUnavailable()
        marker.waiting = True
        try:
            await bounded(marker.reached, self.timeout, self.clock, self.metrics)
        except BaseException:
            self.abandon(feed, marker)
            raise
        if marker.missed:
            self.metrics.hub_engine_errors.inc()
            raise EngineUnavailable()

    def abandon(self, feed: Feed, marker: Marker) -> None:
        """The operation gave up: its event, if it comes, is an ordinary one."""
        if self.markers.pop(marker.token, None) is not None:
            self._drain(feed)

    # --- events in channel order ---------------------------------------------------------------

    def on_message(self, channel: str, text: str) -> None:
        feed = self.feeds.get(channel)
        if feed is None:
            return  # a room this process just left
        try:
            event, token, member = decode(text)
        except (ValueError, KeyError, TypeError):
            self.log.warn("redis: ignoring an event that is not ours on {channel}: {text!r}",
                          channel=channel, text=text[:200])
            return
        feed.queue.append((event, token, member))
        if feed.holding and len(feed.queue) > HOLD_LIMIT:
            # the stream cannot be read for too long: what was missed is a gap, the held events go out
            first = next((e.id for e, _, _ in feed.queue if isinstance(e, Message)), feed.last_id + 1)
            if first > feed.last_id + 1:
                self._gap(feed, first - 1)
            feed.stale = feed.holding = False
            self._fire_confirmed(feed, None)
        self._drain(feed)

    def _drain(self, feed: Feed) -> None:
        if feed.paused is not None and not feed.paused.active():
            feed.paused = None
        while feed.queue and not feed.holding and feed.paused is None:
            event, token, member = feed.queue[0]
            marker = self.markers.get(token) if token is not None else None
            if marker is not None and not marker.ready:
                return  # the join's answer is not in yet: its history decides what it sees live
            feed.queue.popleft()
            if marker is not None:
                del self.markers[marker.token]
                if marker.on_reach is not None and feed.last_id > marker.top:
                    marker.missed = True  # messages after its history went out already (caught up before it)
                else:
                    feed.last_id = max(feed.last_id, marker.top)
                    if marker.on_reach is not None:
                        marker.on_reach()
            if event is not None:
                self._deliver(feed, event, member)
            if marker is not None:
                if not marker.reached.called:
                    marker.reached.callback(None)
                if feed.queue:
                    feed.paused = self.clock.callLater(0, self._drain, feed)

    def _deliver(self, feed: Feed, event: Event, member: str | None) -> None:
        try:
            if feed.room is None:
                if isinstance(event, NickChange) and member is not None:
                    self._deliver_nick(member, event)
                elif isinstance(event, Direct):
                    self._deliver_direct(event)
                elif isinstance(event, Kick):  # for the hubs serving its room
                    self._deliver_room(event.room, event)
                elif isinstance(event, (Logout, Disconnect)):  # for every hub
                    self._deliver_room("", event)
                return
            if isinstance(event, Message):
                if event.id <= feed.last_id:
                    return  # caught up from the stream already
                feed.last_id = event.id
                self._fire_id_waiters(feed)
            self._deliver_room(feed.room, event)
        except Exception:
            self.log.failure("redis: delivering {event!r} failed", event=event)

    # --- publishers waiting to see their message delivered here --------------------------------------

    async def delivered(self, room: str, msg_id: int) -> None:
        """Wait (within the timeout) until message C{msg_id} of C{room} was delivered here, if it will be."""
        feed = self.feeds.get(self.channel(room))
        if feed is None or feed.last_id >= msg_id or not feed.confirmed:
            return
        d: Deferred[None] = Deferred()
        heapq.heappush(feed.id_waiters, (msg_id, next(self._waiter_seq), d))
        try:
            await bounded(d, self.timeout, self.clock, self.metrics)
        except EngineUnavailable:
            pass  # it was stored and sent: the sender is answered all the same

    def _fire_id_waiters(self, feed: Feed, all_of_them: bool = False) -> None:
        # a heap by id: each delivery pops only the senders it answers (many publishes wait at once)
        waiters = feed.id_waiters
        while waiters and (all_of_them or waiters[0][0] <= feed.last_id):
            _, _, d = heapq.heappop(waiters)
            if not d.called:
                d.callback(None)

    def stop(self) -> None:
        """The engine stops: nothing waits for the channels any more."""
        for feed in self.feeds.values():
            if feed.paused is not None and feed.paused.active():
                feed.paused.cancel()
            self._fire_id_waiters(feed, all_of_them=True)
            waiters, feed.confirm_waiters = feed.confirm_waiters, []
            for d in waiters:
                if not d.called:
                    d.errback(EngineUnavailable())
        self.stopped = True
        markers, self.markers = self.markers, {}
        for marker in markers.values():
            if marker.waiting and not marker.reached.called:
                marker.reached.errback(EngineUnavailable())
