"""Faults of the Redis engine found in review, each against a real redis-server (tests/redishubs.py)."""

from __future__ import annotations

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from myservices.errors import DATABASE_UNAVAILABLE, RequestError
from tests.redishubs import RedisHubs


@pytest.mark.redis
class RedisReviewTests(RedisHubs):
    async def test_publishing_works_again_once_the_database_is_back_after_a_failed_commit(self) -> None:
        # a real outage of the database: its commit fails after delivery, the history writer notes it failing
        a, = await self.start(1)
        alice, _ = await self.session(a, "alice")
        await a.join(alice, "lobby")
        await a.publish(alice, "lobby", "first")
        await self.db.stopService()
        kept = await a.publish(alice, "lobby", "kept")  # delivered, acknowledged, kept to be written late
        with self.assertRaises(RequestError) as caught:
            await a.publish(alice, "lobby", "refused")
        self.assertEqual(caught.exception.error, DATABASE_UNAVAILABLE)
        self.db.startService()
        await self.db.when_ready()
        await self.engine(a)._periodic()  # the late save: the database answers again
        self.assertEqual(await self.stored(), [(1, "first"), (kept.id, "kept")])
        after = await a.publish(alice, "lobby", "after")  # was refused for good: nothing cleared the failure
        self.assertEqual(after.id, kept.id + 1)

    async def test_messages_published_during_a_network_blip_reach_the_other_process_in_order(self) -> None:
        # both of b's connections drop at once (a network blip); a keeps publishing meanwhile
        a, b = await self.start()
        alice, _ = await self.session(a, "alice")
        bob, bob_sees = await self.session(b, "bob")
        await a.join(alice, "lobby")
        await b.join(bob, "lobby")
        engine = self.engine(b)
        slow = engine.commands._factory  # its backoff is longer: the subscriber connection is back first
        slow.initialDelay = slow.maxDelay = 1.0
        engine.subscriber.conn.transport.abortConnection()
        engine.commands.conn.transport.abortConnection()
        for i in range(5):
            await a.publish(alice, "lobby", f"during{i}")
        await self.until(lambda: engine.subscriber.ready, "b's subscriber connection")
        await self.until(lambda: all(f.confirmed for f in engine.feeds.feeds.values()), "b to resubscribe")
        self.assertFalse(engine.commands.ready)
        for i in range(5):
            await a.publish(alice, "lobby", f"after{i}")  # live at b, while b cannot read the stream yet
        expected = [f"during{i}" for i in range(5)] + [f"after{i}" for i in range(5)]
        await self.until(lambda: len(bob_sees.texts()) >= 10, "every message at bob")
        self.assertEqual(bob_sees.texts(), expected)
        self.assertEqual(bob_sees.ids(), list(range(1, 11)))

    async def test_a_join_while_its_feed_catches_up_misses_no_message_under_publishes_from_another_process(self) -> None:
        a, b = await self.start(history_size=1000)  # the stream holds every message of the outage
        alice, _ = await self.session(a, "alice")
        bob, bob_sees = await self.session(b, "bob")
        carol, carol_sees = await self.session(b, "carol")
        await a.join(alice, "lobby")
        await b.join(bob, "lobby")
        engine = self.engine(b)
        slow = engine.commands._factory  # the subscriber connection is back first, the stream readable later
        slow.initialDelay = slow.maxDelay = 0.3
        engine.subscriber.conn.transport.abortConnection()
        engine.commands.conn.transport.abortConnection()
        published: list[int] = []
        done: list[bool] = []

        async def publishing() -> None:
            while not done:
                published.append((await a.publish(alice, "lobby", f"m{len(published)}")).id)
                await deferLater(reactor, 0.002, lambda: None)

        publisher = Deferred.fromCoroutine(publishing())
        await self.until(lambda: engine.subscriber.ready, "b's subscriber connection")
        joined = await self.retrying(lambda: b.join(carol, "lobby"))  # while b's feed catches up
        await self.until(lambda: len(published) > joined.last_id + 20, "messages after the join")
        done.append(True)
        await publisher
        last = published[-1]
        await self.until(lambda: last in carol_sees.ids() and last in bob_sees.ids(), "the last message")
        got = [m.id for m in joined.history] + carol_sees.ids()
        self.assertEqual(got, list(range(got[0], last + 1)), "each message once, in order, none missing")
        self.assertEqual(bob_sees.ids(), list(range(1, last + 1)))

    async def test_a_process_whose_members_were_reaped_announces_them_again_when_it_refreshes(self) -> None:
        # a process stalled past the ttl (its refresh stopped): its member is reaped and the others see her PART
        a, b = await self.start(presence_ttl=0.6)
        alice, alice_sees = await self.session(a, "alice")
        bob, bob_sees = await self.session(b, "bob")
        await a.join(alice, "lobby")
        await b.join(bob, "lobby")
        stalled = self.engine(a)
        stalled._tick.stop()
        await self.until(lambda: ("part", "alice") in bob_sees.presence(), "alice's PART")
        self.assertEqual(await b.who("lobby"), ["bob"])
        await stalled._periodic()  # it runs again: alice is still connected and in the room there
        self.assertEqual(sorted(await b.who("lobby")), ["alice", "bob"])
        # whoever was told she left is told she is back (she was told of her own PART too)
        await self.until(lambda: bob_sees.presence()[-1:] == [("join", "alice")], "alice's JOIN again")
        await self.until(lambda: alice_sees.presence()[-1:] == [("join", "alice")], "alice's own JOIN again")

    async def test_the_id_gap_after_redis_lost_its_data_does_not_trim_the_history_in_the_database(self) -> None:
        # Redis restarted empty: the room continues after the ids the database reserved (a gap of up to id_block);
        # the database still keeps the room's last history_size messages, those before the gap included
        a, = await self.start(1, history_size=5)
        alice, _ = await self.session(a, "alice")
        await a.join(alice, "lobby")
        before = [await a.publish(alice, "lobby", f"before{i}") for i in range(3)]
        self.redis.restart()
        after = await self.publish_retrying(a, alice, "after")
        self.assertGreater(after.id, before[-1].id + 5)  # past the reserved block: a gap longer than history_size
        self.assertEqual(await self.stored(), [(m.id, m.text) for m in before] + [(after.id, "after")])
        history = await a.history("lobby", 5)
        self.assertEqual([m.text for m in history], ["before0", "before1", "before2", "after"])
