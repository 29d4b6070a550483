"""The hub with fake subscribers and a Clock; history on a real SQLite database."""

from __future__ import annotations

import inspect
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from myservices.db.config import DatabaseConfig
from myservices.db import Database, DatabaseUnavailable
from myservices.errors import (
    NICK_INVALID,
    NICK_TAKEN,
    NOT_IN_ROOM,
    RATE_LIMITED,
    ROOM_INVALID,
    TEXT_INVALID,
    TOO_MANY_ROOMS,
    ErrorCode,
    RequestError,
)
from myservices.hub import (
    Event, HistoryRejected, HistoryStore, Hub, HubConfig, MemoryEngine, Message, NickChange, Presence, Session,
    Subscriber,
)
from myservices.hub.redis.storage import Once
from myservices.metrics import Metrics
from tests.support import memory_hub, run_now


class FakeSubscriber:
    def __init__(self, fail: bool = False) -> None:
        self.events: list[Event] = []
        self.closed_with: ErrorCode | None = None
        self.fail = fail

    def deliver(self, event: Event) -> None:
        if self.fail:
            raise RuntimeError("broken connection")
        self.events.append(event)

    def close(self, error: ErrorCode) -> None:
        self.closed_with = error

    def texts(self) -> list[str]:
        return [e.text for e in self.events if isinstance(e, Message)]


class HubTestsMixin:
    clock: Clock

    def make_hub(self, history: HistoryStore | None = None, **config: object) -> Hub:
        self.clock = Clock()
        return memory_hub(HubConfig(**config), self.clock, history=history)

    def attach(self, hub: Hub, sub: FakeSubscriber) -> Session:
        session = run_now(hub.open_session(Subscriber(sub.deliver, sub.close)))
        self.fakes[session] = sub
        return session

    def session(self, hub: Hub, nick: str | None = None, fail: bool = False) -> tuple[Session, FakeSubscriber]:
        sub = FakeSubscriber(fail)
        session = self.attach(hub, sub)
        if nick:
            run_now(hub.set_nick(session, nick))
        sub.events.clear()
        return session, sub

    @property
    def fakes(self) -> dict[Session, FakeSubscriber]:
        if not hasattr(self, "_fakes"):
            self._fakes: dict[Session, FakeSubscriber] = {}
        return self._fakes

    def assertRequestError(self, error: ErrorCode, f, *args, **kw) -> RequestError:
        try:
            result = f(*args, **kw)
        except RequestError as e:
            exc = e
        else:
            self.assertTrue(inspect.iscoroutine(result), "no RequestError raised")
            exc = self.failureResultOf(Deferred.fromCoroutine(result), RequestError).value
        self.assertEqual(exc.error, error)
        return exc


class HubTests(HubTestsMixin, TestCase):
    def run_(self, coro):
        return self.successResultOf(Deferred.fromCoroutine(coro))

    def test_publish_reaches_every_member_once_in_order_sender_included(self) -> None:
        hub = self.make_hub(publish_rate=1000, publish_burst=1000)
        members = [self.session(hub, f"user{i}") for i in range(3)]
        for session, _ in members:
            self.run_(hub.join(session, "lobby"))
        for _, sub in members:
            sub.events.clear()
        for i in range(10):
            self.run_(hub.publish(members[i % 3][0], "lobby", f"m{i}"))
        for _, sub in members:
            self.assertEqual(sub.texts(), [f"m{i}" for i in range(10)])
            self.assertEqual([e.id for e in sub.events], list(range(1, 11)))

    def test_a_failing_member_does_not_stop_delivery_to_the_others(self) -> None:
        hub = self.make_hub()
        alice, a = self.session(hub, "alice")
        broken, _ = self.session(hub, "broken", fail=False)
        bob, b = self.session(hub, "bob")
        for s in (alice, broken, bob):
            self.run_(hub.join(s, "lobby"))
        self.fakes[broken].fail = True
        self.run_(hub.publish(alice, "lobby", "still here"))
        self.assertEqual(a.texts(), ["still here"])
        self.assertEqual(b.texts(), ["still here"])
        self.assertNotIn(broken, hub.sessions.values())  # the broken one was detached and told to close
        self.assertEqual(self.fakes[broken].closed_with.code, "INTERNAL")
        self.assertEqual(self.run_(hub.who("lobby")), ["alice", "bob"])
        self.flushLoggedErrors(RuntimeError)

    def test_presence_join_and_part(self) -> None:
        hub = self.make_hub()
        alice, a = self.session(hub, "alice")
        bob, b = self.session(hub, "bob")
        self.run_(hub.join(alice, "lobby"))
        a.events.clear()
        self.run_(hub.join(bob, "lobby"))
        self.assertEqual([(e.kind, e.nick) for e in a.events], [("join", "bob")])
        self.assertEqual([(e.kind, e.nick) for e in b.events], [("join", "bob")])
        self.run_(hub.part(bob, "lobby"))
        self.assertEqual([(e.kind, e.nick) for e in a.events], [("join", "bob"), ("part", "bob")])
        self.assertEqual(self.run_(hub.who("lobby")), ["alice"])
        self.run_(hub.close_session(alice))
        self.assertEqual(hub.engine.rooms_by_name, {})  # an empty room is forgotten

    def test_join_and_part_say_whether_the_member_is_logged_in_to_an_account(self) -> None:
        hub = self.make_hub(churn_burst=100)
        alice, a = self.session(hub, "alice")
        bob, _ = self.session(hub)
        self.run_(hub.login(bob, "bob"))
        carol, _ = self.session(hub, "carol")
        self.run_(hub.join(alice, "lobby"))
        self.run_(hub.join(bob, "lobby"))
        self.run_(hub.join(carol, "lobby"))
        self.run_(hub.login(carol, "carol"))  # under the nick she had: nobody is told of a nick change
        self.run_(hub.part(bob, "lobby"))
        self.run_(hub.part(carol, "lobby"))
        self.run_(hub.join(carol, "lobby"))
        self.run_(hub.logout(carol))
        self.run_(hub.part(carol, "lobby"))
        guest = carol.nick
        self.assertEqual(
            [(type(e).__name__, getattr(e, "kind", ""), getattr(e, "nick", ""), getattr(e, "account", None))
             for e in a.events],
            [("Presence", "join", "alice", False), ("Presence", "join", "bob", True),
             ("Presence", "join", "carol", False), ("Presence", "part", "bob", True),
             ("Presence", "part", "carol", True), ("Presence", "join", "carol", True),
             ("NickChange", "", "", None), ("Presence", "part", guest, False)],
        )

    def test_join_sends_the_joiner_its_own_join(self) -> None:
        hub = self.make_hub()
        alice, a = self.session(hub, "alice")
        self.run_(hub.join(alice, "lobby"))
        self.assertEqual([(type(e), e.kind, e.nick) for e in a.events], [(Presence, "join", "alice")])

    def test_subscribers_receive_messages_without_presence(self) -> None:
        hub = self.make_hub()
        alice, a = self.session(hub, "alice")
        reader, r = self.session(hub)
        self.run_(hub.subscribe(reader, "news"))
        self.run_(hub.join(alice, "news"))
        self.run_(hub.publish(alice, "news", "hello"))
        self.assertEqual(r.texts(), ["hello"])
        self.assertEqual([type(e) for e in r.events], [Message])  # no JOIN seen
        self.assertEqual(self.run_(hub.who("news")), ["alice"])
        self.assertEqual([(r.name, r.members, r.subscribers) for r in self.run_(hub.rooms())], [("news", 1, 1)])

    def test_member_and_subscriber_receives_once(self) -> None:
        hub = self.make_hub()
        alice, a = self.session(hub, "alice")
        self.run_(hub.join(alice, "news"))
        self.run_(hub.subscribe(alice, "news"))
        a.events.clear()
        self.run_(hub.publish(alice, "news", "once"))
        self.assertEqual(a.texts(), ["once"])

    def test_topic_publish_needs_no_membership(self) -> None:
        hub = self.make_hub()
        writer, w = self.session(hub, "writer")
        reader, r = self.session(hub, "reader")
        self.run_(hub.subscribe(reader, "news"))
        message = self.run_(hub.publish(writer, "news", "extra", as_member=False))
        self.assertEqual(message.id, 1)
        self.assertEqual(r.texts(), ["extra"])
        self.assertEqual(w.events, [])
        self.assertRequestError(NOT_IN_ROOM, hub.publish, writer, "news", "as member")

    def test_nick_rules(self) -> None:
        hub = self.make_hub(max_nick_length=8)
        alice, _ = self.session(hub, "alice")
        other, _ = self.session(hub)
        for bad in ("", "1abc", "has space", "toolongnick", "é"):
            self.assertRequestError(NICK_INVALID, hub.set_nick, other, bad)
        error = self.assertRequestError(NICK_TAKEN, hub.set_nick, other, "ALICE")
        self.assertEqual(error.detail, 'nick "ALICE" is in use')
        self.run_(hub.set_nick(alice, "Alice"))  # changing your own case is fine
        self.run_(hub.close_session(alice))
        self.run_(hub.set_nick(other, "alice"))  # freed on disconnect

    def test_nick_change_reaches_the_user_and_its_rooms_once(self) -> None:
        hub = self.make_hub()
        alice, a = self.session(hub, "alice")
        bob, b = self.session(hub, "bob")
        loner, lone = self.session(hub, "loner")
        for room in ("one", "two"):
            self.run_(hub.join(alice, room))
            self.run_(hub.join(bob, room))
        a.events.clear()
        b.events.clear()
        self.run_(hub.set_nick(alice, "alicia"))
        self.assertEqual([(e.old, e.new) for e in a.events], [("alice", "alicia")])
        self.assertEqual([(e.old, e.new) for e in b.events if isinstance(e, NickChange)], [("alice", "alicia")])
        self.assertEqual(lone.events, [])
        self.assertEqual(self.run_(hub.who("one")), ["alicia", "bob"])

    def test_room_rules(self) -> None:
        hub = self.make_hub(max_room_length=10)
        self.assertEqual(hub.check_room("#Lobby"), "lobby")
        self.assertEqual(hub.check_room("a.b-c_1"), "a.b-c_1")
        for bad in ("", "#", "has space", "x" * 11, "-start", "ü"):
            self.assertRequestError(ROOM_INVALID, hub.check_room, bad)

    def test_publish_checks(self) -> None:
        hub = self.make_hub()
        alice, _ = self.session(hub, "alice")
        self.assertRequestError(NOT_IN_ROOM, hub.publish, alice, "lobby", "hi")
        self.run_(hub.join(alice, "lobby"))
        for bad in ("", "   ", "bell\x07", "esc\x1b[31m"):
            self.assertRequestError(TEXT_INVALID, hub.publish, alice, "lobby", bad)
        self.assertEqual(self.run_(hub.publish(alice, "lobby", "tab\tis fine")).text, "tab\tis fine")

    def test_rooms_per_session_limit(self) -> None:
        hub = self.make_hub(max_rooms_per_session=2)
        alice, _ = self.session(hub, "alice")
        self.run_(hub.join(alice, "one"))
        self.run_(hub.subscribe(alice, "two"))
        self.assertRequestError(TOO_MANY_ROOMS, hub.join, alice, "three")
        self.run_(hub.join(alice, "two"))  # already counted: allowed
        self.run_(hub.part(alice, "one"))
        self.run_(hub.join(alice, "three"))

    def test_publish_rate_limit_refills_with_time(self) -> None:
        hub = self.make_hub(publish_rate=2, publish_burst=3)
        alice, a = self.session(hub, "alice")
        self.run_(hub.join(alice, "lobby"))
        for i in range(3):
            self.run_(hub.publish(alice, "lobby", f"m{i}"))
        self.assertRequestError(RATE_LIMITED, hub.publish, alice, "lobby", "too fast")
        self.clock.advance(0.5)  # one token at 2 per second
        self.run_(hub.publish(alice, "lobby", "again"))
        self.assertRequestError(RATE_LIMITED, hub.publish, alice, "lobby", "too fast")
        self.assertEqual(a.texts(), ["m0", "m1", "m2", "again"])

    def test_join_returns_recent_history_snapshot(self) -> None:
        hub = self.make_hub(history_size=3, publish_burst=100)
        alice, _ = self.session(hub, "alice")
        self.run_(hub.join(alice, "lobby"))
        for i in range(5):
            self.run_(hub.publish(alice, "lobby", f"m{i}"))
        bob, _ = self.session(hub, "bob")
        history = self.run_(hub.join(bob, "lobby")).history
        self.assertEqual([(m.id, m.text) for m in history], [(3, "m2"), (4, "m3"), (5, "m4")])
        self.assertEqual([m.text for m in self.run_(hub.history("lobby", 2))], ["m3", "m4"])

    def test_join_since_returns_what_was_missed_or_says_there_is_a_gap(self) -> None:
        hub = self.make_hub(history_size=3, publish_burst=100)
        alice, _ = self.session(hub, "alice")
        self.run_(hub.join(alice, "lobby"))
        for i in range(5):
            self.run_(hub.publish(alice, "lobby", f"m{i}"))
        cases = {None: ([3, 4, 5], True), 5: ([], True), 4: ([5], True), 2: ([3, 4, 5], True),
                 1: ([3, 4, 5], False), 0: ([3, 4, 5], False), 9: ([], False)}
        for since, (ids, recovered) in cases.items():
            bob, _ = self.session(hub, f"bob{since}")
            joined = self.run_(hub.join(bob, "lobby", since))
            self.assertEqual(([m.id for m in joined.history], joined.recovered, joined.last_id), (ids, recovered, 5))
            topic = self.run_(hub.subscribe(bob, "lobby", since))
            self.assertEqual(([m.id for m in topic.history], topic.recovered, topic.members), (ids, recovered, []))

    def test_join_since_in_a_room_whose_window_is_not_full_recovers_everything(self) -> None:
        hub = self.make_hub(history_size=10)
        alice, _ = self.session(hub, "alice")
        self.run_(hub.join(alice, "lobby"))
        for i in range(3):
            self.run_(hub.publish(alice, "lobby", f"m{i}"))
        bob, _ = self.session(hub, "bob")
        joined = self.run_(hub.join(bob, "lobby", 0))
        self.assertEqual(([m.id for m in joined.history], joined.recovered), ([1, 2, 3], True))

    def test_each_event_is_encoded_once_per_wire_format(self) -> None:
        hub = self.make_hub()
        calls = []

        class Encoding(FakeSubscriber):
            def deliver(self, event: Event) -> None:
                event.encoded("line", lambda e: calls.append(e) or b"x")

        sessions = [self.attach(hub, Encoding()) for _ in range(50)]
        for s in sessions:
            self.run_(hub.join(s, "lobby"))
        calls.clear()
        self.run_(hub.publish(sessions[0], "lobby", "hello"))
        self.assertEqual(len(calls), 1)


    def test_text_that_is_not_valid_unicode_is_refused(self) -> None:
        hub = self.make_hub()
        alice, a = self.session(hub, "alice")
        self.run_(hub.join(alice, "lobby"))
        for text in ("\ud800", "a\udfffb", "x" + "\udc80" * 3):
            self.assertRequestError(TEXT_INVALID, hub.publish, alice, "lobby", text)
        self.assertEqual(self.run_(hub.publish(alice, "lobby", "ok \U0001f600 \u00e9")).id, 1)

    def test_an_event_one_format_cannot_encode_is_skipped_and_nobody_is_closed(self) -> None:
        hub = self.make_hub()
        attempts = []

        class Fragile(FakeSubscriber):
            def deliver(self, event: Event) -> None:
                def encode(e: Event) -> bytes:
                    attempts.append(e)
                    if isinstance(e, Message) and e.text == "bad":
                        raise UnicodeEncodeError("utf-8", "x", 0, 1, "surrogates not allowed")
                    return b"x"

                event.encoded("fragile", encode)
                self.events.append(event)

        fragile = [self.attach(hub, Fragile()) for _ in range(3)]
        plain, p = self.session(hub, "plain")
        for s in (*fragile, plain):
            self.run_(hub.join(s, "lobby"))
        attempts.clear()
        self.run_(hub.publish(plain, "lobby", "bad"))
        self.run_(hub.publish(plain, "lobby", "good"))
        self.assertEqual(p.texts(), ["bad", "good"])  # another format is not affected
        for s in fragile:
            self.assertEqual(self.fakes[s].texts(), ["good"])
            self.assertIsNone(self.fakes[s].closed_with)
            self.assertIn(s, hub.sessions.values())
        self.assertEqual(len(attempts), 2)  # tried once per event, not once per connection
        self.assertEqual(hub.metrics.registry.get_sample_value("myservices_hub_undeliverable_events_total"), 1)
        self.assertEqual(len(self.flushLoggedErrors(UnicodeEncodeError)), 1)


class HistoryTests(HubTestsMixin, TestCase):
    """History through a real SQLite database (the MariaDB run is in test_chat)."""

    async def database(self, url: str | None = None) -> Database:
        url = url or f"sqlite:///{Path(self.mktemp()).resolve()}/h.sqlite3"
        db = Database.from_config(DatabaseConfig(url=url), Path(self.mktemp()), reactor)
        db.startService()
        self.addCleanup(lambda: db.stopService() if db.running else None)
        await db.when_ready()
        return db

    def store(self, db: Database, clock: object = reactor, keep: int = 50, **kw: object) -> HistoryStore:
        options = dict(flush_interval=0, batch_size=500, max_backlog=1000)
        options.update(kw)
        return HistoryStore(db, clock, keep=keep, metrics=Metrics(), **options)

    def message(self, i: int, room: str = "lobby", text: str | None = None) -> Message:
        return Message(room=room, id=i, ts=float(i), nick="a", text=text or f"m{i}")

    async def test_a_commit_fires_only_once_stored_and_a_turn_shares_one_transaction(self) -> None:
        db = await self.database()
        clock = Clock()
        store = self.store(db, clock)
        committed = [store.commit(self.message(i)) for i in range(1, 4)]
        self.assertEqual(store.backlog, 3)
        self.assertEqual(await db.run(_count_txn), 0)  # nothing written before the next turn
        self.assertFalse(any(d.called for d in committed))
        clock.advance(0)
        for d in committed:
            await d
        self.assertEqual(await db.run(_count_txn), 3)
        self.assertEqual(db.metrics.registry.get_sample_value("myservices_db_query_seconds_count", {"operation": "write_messages"}), 1)
        self.assertEqual(store.backlog, 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    async def test_only_the_last_n_are_kept_but_the_last_id_is_never_forgotten(self) -> None:
        db = await self.database()
        store = self.store(db, keep=3)
        for i in range(1, 6):
            store.commit(self.message(i))
        await store.flush()
        self.assertEqual(await db.run(_count_txn), 3)
        last_id, loaded = await store.load("lobby", 50)
        self.assertEqual((last_id, [m.id for m in loaded]), (5, [3, 4, 5]))
        self.assertEqual(await store.load("elsewhere", 50), (0, []))

    async def test_database_down_fails_the_commit_and_writing_resumes_when_it_is_back(self) -> None:
        db = await self.database()
        store = self.store(db)
        db.stopService()  # the database is gone
        failed = store.commit(self.message(1))
        await store.flush()
        self.failureResultOf(failed, DatabaseUnavailable)
        db.startService()
        await db.when_ready()
        await store.commit(self.message(2))
        self.assertEqual(await db.run(_count_txn), 1)

    async def test_over_the_backlog_a_commit_fails_at_once(self) -> None:
        db = await self.database()
        store = self.store(db, max_backlog=3)
        waiting = [store.commit(self.message(i)) for i in range(1, 4)]
        self.failureResultOf(store.commit(self.message(4)), DatabaseUnavailable)
        self.assertEqual(store.metrics.registry.get_sample_value("myservices_history_dropped_messages_total"), 1)
        for d in waiting:
            await d
        self.assertEqual(await db.run(_count_txn), 3)

    async def test_one_bad_row_is_refused_alone_and_writing_goes_on(self) -> None:
        db = await self.database()
        # a row the database itself refuses, whatever the reason (a real constraint, not a mock)
        await db.run(_poison_trigger_txn)
        store = self.store(db)
        batch = [store.commit(self.message(1)), store.commit(self.message(2, text="poison")),
                 store.commit(self.message(3))]
        await store.flush()
        await batch[0]
        await batch[2]
        self.failureResultOf(batch[1], HistoryRejected)
        self.assertEqual(store.metrics.registry.get_sample_value("myservices_history_rejected_messages_total"), 1)
        await store.commit(self.message(4))
        last_id, loaded = await store.load("lobby", 50)
        self.assertEqual([m.id for m in loaded], [1, 3, 4])
        self.assertEqual(len(self.flushLoggedErrors()), 0)  # logged as an error line, not a traceback

    async def test_room_history_and_ids_survive_a_new_hub(self) -> None:
        """What a restart does: a new hub on the same database continues each room's ids."""
        db = await self.database()
        clock = Clock()
        hub = memory_hub(HubConfig(), clock, history=self.store(db))
        alice, _ = self.session(hub, "alice")
        await hub.join(alice, "lobby")
        for text in ("one", "two"):
            await hub.publish(alice, "lobby", text)

        hub2 = memory_hub(HubConfig(), clock, history=self.store(db))
        bob, _ = self.session(hub2, "bob")
        history = (await hub2.join(bob, "lobby")).history
        self.assertEqual([(m.id, m.nick, m.text) for m in history], [(1, "alice", "one"), (2, "alice", "two")])
        message = await hub2.publish(bob, "lobby", "three")
        self.assertEqual(message.id, 3)

    async def test_ids_survive_a_new_hub_with_history_off(self) -> None:
        db = await self.database()
        clock = Clock()
        for expected in (1, 2):
            hub = memory_hub(HubConfig(history_size=0), clock, history=self.store(db, keep=0))
            alice, _ = self.session(hub, "alice")
            self.assertEqual((await hub.join(alice, "lobby")).history, [])
            self.assertEqual((await hub.publish(alice, "lobby", "hi")).id, expected)
        self.assertEqual(await db.run(_count_txn), 0)

    async def test_a_message_is_delivered_only_once_committed(self) -> None:
        db = await self.database()
        clock = Clock()
        store = self.store(db, clock)
        hub = memory_hub(HubConfig(), clock, history=store)
        alice, a = self.session(hub, "alice")
        await hub.join(alice, "lobby")
        a.events.clear()
        published = Deferred.fromCoroutine(hub.publish(alice, "lobby", "hello"))
        self.assertEqual(a.texts(), [])
        self.assertNoResult(published)
        clock.advance(0)
        message = await published
        self.assertEqual((a.texts(), message.id), (["hello"], 1))

    async def test_with_the_database_down_publish_and_join_fail_clearly_and_deliver_nothing(self) -> None:
        db = await self.database()
        clock = Clock()
        hub = memory_hub(HubConfig(), clock, history=self.store(db))
        alice, a = self.session(hub, "alice")
        await hub.join(alice, "lobby")
        a.events.clear()
        db.stopService()
        with self.assertRaises(RequestError) as caught:
            await hub.publish(alice, "lobby", "lost?")
        self.assertEqual(caught.exception.error.code, "DATABASE_UNAVAILABLE")
        self.assertEqual(a.texts(), [])
        bob, _ = self.session(hub, "bob")
        with self.assertRaises(RequestError) as caught:
            await hub.join(bob, "other")
        self.assertEqual(caught.exception.error.code, "DATABASE_UNAVAILABLE")
        self.assertNotIn("other", hub.engine.rooms_by_name)  # loaded again on the next try
        db.startService()
        await db.when_ready()
        await hub.join(bob, "other")
        self.assertEqual((await hub.publish(alice, "lobby", "back")).id, 2)
        self.assertEqual(a.texts(), ["back"])

    async def test_an_id_whose_commit_failed_is_not_given_again_after_the_room_reloads(self) -> None:
        """A failed commit's outcome may be unknown (a timeout can still commit): its id stays used."""
        db = await self.database()
        clock = Clock()
        hub = memory_hub(HubConfig(), clock, history=self.store(db))
        alice, _ = self.session(hub, "alice")
        await hub.join(alice, "lobby")
        self.assertEqual((await hub.publish(alice, "lobby", "one")).id, 1)
        db.stopService()
        with self.assertRaises(RequestError):
            await hub.publish(alice, "lobby", "two?")  # id 2: not known to be stored
        await hub.part(alice, "lobby")
        self.assertNotIn("lobby", hub.engine.rooms_by_name)  # forgotten: the next join loads it again
        db.startService()
        await db.when_ready()
        await hub.join(alice, "lobby")
        self.assertEqual((await hub.publish(alice, "lobby", "three")).id, 3)

    async def test_history_of_a_room_nobody_is_in(self) -> None:
        db = await self.database()
        clock = Clock()
        hub = memory_hub(HubConfig(), clock, history=self.store(db))
        alice, _ = self.session(hub, "alice")
        await hub.publish(alice, "news", "archived", as_member=False)
        self.assertEqual(hub.engine.rooms_by_name, {})
        self.assertEqual([m.text for m in await hub.history("news")], ["archived"])

    async def test_unavailable_history_gives_a_clear_error(self) -> None:
        db = await self.database()
        clock = Clock()
        hub = memory_hub(HubConfig(), clock, history=self.store(db))
        db.stopService()
        with self.assertRaises(RequestError) as caught:
            await hub.history("news")
        self.assertEqual(caught.exception.error.code, "DATABASE_UNAVAILABLE")
        self.assertIsInstance(caught.exception.__cause__, DatabaseUnavailable)


def _poison_trigger_txn(txn) -> None:
    txn.execute(
        "CREATE TRIGGER poison BEFORE INSERT ON chat_messages WHEN NEW.text = 'poison'"
        " BEGIN SELECT RAISE(ABORT, 'poison row'); END"
    )


def _count_txn(txn) -> int:
    txn.execute("SELECT COUNT(*) FROM chat_messages")
    return txn.fetchone()[0]


class ClosedSessionTests(HubTestsMixin, TestCase):
    def test_a_closed_session_takes_no_nick(self) -> None:
        """A login that ends after its connection went away must not keep the account's nick forever."""
        hub = self.make_hub()
        gone, _ = self.session(hub)
        run_now(hub.close_session(gone))
        run_now(hub.set_nick(gone, "alice"))
        other, _ = self.session(hub)
        run_now(hub.set_nick(other, "alice"))  # free: the closed session did not take it
        self.assertEqual(other.nick, "alice")


class TwoHubTests(HubTestsMixin, TestCase):
    """Two hubs on one engine behave as one hub to their clients: they share nothing but the engine."""

    def run_(self, coro):
        return self.successResultOf(Deferred.fromCoroutine(coro))

    def hubs(self, history: HistoryStore | None = None, **config: object) -> tuple[Hub, Hub]:
        self.clock = Clock()
        cfg = HubConfig(**config)
        engine = MemoryEngine(cfg, self.clock, history=history)
        return Hub(cfg, self.clock, engine, node_id="a"), Hub(cfg, self.clock, engine, node_id="b")

    def test_messages_presence_and_who_cross_hubs_with_contiguous_ids(self) -> None:
        a, b = self.hubs(publish_burst=100)
        alice, alice_sees = self.session(a, "alice")
        bob, bob_sees = self.session(b, "bob")
        self.run_(a.join(alice, "lobby"))
        joined = self.run_(b.join(bob, "lobby"))
        self.assertEqual(joined.members, ["alice", "bob"])
        self.assertEqual([(e.kind, e.nick) for e in alice_sees.events], [("join", "alice"), ("join", "bob")])
        for i in range(6):
            self.run_((a if i % 2 else b).publish(alice if i % 2 else bob, "lobby", f"m{i}"))
        for seen in (alice_sees, bob_sees):
            self.assertEqual([(e.id, e.text) for e in seen.events if isinstance(e, Message)],
                             [(i + 1, f"m{i}") for i in range(6)])
        self.assertEqual(self.run_(a.who("lobby")), self.run_(b.who("lobby")))
        self.assertEqual([(r.name, r.members) for r in self.run_(b.rooms())], [("lobby", 2)])
        self.assertEqual([m.id for m in self.run_(b.history("lobby"))], [1, 2, 3, 4, 5, 6])
        self.run_(b.part(bob, "lobby"))
        self.assertEqual(alice_sees.events[-1].kind, "part")
        self.assertEqual(self.run_(a.who("lobby")), ["alice"])

    def test_nicks_are_unique_across_hubs_and_freed_by_either(self) -> None:
        a, b = self.hubs()
        alice, _ = self.session(a, "alice")
        other, _ = self.session(b)
        self.assertNotEqual(alice.nick, other.nick)
        self.assertRequestError(NICK_TAKEN, b.set_nick, other, "ALICE")
        guests = {self.session(h)[0].nick for h in (a, b, a, b)}
        self.assertEqual(len(guests), 4)  # guest nicks are unique across hubs too
        self.run_(a.close_session(alice))
        self.run_(b.set_nick(other, "alice"))

    def test_a_nick_change_reaches_members_on_the_other_hub_once(self) -> None:
        a, b = self.hubs()
        alice, alice_sees = self.session(a, "alice")
        bob, bob_sees = self.session(b, "bob")
        for room in ("one", "two"):
            self.run_(a.join(alice, room))
            self.run_(b.join(bob, room))
        bob_sees.events.clear()
        alice_sees.events.clear()
        self.run_(a.set_nick(alice, "alicia"))
        self.assertEqual([(e.old, e.new) for e in bob_sees.events], [("alice", "alicia")])
        self.assertEqual([(e.old, e.new) for e in alice_sees.events], [("alice", "alicia")])
        self.assertEqual(self.run_(b.who("two")), ["alicia", "bob"])

    def test_a_closed_session_leaves_its_rooms_for_the_other_hub(self) -> None:
        a, b = self.hubs()
        alice, _ = self.session(a, "alice")
        bob, bob_sees = self.session(b, "bob")
        self.run_(a.subscribe(alice, "news"))
        self.run_(a.join(alice, "lobby"))
        self.run_(b.join(bob, "lobby"))
        self.run_(a.close_session(alice))
        self.assertEqual((bob_sees.events[-1].kind, bob_sees.events[-1].nick), ("part", "alice"))
        self.assertEqual([(r.name, r.members, r.subscribers) for r in self.run_(b.rooms())], [("lobby", 1, 0)])


class JoinWhileLoadingTests(HubTestsMixin, TestCase):
    """A room's history load and live deliveries never interleave wrongly: no duplicate, no gap."""

    async def test_messages_published_while_a_room_loads_reach_the_joiner_once(self) -> None:
        db = await HistoryTests.database(self)  # type: ignore[arg-type]
        cfg = HubConfig(publish_burst=100)
        engine = MemoryEngine(cfg, reactor, history=HistoryTests.store(self, db))  # type: ignore[arg-type]
        a, b = Hub(cfg, reactor, engine, node_id="a"), Hub(cfg, reactor, engine, node_id="b")
        writer, _ = self.session(a, "writer")
        for i in range(3):
            await a.publish(writer, "lobby", f"old{i}", as_member=False)
        engine.rooms_by_name.clear()  # as after a restart: the next use loads the room again
        bob, bob_sees = self.session(b, "bob")
        joining = Deferred.fromCoroutine(b.join(bob, "lobby"))
        publishing = [Deferred.fromCoroutine(a.publish(writer, "lobby", f"new{i}", as_member=False)) for i in range(3)]
        self.assertNoResult(joining)  # the room is still loading
        joined = await joining
        for d in publishing:
            await d
        live = [e.text for e in bob_sees.events if isinstance(e, Message)]
        self.assertEqual([m.text for m in joined.history] + live, ["old0", "old1", "old2", "new0", "new1", "new2"])


class OnceTests(TestCase):
    """Publishes waiting for one seed or reservation of a room resume in the order they were made."""

    def test_callers_resume_in_the_order_they_called_the_first_first(self) -> None:
        once = Once()
        db: Deferred[None] = Deferred()
        sent: list[str] = []

        async def reserve() -> None:
            await db

        async def publish(name: str) -> None:  # the retry part of RedisEngine.publish
            await once.run("room", reserve)
            sent.append(name)  # stands for the retried EVAL, which takes the id

        async def later(name: str) -> None:  # a publish made while the reservation runs: waits behind it
            d = once.join("room")
            if d is not None:
                await d
            sent.append(name)

        Deferred.fromCoroutine(publish("line 1"))
        Deferred.fromCoroutine(publish("line 2"))
        Deferred.fromCoroutine(later("line 3"))
        db.callback(None)
        self.assertEqual(sent, ["line 1", "line 2", "line 3"])
        self.assertIsNone(once.join("room"))  # nothing running any more

    def test_a_failed_run_fails_every_caller(self) -> None:
        once = Once()
        db: Deferred[None] = Deferred()

        async def reserve() -> None:
            await db

        first = Deferred.fromCoroutine(once.run("room", reserve))
        second = Deferred.fromCoroutine(once.run("room", reserve))
        db.errback(RuntimeError("the database is away"))
        self.failureResultOf(first, RuntimeError)
        self.failureResultOf(second, RuntimeError)
