"""The Redis engine's nicks and the orders every process gets (direct messages, logouts, disconnects, kicks).

A mixin of L{RedisEngine}. Nicks: C{P nick:LOWER} holds a nick's owner (a
member id, or C{@NAME} for an account, whose connections in several
processes share it) and C{P nickh:LOWER} the processes holding it; orders go
out on the channel every process listens to (the nick changes'), and each
hands them to its hubs, this one too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from myservices.errors import NICK_OFFLINE, RequestError
from myservices.hub.events import Direct, Disconnect, Kick, Logout
import myservices.hub.redis.scripts as scripts
from myservices.hub.redis.client import EngineUnavailable
from myservices.hub.redis.codec import direct_payload
from myservices.hub.redis.codec import disconnect as disconnect_payload
from myservices.hub.redis.codec import kick as kick_payload
from myservices.hub.redis.codec import logout as logout_payload

if TYPE_CHECKING:
    from twisted.logger import Logger

    from myservices.hub.redis.client import RedisLink
    from myservices.hub.redis.feeds import Feeds
    from myservices.hub.redis.presence import LocalPresence


class NicksAndOrders:
    """Claiming and releasing nicks, guest numbers, and the orders to every process (see the module docstring)."""

    if TYPE_CHECKING:  # the engine's
        commands: RedisLink
        feeds: Feeds
        presence: LocalPresence
        prefix: str
        ttl_ms: int
        process: str
        log: Logger

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
        held = bool(await self.commands.eval(scripts.CLAIM_NICK, [self.prefix, lower, member_id, self.ttl_ms, self.process]))
        if held:
            self.presence.nicks[lower] = member_id
        return held

    async def release_nick(self, nick: str, member_id: str) -> None:
        lower = nick.lower()
        if self.presence.nicks.get(lower) == member_id:
            del self.presence.nicks[lower]  # no longer refreshed: it expires even if Redis is not reached now
        try:
            await self.commands.eval(scripts.RELEASE_NICK, [self.prefix, lower, member_id, self.process])
        except EngineUnavailable:
            self.log.info("hub: nick {nick} is released when it expires (Redis is not available)", nick=nick)

    async def guest_number(self) -> int:
        return int(await self.commands.call("INCR", self.prefix + "guests"))

    async def logout(self, order: Logout) -> None:
        # on the channel every process listens to, like kicks: each hands it to its hubs, this one too
        await self.commands.call("PUBLISH", self.feeds.nick_feed.channel, logout_payload(order))

    async def disconnect(self, order: Disconnect) -> bool:
        channel = self.feeds.nick_feed.channel
        return bool(await self.commands.eval(scripts.DISCONNECT, [self.prefix, order.nick, channel, disconnect_payload(order)]))

    async def kick(self, kick: Kick) -> None:
        # on the channel every process listens to (the nick changes'): each hands it to its hubs, this one too
        await self.commands.call("PUBLISH", self.feeds.nick_feed.channel, kick_payload(kick))
