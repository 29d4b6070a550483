"""The room policy: rules by pattern, private rooms, bans, closed rooms, the cache; kicks through the hub.

The hub runs on its memory engine with a Clock; the policy's tables live in
an in-memory SQLite database run synchronously (the same transaction bodies
the daemon runs in its pool), so every test is deterministic and counts the
queries a check costs.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from myservices.db.migrations import MIGRATIONS, migrate_txn
from myservices.db.pool import Txn
from myservices.errors import FORBIDDEN, DatabaseUnavailable, NOT_FOUND, QUOTA_EXCEEDED, UNAUTHENTICATED, RequestError
from myservices.hub import Hub, HubConfig, MemoryEngine, Presence, Session, Subscriber
from myservices.hub.moderation import Moderation
from myservices.hub.policy import RoomPolicies
from myservices.hub.policy_config import RoomsConfig, parse_rules
from tests.redishubs import Seen
from tests.support import load, run_now


class SyncDatabase:
    """C{run(txn_fn, *args)} on an in-memory SQLite database, at once; counts the transactions."""

    def __init__(self) -> None:
        self.conn = sqlite3.connect(":memory:", isolation_level=None)
        self.runs: list[str] = []
        txn = Txn(self.conn.cursor(), "sqlite")
        migrate_txn(txn, MIGRATIONS)
        self.conn.execute("COMMIT")

    def run(self, fn: Any, *args: Any) -> Deferred[Any]:
        self.runs.append(fn.__name__)
        try:
            return succeed(fn(Txn(self.conn.cursor(), "sqlite"), *args))
        except Exception:
            return fail()

    def account(self, username: str) -> None:
        self.conn.execute(
            "INSERT INTO accounts (username, password_hash, created_at) VALUES (?, 'x', 0)", (username,)
        )


class Sub(Seen):
    def kicks(self) -> list[Presence]:
        return [e for e in self.events if isinstance(e, Presence) and e.kind == "kick"]


def forbidden(testcase: TestCase, coroutine: Any, code: Any = FORBIDDEN) -> RequestError:
    with testcase.assertRaises(RequestError) as caught:
        run_now(coroutine)
    testcase.assertEqual(caught.exception.error, code, caught.exception)
    return caught.exception


RULES = [
    {"pattern": "staff-*", "join": "accounts", "subscribe": "accounts", "publish": "admins", "read": ["carol"]},
    {"pattern": "vip-*", "join": ["carol"]},
    {"pattern": "*-news", "publish": ["dave", "Erin"]},
]


class PolicyTestsMixin:
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.db = SyncDatabase()
        for name in ("alice", "bob", "carol", "dave", "root"):
            self.db.account(name)
        self.make()

    def make(self, **rooms: Any) -> None:
        options: dict[str, Any] = {"admins": ("root",), "rules": parse_rules(RULES), "cache_ttl": 5.0}
        options.update(rooms)
        self.policies = RoomPolicies(RoomsConfig(**options), self.db, self.clock)  # type: ignore[arg-type]
        self.engine = MemoryEngine(HubConfig(), self.clock)
        self.hub = self.new_hub("a")
        self.moderation = self.hub.moderation

    def new_hub(self, node: str) -> Hub:
        hub = Hub(HubConfig(publish_rate=1e6, publish_burst=1_000_000), self.clock, self.engine, node_id=node,
                  policy=self.policies)
        hub.moderation = Moderation(hub, self.policies)
        return hub

    def user(self, account: str | None = None, nick: str | None = None, hub: Hub | None = None) -> tuple[Session, Sub]:
        sub = Sub()
        hub = hub or self.hub
        session = run_now(hub.open_session(Subscriber(sub.deliver, sub.close)))
        if account is not None:
            run_now(hub.login(session, account))
        else:
            run_now(hub.set_nick(session, nick or session.nick))
        return session, sub


class RuleTests(PolicyTestsMixin, TestCase):
    def test_rules_by_pattern_first_match_wins(self) -> None:
        anon, _ = self.user()
        alice, _ = self.user("alice")
        carol, _ = self.user("carol")
        root, _ = self.user("root")
        forbidden(self, self.hub.join(anon, "staff-room"))
        forbidden(self, self.hub.subscribe(anon, "staff-room"))
        self.assertEqual(self.db.runs, [])  # a rule that refuses costs no query
        run_now(self.hub.join(alice, "staff-room"))
        error = forbidden(self, self.hub.publish(alice, "staff-room", "hi"))
        self.assertIn("publish", error.detail)
        forbidden(self, self.hub.who("staff-room", by=alice))
        forbidden(self, self.hub.history("staff-room", by=alice))
        self.assertEqual(run_now(self.hub.who("staff-room", by=carol)), ["alice"])  # read: only carol
        run_now(self.hub.publish(root, "staff-room", "from an admin", as_member=False))  # admins may do anything
        # "*-news": publish only for dave (names compare in lower case); other actions open
        run_now(self.hub.join(anon, "daily-news"))
        forbidden(self, self.hub.publish(anon, "daily-news", "x", as_member=False))
        dave, _ = self.user("dave")
        self.assertEqual(run_now(self.hub.publish(dave, "daily-news", "ok", as_member=False)).id, 1)
        # a room no rule matches is open to anyone
        run_now(self.hub.join(anon, "lobby"))

    def test_token_rooms_limit_a_login_to_its_rooms(self) -> None:
        alice, _ = self.user("alice")
        alice.token_rooms = frozenset({"lobby"})
        other, _ = self.user("bob")
        run_now(self.hub.join(other, "elsewhere"))
        run_now(self.hub.join(alice, "lobby"))
        forbidden(self, self.hub.join(alice, "elsewhere"))
        forbidden(self, self.hub.history("elsewhere", by=alice))
        self.assertEqual([r.name for r in run_now(self.hub.rooms(by=alice))], ["lobby"])

    def test_the_hub_checks_token_rooms_even_without_a_policy(self) -> None:
        hub = Hub(HubConfig(), self.clock, MemoryEngine(HubConfig(), self.clock))
        session = run_now(hub.open_session(Subscriber(lambda e: None, lambda e: None)))
        session.token_rooms = frozenset({"a"})
        run_now(hub.join(session, "a"))
        forbidden(self, hub.join(session, "b"))


class PrivateRoomTests(PolicyTestsMixin, TestCase):
    def test_a_private_room_refuses_non_members_and_leaks_nothing(self) -> None:
        alice, _ = self.user("alice")
        self.assertEqual(run_now(self.moderation.create(alice, "#Secret")), "secret")
        run_now(self.hub.join(alice, "secret"))
        run_now(self.hub.publish(alice, "secret", "the plan"))
        public, _ = self.user("carol")
        run_now(self.hub.join(public, "lobby"))
        for who in (self.user()[0], self.user("bob")[0]):  # anonymous, and an account not invited
            forbidden(self, self.hub.join(who, "secret"))
            forbidden(self, self.hub.subscribe(who, "secret"))
            forbidden(self, self.hub.publish(who, "secret", "hello?", as_member=False))
            forbidden(self, self.hub.history("secret", by=who))
            forbidden(self, self.hub.who("secret", by=who))
            self.assertEqual([r.name for r in run_now(self.hub.rooms(by=who))], ["lobby"])
        self.assertEqual([r.name for r in run_now(self.hub.rooms(by=alice))], ["lobby", "secret"])
        root, _ = self.user("root")
        self.assertEqual([r.name for r in run_now(self.hub.rooms(by=root))], ["lobby", "secret"])

    def test_an_invitation_makes_a_member_and_removing_one_takes_it_out(self) -> None:
        alice, _ = self.user("alice")
        bob, bob_sub = self.user("bob")
        run_now(self.moderation.create(alice, "secret"))
        forbidden(self, self.moderation.invite(bob, "secret", "carol"))  # only the owner (or an admin)
        self.assertEqual(run_now(self.moderation.invite(alice, "secret", "BOB")), ("secret", "bob", True))
        self.assertEqual(run_now(self.moderation.invite(alice, "secret", "bob")), ("secret", "bob", False))
        forbidden(self, self.moderation.invite(alice, "secret", "nobody"), NOT_FOUND)
        joined = run_now(self.hub.join(bob, "secret"))
        self.assertEqual(joined.members, ["bob"])
        run_now(self.hub.join(alice, "secret"))
        self.assertEqual(run_now(self.moderation.remove(alice, "secret", "bob")), ("secret", "bob", True))
        self.assertEqual([k.reason for k in bob_sub.kicks()], ["removed from the room"])
        self.assertNotIn("secret", bob.rooms)
        self.assertEqual(run_now(self.hub.who("secret")), ["alice"])
        forbidden(self, self.hub.join(bob, "secret"))

    def test_creating_needs_an_account_a_free_name_and_stays_within_limits(self) -> None:
        self.make(max_private_rooms_per_account=1, max_private_members=1)
        anon, _ = self.user()
        forbidden(self, self.moderation.create(anon, "secret"), UNAUTHENTICATED)
        forbidden(self, self.moderation.invite(anon, "secret", "bob"), UNAUTHENTICATED)
        alice, _ = self.user("alice")
        bob, _ = self.user("bob")
        run_now(self.hub.join(bob, "busy"))
        forbidden(self, self.moderation.create(alice, "busy"))  # in use: no taking over a public room
        forbidden(self, self.moderation.create(alice, "vip-x"))  # the rules must let the owner join
        run_now(self.moderation.create(alice, "secret"))
        forbidden(self, self.moderation.create(bob, "secret"))  # private already
        forbidden(self, self.moderation.create(alice, "another"), QUOTA_EXCEEDED)
        run_now(self.moderation.invite(alice, "secret", "bob"))
        forbidden(self, self.moderation.invite(alice, "secret", "carol"), QUOTA_EXCEEDED)
        self.make(private_rooms=False)
        carol, _ = self.user("carol")
        forbidden(self, self.moderation.create(carol, "mine"))

    def test_deleting_makes_the_room_public_again(self) -> None:
        alice, _ = self.user("alice")
        bob, _ = self.user("bob")
        run_now(self.moderation.create(alice, "secret"))
        forbidden(self, self.moderation.delete(bob, "secret"))
        run_now(self.moderation.delete(alice, "secret"))
        run_now(self.hub.join(bob, "secret"))


class ModerationTests(PolicyTestsMixin, TestCase):
    def test_an_admin_kicks_by_nick_and_the_kicked_may_come_back(self) -> None:
        root, _ = self.user("root")
        alice, alice_sub = self.user("alice")
        carol, carol_sub = self.user("carol")
        for s in (alice, carol):
            run_now(self.hub.join(s, "lobby"))
        forbidden(self, self.moderation.kick(carol, "lobby", "alice"))  # not an admin, not an owner
        self.assertEqual(run_now(self.moderation.kick(root, "lobby", "ALICE", "spam")), ("lobby", "ALICE"))
        self.assertEqual([(k.nick, k.reason) for k in alice_sub.kicks()], [("alice", "kicked by root: spam")])
        # told why first, then everyone sees the PART
        self.assertEqual([(e.kind, e.nick) for e in alice_sub.events[-2:] if isinstance(e, Presence)],
                         [("kick", "alice"), ("part", "alice")])
        self.assertEqual([(e.kind, e.nick) for e in carol_sub.events[-1:] if isinstance(e, Presence)],
                         [("part", "alice")])
        self.assertEqual(carol_sub.kicks(), [])
        self.assertEqual(run_now(self.hub.who("lobby")), ["carol"])
        run_now(self.hub.join(alice, "lobby"))  # a kick is not a ban

    def test_a_kick_reaches_a_member_on_another_hub_and_subscribers(self) -> None:
        other = self.new_hub("b")
        root, _ = self.user("root")
        alice, alice_sub = self.user("alice", hub=other)
        run_now(other.join(alice, "lobby"))
        run_now(other.subscribe(alice, "news"))
        run_now(self.moderation.kick(root, "lobby", "alice"))
        run_now(self.moderation.kick(root, "news", "alice"))
        self.assertEqual(len(alice_sub.kicks()), 2)
        self.assertEqual((alice.rooms, alice.topics), ({}, {}))

    def test_an_owner_may_kick_in_their_private_room_only(self) -> None:
        alice, _ = self.user("alice")
        bob, bob_sub = self.user("bob")
        run_now(self.moderation.create(alice, "secret"))
        run_now(self.moderation.invite(alice, "secret", "bob"))
        run_now(self.hub.join(bob, "secret"))
        run_now(self.hub.join(bob, "lobby"))
        run_now(self.moderation.kick(alice, "secret", "bob"))
        forbidden(self, self.moderation.kick(alice, "lobby", "bob"))
        self.assertEqual(list(bob.rooms), ["lobby"])
        forbidden(self, self.moderation.ban(alice, "secret", "bob", 60))  # bans are for admins

    def test_a_ban_kicks_and_refuses_until_it_ends(self) -> None:
        root, _ = self.user("root")
        alice, alice_sub = self.user("alice")
        run_now(self.hub.join(alice, "lobby"))
        forbidden(self, self.moderation.ban(alice, "lobby", "bob", 60))
        _, _, until = run_now(self.moderation.ban(root, "lobby", "alice", 60))
        self.assertEqual(until, self.clock.seconds() + 60)
        self.assertEqual([k.reason for k in alice_sub.kicks()], ["banned by root for 60 seconds"])
        error = forbidden(self, self.hub.join(alice, "lobby"))
        self.assertEqual(error.retry_after, 60)
        forbidden(self, self.hub.publish(alice, "lobby", "let me in", as_member=False))
        self.clock.advance(59)
        forbidden(self, self.hub.join(alice, "lobby"))
        self.clock.advance(1)
        run_now(self.hub.join(alice, "lobby"))  # over on time, whatever the cache holds
        run_now(self.moderation.ban(root, "lobby", "alice", 60))
        self.assertEqual(run_now(self.moderation.unban(root, "lobby", "alice")), ("lobby", "alice", True))
        run_now(self.hub.join(alice, "lobby"))

    def test_bans_that_are_over_leave_the_table(self) -> None:
        root, _ = self.user("root")
        run_now(self.moderation.ban(root, "lobby", "alice", 60))
        run_now(self.moderation.ban(root, "lobby", "alice", 120))  # a later ban replaces the first
        self.clock.advance(121)
        self.assertEqual(run_now(self.moderation.unban(root, "lobby", "alice")), ("lobby", "alice", False))
        run_now(self.moderation.ban(root, "lobby", "bob", 60))
        self.clock.advance(61)
        run_now(self.moderation.ban(root, "lobby", "carol", 60))
        rows = self.db.conn.execute("SELECT username FROM room_bans").fetchall()
        self.assertEqual(rows, [("carol",)])

    def test_a_ban_while_the_join_is_under_way_still_keeps_the_member_out(self) -> None:
        root, _ = self.user("root")
        alice, alice_sub = self.user("alice")
        bob, _ = self.user("bob")
        run_now(self.hub.join(bob, "lobby"))
        real_join, real_subscribe = self.engine.join, self.engine.subscribe

        async def join(*args: Any, **kw: Any) -> Any:
            run_now(self.moderation.ban(root, "lobby", "alice", 60))  # found nobody to kick: alice is not in yet
            return await real_join(*args, **kw)

        self.engine.join = join  # type: ignore[method-assign]
        forbidden(self, self.hub.join(alice, "lobby"))
        self.assertEqual((alice.rooms, run_now(self.hub.who("lobby"))), ({}, ["bob"]))

        async def subscribe(*args: Any, **kw: Any) -> Any:
            run_now(self.moderation.close(root, "news"))
            return await real_subscribe(*args, **kw)

        self.engine.subscribe = subscribe  # type: ignore[method-assign]
        forbidden(self, self.hub.subscribe(bob, "news"))
        self.assertEqual(bob.topics, {})

    def test_a_closed_room_is_emptied_and_refuses_everyone_but_admins_until_reopened(self) -> None:
        root, _ = self.user("root")
        alice, alice_sub = self.user("alice")
        anon, anon_sub = self.user()
        run_now(self.hub.join(alice, "lobby"))
        run_now(self.hub.subscribe(anon, "lobby"))
        forbidden(self, self.moderation.close(alice, "lobby"))
        run_now(self.moderation.close(root, "lobby"))
        self.assertEqual(len(alice_sub.kicks()) + len(anon_sub.kicks()), 2)
        self.assertEqual(run_now(self.hub.rooms()), [])
        for action in (self.hub.join(alice, "lobby"), self.hub.subscribe(anon, "lobby"),
                       self.hub.publish(alice, "lobby", "x", as_member=False), self.hub.history("lobby", by=alice)):
            forbidden(self, action)
        run_now(self.hub.join(root, "lobby"))
        self.assertEqual(run_now(self.moderation.reopen(root, "lobby")), ("lobby", True))
        run_now(self.hub.join(alice, "lobby"))


class CacheTests(PolicyTestsMixin, TestCase):
    def test_publishing_costs_one_query_per_room_per_ttl(self) -> None:
        alice, _ = self.user("alice")
        run_now(self.hub.join(alice, "lobby"))
        before = len(self.db.runs)
        for i in range(100):
            run_now(self.hub.publish(alice, "lobby", f"m{i}"))
        self.assertEqual(len(self.db.runs), before)
        self.clock.advance(5)
        run_now(self.hub.publish(alice, "lobby", "later"))
        self.assertEqual(self.db.runs[before:], ["room_states_txn"])

    def test_a_change_by_another_process_is_seen_within_the_ttl(self) -> None:
        alice, _ = self.user("alice")
        run_now(self.hub.join(alice, "lobby"))
        # another process bans alice: written to the database, not to this process's cache
        self.db.conn.execute(
            "INSERT INTO room_bans (room, username, until, banned_by) VALUES ('lobby', 'alice', ?, 'root')",
            (self.clock.seconds() + 3600,),
        )
        run_now(self.hub.publish(alice, "lobby", "still cached"))
        self.clock.advance(5)
        forbidden(self, self.hub.publish(alice, "lobby", "now refused"))

    def test_a_local_change_is_seen_at_once_and_loads_are_shared(self) -> None:
        alice, _ = self.user("alice")
        root, _ = self.user("root")
        run_now(self.hub.join(alice, "lobby"))
        run_now(self.moderation.ban(root, "lobby", "alice", 60))
        forbidden(self, self.hub.publish(alice, "lobby", "x", as_member=False))
        # several checks of one room waiting for the database make one query
        held: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []
        real = self.db.run

        def slow(fn: Any, *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            held.append((d, fn, args))
            return d

        self.db.run = slow  # type: ignore[method-assign]
        results: list[Any] = []
        for _ in range(3):
            Deferred.fromCoroutine(self.policies.state("quiet")).addBoth(results.append)
        self.assertEqual(len(held), 1)
        d, fn, args = held[0]
        d.callback(self.successResultOf(real(fn, *args)))
        self.assertEqual([r.private for r in results], [False, False, False])

    def test_while_the_database_is_down_the_last_state_read_stands(self) -> None:
        alice, _ = self.user("alice")
        root, _ = self.user("root")
        run_now(self.hub.join(alice, "lobby"))
        run_now(self.moderation.ban(root, "lobby", "alice", 600))
        forbidden(self, self.hub.publish(alice, "lobby", "x", as_member=False))  # read before the outage
        real, down = self.db.run, [True]

        def failing(fn: Any, *args: Any) -> Deferred[Any]:
            self.db.runs.append(fn.__name__)
            return fail(DatabaseUnavailable("down")) if down else real(fn, *args)

        self.db.run = failing  # type: ignore[method-assign]
        self.clock.advance(5)
        before = len(self.db.runs)
        forbidden(self, self.hub.publish(alice, "lobby", "x", as_member=False))  # still banned
        forbidden(self, self.hub.publish(alice, "lobby", "x", as_member=False))
        self.assertEqual(len(self.db.runs), before + 1)  # asked once, not on every check
        with self.assertRaises(DatabaseUnavailable):
            run_now(self.hub.join(alice, "never-read"))  # nothing known of it: refused
        self.assertEqual(len(self.flushLoggedErrors(DatabaseUnavailable)), 0)

    def test_the_cache_is_bounded(self) -> None:
        self.make(max_cached_rooms=3)
        anon, _ = self.user()
        for name in ("a", "b", "c", "d", "e"):
            run_now(self.hub.join(anon, name))
        self.assertLessEqual(len(self.policies._cache), 3)


class ConfigTests(TestCase):
    def test_rules_and_admins_from_toml(self) -> None:
        config = load(self, """
[rooms]
admins = ["Root"]
max_private_members = 5
[[rooms.rules]]
pattern = "staff-*"
join = "accounts"
publish = ["alice", "bob"]
[[rooms.rules]]
pattern = "*"
read = "admins"
""")
        rooms = config.rooms
        self.assertEqual(rooms.admins, ("root",))
        self.assertTrue(rooms.is_admin("root"))
        rule = rooms.rule_for("staff-x")
        assert rule is not None
        # what a rule leaves out is as closed as its join: a closed room is not open to read or subscribe
        self.assertEqual((rule.join, rule.publish, rule.read, rule.subscribe),
                         ("accounts", frozenset({"alice", "bob"}), "accounts", "accounts"))
        lobby = rooms.rule_for("lobby")
        assert lobby is not None
        self.assertEqual((lobby.read, lobby.join, lobby.publish), ("admins", "anyone", "anyone"))

    def test_bad_rules_are_reported_with_their_path(self) -> None:
        from myservices.config import ConfigError

        cases = [
            ('[[rooms.rules]]\npattern = "a*"\njoin = "everyone"', 'rooms.rules: rule 1 (a*).join: expected "anyone"'),
            ('[[rooms.rules]]\njoin = "anyone"', 'rooms.rules: rule 1: "pattern" must be a non-empty string'),
            ('[[rooms.rules]]\npattern = "a"\nwrite = "anyone"', "rooms.rules: rule 1: unknown key 'write'"),
            ('[[rooms.rules]]\npattern = "a"\npublish = ["x y"]', "rooms.rules: rule 1 (a).publish: 'x y' is not an"),
            ('[rooms]\nrules = "staff-*"', "rooms.rules: expected an array of tables"),
            ('[rooms]\nadmins = ["ok_name", "no"]', "rooms.admins: 'no' is not an account username"),
            ('[rooms]\nmax_private_members = 0', "rooms.max_private_members: expected a whole number from 1"),
        ]
        for text, expected in cases:
            with self.assertRaises(ConfigError) as caught:
                load(self, text)
            self.assertTrue(any(p.startswith(expected) for p in caught.exception.problems),
                            (expected, caught.exception.problems))
