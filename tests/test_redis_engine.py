"""The Redis engine against a real, private redis-server: two hubs, each on its own engine, are two processes.

Every test starts its own redis-server (tests/redisserver.py) and one SQLite
database the two "processes" share, on the real reactor. Faults are real:
the server is killed and restarted empty, or frozen with SIGSTOP.
"""

from __future__ import annotations

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults

from myservices.errors import DATABASE_UNAVAILABLE, ENGINE_UNAVAILABLE, NICK_TAKEN, RequestError
from myservices.hub import Message, NickChange
from myservices.hub.redis import scripts
from myservices.hub.redis.codec import decode, message_prefix
from tests.redishubs import TIMEOUT, FlakyStore, RedisHubs


@pytest.mark.redis
class RedisEngineTests(RedisHubs):
    # --- the contract, across processes -----------------------------------------------------------------

    async def test_messages_presence_and_who_cross_processes_with_contiguous_ids(self) -> None:
        a, b = await self.start()
        alice, alice_sees = await self.session(a, "alice")
        bob, bob_sees = await self.session(b, "bob")
        await a.join(alice, "lobby")
        joined = await b.join(bob, "lobby")
        self.assertEqual(joined.members, ["alice", "bob"])
        await self.until(lambda: alice_sees.presence() == [("join", "alice"), ("join", "bob")], "bob's JOIN")
        for i in range(6):
            hub, session = (a, alice) if i % 2 else (b, bob)
            self.assertEqual((await hub.publish(session, "lobby", f"m{i}")).id, i + 1)
        for seen in (alice_sees, bob_sees):
            await self.until(lambda: len(seen.ids()) == 6, "six messages")
            self.assertEqual([(e.id, e.text) for e in seen.events if isinstance(e, Message)],
                             [(i + 1, f"m{i}") for i in range(6)])
        self.assertEqual(await a.who("lobby"), await b.who("lobby"))
        self.assertEqual([(r.name, r.members, r.subscribers) for r in await b.rooms()], [("lobby", 2, 0)])
        self.assertEqual([m.id for m in await b.history("lobby")], [1, 2, 3, 4, 5, 6])
        await b.part(bob, "lobby")
        self.assertEqual(bob_sees.presence()[-1], ("part", "bob"))  # the leaver's own PART, before part returned
        await self.until(lambda: alice_sees.presence()[-1] == ("part", "bob"), "bob's PART")
        self.assertEqual(await a.who("lobby"), ["alice"])
        await self.until(lambda: len(self.engine(b).feeds.rooms()) == 0, "b to unsubscribe from lobby")
        self.assertEqual(await self.stored(), [(i + 1, f"m{i}") for i in range(6)])

    async def test_join_and_part_say_whether_the_member_is_logged_in_to_an_account(self) -> None:
        a, b = await self.start(churn_burst=100)
        alice, alice_sees = await self.session(a, "alice")
        await a.join(alice, "lobby")
        bob, _ = await self.session(b)
        await b.login(bob, "bob")
        carol, _ = await self.session(b, "carol")
        dave, _ = await self.session(b, "dave2")
        for session in (bob, carol, dave):
            await b.join(session, "lobby")
        await b.login(carol, "carol")  # under the nick she had: only her account flag changes
        await b.login(dave, "dave")  # renamed: his flag changes with his nick
        for session in (bob, carol, dave):
            await b.part(session, "lobby")
        await b.join(carol, "lobby")
        await b.logout(carol)
        guest = carol.nick
        await b.part(carol, "lobby")
        expected = [("join", "alice", False), ("join", "bob", True), ("join", "carol", False),
                    ("join", "dave2", False), ("part", "bob", True), ("part", "carol", True), ("part", "dave", True),
                    ("join", "carol", True), ("part", guest, False)]
        await self.until(lambda: len(alice_sees.accounts()) == len(expected), "the JOINs and PARTs")
        self.assertEqual(alice_sees.accounts(), expected)
        self.assertEqual([e for e in alice_sees.events if isinstance(e, NickChange)
                          and e.old == e.new], [])  # carol's login told nobody of a nick change

    async def test_old_presence_events_without_the_account_flag_decode_as_a_guest_s(self) -> None:
        event, _, _ = decode('{"t": "part", "room": "lobby", "nick": "alice"}')
        self.assertEqual((event.kind, event.nick, event.account), ("part", "alice", False))
        event, _, _ = decode('{"t": "join", "room": "lobby", "nick": "alice", "a": true, "m": "x"}')
        self.assertEqual((event.kind, event.account), ("join", True))

    async def test_subscribers_receive_messages_without_presence_and_count_in_rooms(self) -> None:
        a, b = await self.start()
        writer, _ = await self.session(a, "writer")
        reader, reader_sees = await self.session(b, "reader")
        topic = await b.subscribe(reader, "news")
        self.assertEqual((topic.members, topic.history, topic.last_id), ([], [], 0))
        await a.publish(writer, "news", "one", as_member=False)
        await self.until(lambda: reader_sees.texts() == ["one"], "the publication")
        self.assertEqual(reader_sees.presence(), [])
        self.assertEqual([(r.name, r.members, r.subscribers) for r in await a.rooms()], [("news", 0, 1)])
        await b.unsubscribe(reader, "news")
        self.assertEqual(await a.rooms(), [])

    async def test_nicks_are_unique_across_processes_ignoring_case_and_freed_by_either(self) -> None:
        a, b = await self.start()
        alice, _ = await self.session(a, "alice")
        other, _ = await self.session(b)
        self.assertNotEqual(alice.nick, other.nick)
        with self.assertRaises(RequestError) as caught:
            await b.set_nick(other, "ALICE")
        self.assertEqual(caught.exception.error, NICK_TAKEN)
        guests = {(await self.session(h))[0].nick for h in (a, b, a, b)}
        self.assertEqual(len(guests), 4)  # guest numbers are unique across processes
        await a.close_session(alice)
        await b.set_nick(other, "alice")
        self.assertEqual(other.nick, "alice")

    async def test_a_nick_change_reaches_members_on_the_other_process_once(self) -> None:
        a, b = await self.start()
        alice, alice_sees = await self.session(a, "alice")
        bob, bob_sees = await self.session(b, "bob")
        for room in ("one", "two"):
            await a.join(alice, room)
            await b.join(bob, room)
        await self.until(lambda: len(alice_sees.presence()) == 4, "the JOINs")
        bob_sees.events.clear()
        alice_sees.events.clear()
        await a.set_nick(alice, "alicia")
        self.assertEqual([(e.old, e.new) for e in alice_sees.events], [("alice", "alicia")])
        await self.until(lambda: bool(bob_sees.events), "the nick change")
        self.assertEqual([(e.old, e.new) for e in bob_sees.events if isinstance(e, NickChange)], [("alice", "alicia")])
        self.assertEqual(await b.who("two"), ["alicia", "bob"])

    async def test_a_closed_session_leaves_its_rooms_for_the_other_process(self) -> None:
        a, b = await self.start()
        alice, _ = await self.session(a, "alice")
        bob, bob_sees = await self.session(b, "bob")
        await a.subscribe(alice, "news")
        await a.join(alice, "lobby")
        await b.join(bob, "lobby")
        await a.close_session(alice)
        await self.until(lambda: bob_sees.presence()[-1:] == [("part", "alice")], "alice's PART")
        self.assertEqual([(r.name, r.members, r.subscribers) for r in await b.rooms()], [("lobby", 1, 0)])

    async def test_joiners_racing_publishes_get_each_message_exactly_once(self) -> None:
        a, b = await self.start()
        writer, _ = await self.session(a, "writer")
        await a.join(writer, "lobby")
        joiners = [await self.session(b, f"j{i}") for i in range(5)]
        publishing: list[Deferred[Message]] = []
        joining = []
        for i in range(100):
            publishing.append(Deferred.fromCoroutine(a.publish(writer, "lobby", f"m{i}")))
            if i % 20 == 10:
                session, seen = joiners[len(joining)]
                joining.append((Deferred.fromCoroutine(b.join(session, "lobby")), seen))
        await gatherResults(publishing)
        ids = [m.id for m in [d.result for d in publishing]]  # type: ignore[attr-defined]
        self.assertEqual(sorted(ids), list(range(1, 101)))
        for d, seen in joining:
            joined = await d
            await self.until(lambda: 100 in seen.ids(), "the last message")
            got = [m.id for m in joined.history] + seen.ids()
            self.assertEqual(got, list(range(got[0], 101)), "each message once, in order, none missing")
            self.assertEqual(seen.ids()[0] if seen.ids() else joined.last_id + 1, joined.last_id + 1)

    async def test_join_since_recovers_from_the_stream_or_says_there_is_a_gap(self) -> None:
        a, b = await self.start(history_size=3)
        alice, _ = await self.session(a, "alice")
        await a.join(alice, "lobby")
        for i in range(5):
            await a.publish(alice, "lobby", f"m{i}")
        cases = {None: ([3, 4, 5], True), 5: ([], True), 4: ([5], True), 2: ([3, 4, 5], True),
                 1: ([3, 4, 5], False), 0: ([3, 4, 5], False), 9: ([], False)}
        for since, (ids, recovered) in cases.items():
            bob, _ = await self.session(b, f"bob{since}")
            joined = await b.join(bob, "lobby", since)
            self.assertEqual(([m.id for m in joined.history], joined.recovered, joined.last_id), (ids, recovered, 5))
            topic = await b.subscribe(bob, "lobby", since)
            self.assertEqual(([m.id for m in topic.history], topic.recovered, topic.members), (ids, recovered, []))

    async def test_join_since_older_than_the_stream_is_recovered_from_the_database(self) -> None:
        a, = await self.start(1, history_size=10)
        alice, _ = await self.session(a, "alice")
        for i in range(4):
            await a.publish(alice, "lobby", f"m{i}", as_member=False)
        self.redis.restart()  # the stream is gone; the database has the four messages
        bob, _ = await self.retrying(lambda: self.session(a, "bob"))
        joined = await self.retrying(lambda: a.join(bob, "lobby", 1))  # the subscriber may be reconnecting still
        self.assertEqual(([m.id for m in joined.history], joined.recovered), ([2, 3, 4], True))
        # the room continues after the ids the database had reserved (a gap of at most id_block): none reused
        self.assertEqual(joined.last_id, self.config.id_block)
        message = await a.publish(bob, "lobby", "after")
        self.assertEqual(message.id, self.config.id_block + 1)

    async def test_a_process_that_stops_refreshing_loses_its_members_within_the_ttl(self) -> None:
        a, b = await self.start(presence_ttl=0.6)
        alice, _ = await self.session(a)
        await a.login(alice, "alice")
        bob, bob_sees = await self.session(b, "bob")
        await a.join(alice, "lobby")
        await b.join(bob, "lobby")
        crashed = self.engine(a)
        crashed._tick.stop()  # as a process that died: nothing of it is refreshed any more
        crashed.subscriber.stop()
        start = reactor.seconds()
        await self.until(lambda: ("part", "alice") in bob_sees.presence(), "alice's PART", timeout=5)
        self.assertIn(("part", "alice", True), bob_sees.accounts())  # the reaper knew she was an account's
        self.assertLess(reactor.seconds() - start, 0.6 + 0.2 + 1.0)  # the ttl, one refresh period, a margin
        self.assertEqual(await b.who("lobby"), ["bob"])
        other, _ = await self.session(b)
        await b.set_nick(other, "alice")  # her nick expired with her

    # --- faults ---------------------------------------------------------------------------------

    async def test_redis_killed_and_restarted_empty_mid_chat_reuses_no_id_and_loses_no_message(self) -> None:
        a, b = await self.start(id_block=10)
        alice, alice_sees = await self.session(a, "alice")
        bob, bob_sees = await self.session(b, "bob")
        await a.join(alice, "lobby")
        await b.join(bob, "lobby")
        await b.login(bob, "bob")  # his presence is an account's now, and stays so when it is restored
        acknowledged = []
        for i in range(15):
            hub, session = (a, alice) if i % 2 else (b, bob)
            acknowledged.append(await hub.publish(session, "lobby", f"before{i}"))
        self.redis.restart()
        for i in range(15):
            hub, session = (a, alice) if i % 2 else (b, bob)
            acknowledged.append(await self.publish_retrying(hub, session, f"after{i}"))
        ids = [m.id for m in acknowledged]
        self.assertEqual(ids, sorted(set(ids)), "ids only increase, none is given twice")
        self.assertGreater(ids[15], 20)  # past the block reserved in the database before the loss
        await self.until(lambda: bob_sees.texts()[-1:] == ["after14"], "the last message at bob")
        for seen in (alice_sees, bob_sees):
            await self.until(lambda: seen.texts()[-1:] == ["after14"], "the last message")
            self.assertEqual(seen.ids(), sorted(set(seen.ids())))
            self.assertEqual(seen.texts()[-15:], [f"after{i}" for i in range(15)])
        self.assertEqual(await self.stored(), [(m.id, m.text) for m in acknowledged])
        # presence and nicks are back in the new Redis (each process restored its own on reconnecting)
        self.assertEqual(sorted(await a.who("lobby")), ["alice", "bob"])
        other, _ = await self.session(a)
        with self.assertRaises(RequestError) as caught:
            await a.set_nick(other, "Bob")
        self.assertEqual(caught.exception.error, NICK_TAKEN)
        await b.part(bob, "lobby")
        await self.until(lambda: alice_sees.accounts()[-1:] == [("part", "bob", True)], "bob's PART, an account's")

    async def test_frozen_redis_answers_engine_unavailable_in_time_and_everything_resumes(self) -> None:
        a, b = await self.start()
        alice, _ = await self.session(a, "alice")
        bob, bob_sees = await self.session(b, "bob")
        await a.join(alice, "lobby")
        await b.join(bob, "lobby")
        await a.publish(alice, "lobby", "before")
        await self.until(lambda: bob_sees.texts() == ["before"], "the first message")
        carol, _ = await self.session(a, "carol")
        for room in ("lobby", "one", "two"):
            await a.join(carol, room)
        await a.subscribe(carol, "news")
        self.redis.freeze()
        self.addCleanup(self.redis.thaw)
        start = reactor.seconds()
        with self.assertRaises(RequestError) as caught:
            await a.publish(alice, "lobby", "frozen")
        self.assertEqual(caught.exception.error, ENGINE_UNAVAILABLE)
        self.assertLess(reactor.seconds() - start, TIMEOUT + 0.5)
        self.assertIn(alice, a.sessions.values())  # the connection stays
        start = reactor.seconds()
        await a.close_session(carol)  # a client leaving meanwhile: nothing hangs, its presence expires
        self.assertLess(reactor.seconds() - start, 2 * TIMEOUT + 0.5)
        self.assertNotIn(carol, a.sessions.values())
        self.assertEqual(self.engine(a).presence.count, 1)  # alice's membership only: carol's is not refreshed
        await self.until(lambda: self.engine(a).health() != "ok", "/readyz to say the engine is unavailable")
        self.redis.thaw()
        message = await self.publish_retrying(a, alice, "thawed")
        await self.until(lambda: bob_sees.texts()[-1:] == ["thawed"], "the message after the thaw")
        self.assertEqual(bob_sees.ids(), sorted(set(bob_sees.ids())))
        self.assertEqual(message.id, bob_sees.ids()[-1])
        await self.until(lambda: self.engine(a).health() == "ok", "the engine to be healthy")

    async def test_messages_published_while_a_process_was_disconnected_are_caught_up(self) -> None:
        a, b = await self.start()
        alice, _ = await self.session(a, "alice")
        bob, bob_sees = await self.session(b, "bob")
        await a.join(alice, "lobby")
        await b.join(bob, "lobby")
        sub = self.engine(b).subscriber
        sub.conn.transport.abortConnection()  # bob's process stops hearing the channel for a while
        for i in range(5):
            await a.publish(alice, "lobby", f"m{i}")
        await self.until(lambda: bob_sees.texts() == [f"m{i}" for i in range(5)], "the catch-up")
        self.assertEqual(bob_sees.ids(), [1, 2, 3, 4, 5])

    async def test_a_message_delivered_but_never_saved_is_saved_by_the_sweep_at_start(self) -> None:
        a, = await self.start(1)
        alice, _ = await self.session(a, "alice")
        await a.publish(alice, "lobby", "saved", as_member=False)
        # a process that crashed right after Redis delivered its message, before committing it
        engine = self.engine(a)
        prefix = message_prefix("lobby", 1.0, "ghost", "never saved")
        msg_id = await engine.commands.eval(scripts.PUBLISH, [engine.prefix, "lobby", 50, prefix])
        self.assertEqual(await self.stored(), [(1, "saved")])
        restarted, = await self.start(1)
        await self.until(lambda: self.engine(restarted).storage.swept, "the sweep")
        self.assertEqual(await self.stored(), [(1, "saved"), (msg_id, "never saved")])
        swept = self.engine(restarted).metrics.registry.get_sample_value("myservices_history_swept_messages_total")
        self.assertEqual(swept, 1.0)

    async def test_a_failing_database_refuses_first_and_a_commit_failing_after_delivery_is_saved_late(self) -> None:
        a, b = await self.start()
        alice, _ = await self.session(a, "alice")
        bob, bob_sees = await self.session(b, "bob")
        await a.join(alice, "lobby")
        await b.join(bob, "lobby")
        store = self.engine(a).store
        assert isinstance(store, FlakyStore)
        store.refuse = True
        with self.assertRaises(RequestError) as caught:
            await a.publish(alice, "lobby", "refused")
        self.assertEqual(caught.exception.error, DATABASE_UNAVAILABLE)
        store.refuse, store.fail_commits = False, True
        message = await a.publish(alice, "lobby", "kept")  # delivered already: acknowledged, kept to be saved
        self.assertEqual(message.id, 1)  # the refused one took no id: Redis never saw it
        await self.until(lambda: bob_sees.texts() == ["kept"], "the message at bob")
        self.assertEqual(await self.stored(), [])
        metrics = self.engine(a).metrics.registry
        self.assertEqual(metrics.get_sample_value("myservices_history_deferred_messages_total"), 1.0)
        store.fail_commits = False
        await self.engine(a)._periodic()
        self.assertEqual(await self.stored(), [(1, "kept")])
        self.assertEqual(self.engine(a).storage.unsaved, [])
