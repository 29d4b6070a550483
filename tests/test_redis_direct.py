"""Direct messages through the Redis engine: two hubs on their own engines (two processes), one private Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.trial.unittest import TestCase

from myservices.errors import NICK_OFFLINE, RequestError
from myservices.hub import Direct, Hub, Session
from myservices.hub.redis import RedisEngine
from tests import redisserver
from tests.redishubs import RedisHubs, Seen
from tests.support import chat_client, load, port_of, start_tree
from tests.test_redis_tree import redis_config
from tests.wsclient import ws_connect


def directs(seen: Seen) -> list[tuple[str, str, str]]:
    return [(e.sender, e.target, e.text) for e in seen.events if isinstance(e, Direct)]


@pytest.mark.redis
class RedisDirectTests(RedisHubs):
    async def offline(self, hub: Hub, session: Session, nick: str) -> None:
        with self.assertRaises(RequestError) as caught:
            await hub.direct(session, nick, "anyone?")
        self.assertEqual(caught.exception.error, NICK_OFFLINE)

    async def test_every_connection_of_the_nick_in_every_process_gets_it_and_offline_is_shared(self) -> None:
        a, b = await self.start()
        alice, alice_sees = await self.session(a, "alice")
        bob, bob_sees = await self.session(b, "bob")
        # with accounts, connections share a nick: here a second one of each, in the other process, by hand
        alice2, alice2_sees = await self.session(b)
        alice2.nick = "alice"
        bob2, bob2_sees = await self.session(a)
        bob2.nick = "Bob"
        event = await a.direct(alice, "BOB", "hi bob")
        self.assertEqual((event.sender, event.target, event.account), ("alice", "BOB", False))
        # this process's copies are out before the sender is answered; the other's arrive when they arrive
        self.assertEqual(directs(bob2_sees), [("alice", "BOB", "hi bob")])
        await self.until(lambda: bool(directs(bob_sees)) and bool(directs(alice2_sees)), "the other process's")
        self.assertEqual(directs(bob_sees), [("alice", "BOB", "hi bob")])
        self.assertEqual(directs(alice2_sees), [("alice", "BOB", "hi bob")])  # the sender's other connection
        self.assertEqual(alice_sees.events, [])
        self.assertEqual(bob_sees.events[0].ts, event.ts)

        await self.offline(b, bob, "nobody")
        await a.close_session(alice)
        await self.offline(b, bob, "alice")  # released in Redis: offline for the other process too
        self.assertEqual(await a.rooms(), [])  # no room, no history
        self.assertEqual(self.engine(a).metrics.hub_directs._value.get(), 1)

    async def test_direct_messages_keep_their_order_and_survive_a_lost_subscriber_connection(self) -> None:
        a, b = await self.start()
        alice, _ = await self.session(a, "alice")
        bob, bob_sees = await self.session(b, "bob")
        for i in range(5):
            await a.direct(alice, "bob", f"m{i}")
        await self.until(lambda: len(directs(bob_sees)) == 5, "five direct messages")
        self.assertEqual([t for _, _, t in directs(bob_sees)], [f"m{i}" for i in range(5)])
        feed = self.engine(b).feeds.dm_feed
        self.engine(b).subscriber.conn.transport.abortConnection()
        await self.until(lambda: not feed.confirmed, "b to notice the lost connection")
        await self.until(lambda: feed.confirmed, "b to subscribe again", timeout=10)
        await a.direct(alice, "bob", "after")
        await self.until(lambda: len(directs(bob_sees)) == 6, "the one after the reconnection")
        self.assertEqual(directs(bob_sees)[-1], ("alice", "bob", "after"))


@pytest.mark.redis
class TwoDaemonsDirectTests(TestCase):
    timeout = 30

    async def test_a_line_chat_user_and_a_websocket_user_on_two_daemons(self) -> None:
        redis = redisserver.start_redis(self)
        config = load(self, redis_config(redis.url, Path(self.mktemp()).resolve()))
        one = await start_tree(self, config)
        two = await start_tree(self, config)
        for tree in (one, two):
            assert tree.hub is not None and isinstance(tree.hub.engine, RedisEngine)
            await tree.hub.engine.when_connected(timeout=10)
        line = await chat_client(self, port_of(one, "chat"), "liner")
        web = await ws_connect(self, port_of(two, "websocket"), "/chat")
        await web.call("nick", nick="webby")
        self.assertEqual(await line.command("/dm webby across daemons"), ["OK dm webby"])
        event = await web.event("dm")
        self.assertEqual((event["from"], event["to"], event["text"]), ("liner", "webby", "across daemons"))
        await web.call("dm", nick="LINER", text="and back")
        self.assertEqual(await line.read_until("DM"), ["DM webby LINER and back"])
        reply = await web.request("dm", nick="nobody", text="x")
        self.assertEqual(reply["error"]["code"], "NICK_OFFLINE")
