"""The operator page's data: the sampler (on a Clock), the recent errors, and admin.* over a real WebSocket."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.trial.unittest import TestCase

from myservices.errors import BUSY, ENGINE_UNAVAILABLE, RequestError
from myservices.framed.catalog import COMMANDS, PUSHES
from myservices.handlers.pipeline import event_body
from myservices.hub import Stats, Subscriber
from myservices.metrics import Metrics
from myservices.operator.config import AdminConfig
from myservices.operator.recent_errors import RecentErrors
from myservices.operator.sampler import Sampler
from myservices.websocket.routes import CHAT_OPS
from tests.pbclient import failure_of, pb_connect
from tests.support import FAST_ACCOUNTS, chat_client, framed_client, load, poll_until, port_of, start_tree
from tests.test_pb import code_of
from tests.test_websocket import ws_config
from tests.wsclient import WsClient, ws_connect

# --- unit: the sampler on a Clock, with a hub that only lists rooms -----------------------------------


@dataclass
class FakeRoom:
    name: str
    members: int = 1
    subscribers: int = 0
    last_id: int = 0


class FakeSession:
    def __init__(self, account: str | None = "root") -> None:
        self.account = account
        self.token_rooms = None
        self.closed = False
        self.events: list[Any] = []
        self.subscriber = Subscriber(self.events.append, lambda error: None)


class FakePolicy:
    def is_admin(self, who: Any) -> bool:
        return who.account == "root"


@dataclass
class FakeHub:
    rooms_in_use: list[FakeRoom] = field(default_factory=list)
    node_id: str = "local"
    sessions: dict[str, Any] = field(default_factory=dict)
    policy: FakePolicy = field(default_factory=FakePolicy)
    failure: Exception | None = None  # what rooms() raises
    waits: list[Deferred[None]] | None = None  # when set, each rooms() waits for a Deferred it appends here

    async def rooms(self) -> list[FakeRoom]:
        if self.waits is not None:
            wait: Deferred[None] = Deferred()
            self.waits.append(wait)
            await wait
        if self.failure is not None:
            raise self.failure
        return [FakeRoom(r.name, r.members, r.subscribers, r.last_id) for r in self.rooms_in_use]


class SamplerTests(TestCase):
    def make(self, **config: Any) -> tuple[Sampler, FakeHub, Clock]:
        clock = Clock()
        hub = FakeHub()
        metrics = Metrics()
        metrics.for_service("chat").connections_open.inc(3)
        sampler = Sampler(AdminConfig(**config), hub, metrics, clock, RecentErrors(5), lag=lambda: 0.25)  # type: ignore[arg-type]
        return sampler, hub, clock

    def test_rates_are_the_growth_of_each_rooms_last_id_per_second(self) -> None:
        sampler, hub, clock = self.make(interval=2.0)
        hub.rooms_in_use = [FakeRoom("lobby", members=2, last_id=10), FakeRoom("news", members=0, subscribers=4)]
        admin = FakeSession()
        self.assertTrue(sampler.watch(admin))
        self.assertFalse(sampler.watch(admin))  # watching already
        # the first snapshot at once: nothing to compare with yet
        [first] = admin.events
        self.assertIsInstance(first, Stats)
        self.assertEqual([(r["name"], r["rate"]) for r in first.data["rooms"]], [("news", 0.0), ("lobby", 0.0)])  # the larger first
        self.assertEqual(first.data["connections"]["chat"], 3)
        self.assertEqual(first.data["reactor_lag"], 0.25)
        self.assertEqual((first.data["members"], first.data["subscribers"]), (2, 4))
        hub.rooms_in_use[0].last_id = 30  # 20 messages in 2 seconds
        hub.rooms_in_use[1].last_id = 3
        clock.advance(2)
        second = admin.events[-1].data
        self.assertEqual([(r["name"], r["rate"]) for r in second["rooms"]], [("lobby", 10.0), ("news", 1.5)])
        self.assertEqual(second["message_rate"], 11.5)
        clock.advance(2)
        self.assertEqual(admin.events[-1].data["message_rate"], 0.0)
        self.assertEqual(len(admin.events), 3)
        # the kind and body every JSON front end sends, and the framed push id
        self.assertEqual(event_body(admin.events[-1]), ("stats", admin.events[-1].data))
        self.assertIn("stats", PUSHES)

    def test_a_watcher_that_closes_is_removed_and_sampling_stops(self) -> None:
        sampler, hub, clock = self.make(interval=1.0)
        one, two = FakeSession(), FakeSession()
        sampler.watch(one)
        sampler.watch(two)
        self.assertEqual(len(two.events), 1)  # the latest snapshot, at once
        clock.advance(1)
        self.assertEqual((len(one.events), len(two.events)), (2, 2))
        one.closed = True
        clock.advance(1)
        self.assertEqual(list(sampler.watchers), [two])
        self.assertEqual(len(one.events), 2)
        # a watcher that logged out (no admin any more) is dropped too; with nobody left, nothing is sampled
        two.account = None
        clock.advance(1)
        self.assertEqual(sampler.watchers, {})
        self.assertFalse(sampler.sampling)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_unwatch_stops_the_snapshots(self) -> None:
        sampler, hub, clock = self.make()
        admin = FakeSession()
        sampler.watch(admin)
        self.assertTrue(sampler.unwatch(admin))
        self.assertFalse(sampler.unwatch(admin))
        clock.advance(5)
        self.assertEqual(len(admin.events), 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_watchers_and_rooms_are_bounded(self) -> None:
        sampler, hub, clock = self.make(max_watchers=2, max_rooms=2)
        hub.rooms_in_use = [FakeRoom("a", members=1), FakeRoom("b", members=5), FakeRoom("c", members=3)]
        first, second = FakeSession(), FakeSession()
        sampler.watch(first)
        sampler.watch(second)
        with self.assertRaises(RequestError) as caught:
            sampler.watch(FakeSession())
        self.assertIs(caught.exception.error, BUSY)
        data = first.events[0].data
        # the busiest first (rates equal: the most members), the rest counted
        self.assertEqual([r["name"] for r in data["rooms"]], ["b", "c"])
        self.assertEqual((data["rooms_total"], data["rooms_omitted"]), (3, 1))
        sampler.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stats_without_watchers_gives_rates_since_the_previous_call(self) -> None:
        sampler, hub, clock = self.make()
        hub.rooms_in_use = [FakeRoom("lobby", last_id=5)]
        first = self.successResultOf(_deferred(sampler.snapshot()))
        self.assertEqual(first["rooms"][0]["rate"], 0.0)
        hub.rooms_in_use[0].last_id = 25
        clock.advance(4)
        self.assertEqual(self.successResultOf(_deferred(sampler.snapshot()))["rooms"][0]["rate"], 5.0)

    def test_rooms_that_cannot_be_listed_are_reported_and_the_rest_still_sent(self) -> None:
        sampler, hub, clock = self.make(interval=1.0)
        hub.rooms_in_use = [FakeRoom("lobby")]
        hub.failure = RequestError(ENGINE_UNAVAILABLE)
        admin = FakeSession()
        sampler.watch(admin)
        data = admin.events[-1].data
        self.assertEqual((data["rooms"], data["rooms_error"], data["connections"]["chat"]), ([], "ENGINE_UNAVAILABLE", 3))
        self.assertEqual(self.flushLoggedErrors(), [])  # an engine outage is not a bug
        hub.failure = RuntimeError("a bug in the engine")
        clock.advance(1)
        self.assertEqual(admin.events[-1].data["rooms_error"], "INTERNAL")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)  # a bug: logged, and the snapshots go on
        hub.failure = None
        clock.advance(1)
        self.assertEqual(([r["name"] for r in admin.events[-1].data["rooms"]], len(admin.events)), (["lobby"], 3))
        self.assertNotIn("rooms_error", admin.events[-1].data)
        sampler.stopService()

    def test_a_snapshot_begun_before_an_unwatch_is_not_sent_after_a_new_watch(self) -> None:
        sampler, hub, clock = self.make(interval=10.0)
        hub.waits = []
        admin = FakeSession()
        sampler.watch(admin)
        sampler.unwatch(admin)
        sampler.watch(admin)  # a new loop, whose first snapshot is under way too
        old, new = hub.waits
        old.callback(None)
        self.assertEqual(admin.events, [])  # the old loop's snapshot is dropped
        new.callback(None)
        self.assertEqual(len(admin.events), 1)
        sampler.stopService()


def _deferred(coroutine: Any) -> Any:
    return Deferred.fromCoroutine(coroutine)


class RecentErrorsTests(TestCase):
    def test_keeps_the_last_warnings_and_errors_as_text_only(self) -> None:
        publisher = LogPublisher()
        errors = RecentErrors(3, max_length=80)
        errors.start(publisher)
        log = Logger(namespace="myservices.test", observer=publisher)
        log.info("not kept {x}", x=1)
        log.debug("not kept either")
        for i in range(5):
            log.warn("warning {i} about {what}", i=i, what="x")
        log.error("a long one: {text}", text="y" * 200)
        kept = errors.recent()
        self.assertEqual(len(kept), 3)  # the ring holds the last three
        self.assertEqual([e["text"] for e in kept[:2]], ["warning 3 about x", "warning 4 about x"])
        self.assertEqual([e["level"] for e in kept], ["warn", "warn", "error"])
        self.assertEqual(kept[0]["namespace"], "myservices.test")
        self.assertEqual(len(kept[2]["text"]), 80)
        self.assertEqual(set(kept[0]), {"time", "level", "namespace", "text"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.failure("it failed")
        self.assertEqual(errors.recent()[-1]["text"], "it failed")  # no traceback
        self.assertEqual(errors.recent()[-1]["level"], LogLevel.critical.name)
        errors.stop()
        log.error("after stop")
        self.assertEqual(errors.recent()[-1]["text"], "it failed")

    def test_the_sampler_observes_the_log_while_it_runs(self) -> None:
        errors = RecentErrors(10)
        sampler = Sampler(AdminConfig(), FakeHub(), Metrics(), Clock(), errors)  # type: ignore[arg-type]
        log = Logger(namespace="myservices.test")
        sampler.startService()
        log.warn("while running")
        sampler.stopService()
        log.warn("after stopping")
        self.assertEqual([e["text"] for e in errors.recent()], ["while running"])


# --- integration: a real tree, admin.* over a real WebSocket ----------------------------------------

ADMIN_CONFIG = FAST_ACCOUNTS + """
[rooms]
admins = ["root"]
[admin]
interval = 0.1
[services.framed]
endpoint = "tcp:0:interface=127.0.0.1"
[services.pb]
endpoint = "tcp:0:interface=127.0.0.1"
"""


async def stats_until(ws: WsClient, condition: Any, limit: int = 400) -> dict[str, Any]:
    """The first "stats" event for which C{condition} holds (bounded: at most C{limit} snapshots)."""
    for _ in range(limit):
        event = await ws.event("stats")
        if condition(event):
            return event
    raise AssertionError("no snapshot matched")


def room(stats: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((r for r in stats["rooms"] if r["name"] == name), None)


class AdminCommandsTests(TestCase):
    timeout = 60

    async def start(self) -> Any:
        self.tree = await start_tree(self, load(self, ws_config() + ADMIN_CONFIG))
        accounts = self.tree.listeners["framed"].factory.services.accounts
        for name in ("root", "bob"):
            await accounts.register(name, "correct horse")
        return self.tree

    async def ws(self, username: str | None) -> WsClient:
        ws = await ws_connect(self, port_of(self.tree, "websocket"), "/chat")
        await ws.event("welcome")
        if username is not None:
            await ws.call("login", username=username, password="correct horse")
        return ws

    def test_the_ops_and_their_framed_ids(self) -> None:
        for op in ("admin.stats", "admin.watch", "admin.unwatch"):
            self.assertEqual(CHAT_OPS[op], op)
            self.assertIn(op, COMMANDS)

    async def test_anonymous_is_unauthenticated_and_a_non_admin_forbidden(self) -> None:
        await self.start()
        guest = await self.ws(None)
        bob = await self.ws("bob")
        for op in ("admin.watch", "admin.stats", "admin.unwatch"):
            self.assertEqual((await guest.request(op))["error"]["code"], "UNAUTHENTICATED")
            self.assertEqual((await bob.request(op))["error"]["code"], "FORBIDDEN")
        self.assertEqual(self.tree.namedServices["operator"].watchers, {})
        # framed: the same commands, the same answers
        client = await framed_client(self, port_of(self.tree, "framed"))
        await client.call("login", username="bob", password="correct horse")
        with self.assertRaises(Exception) as caught:
            await client.call("admin.stats")
        self.assertIn("FORBIDDEN", str(caught.exception))
        await client.call("logout")
        await client.call("login", username="root", password="correct horse")
        stats = await client.call("admin.stats")
        self.assertIn("framed", stats["connections"])
        # watching on the framed service: "stats" pushes
        self.assertEqual(await client.call("admin.watch"), {"watching": True, "interval": 0.1})
        pushed = await client.pushes.next("stats")
        self.assertEqual(pushed["node"], "local")
        await client.pushes.next("stats")
        self.assertEqual((await client.call("admin.unwatch"))["was_watching"], True)
        # PB: one snapshot, for admins
        bob_pb = await (await pb_connect(self, port_of(self.tree, "pb"))).login("bob", "correct horse")
        self.assertEqual(code_of(await failure_of(bob_pb.callRemote("admin_stats"))), "FORBIDDEN")
        root_pb = await (await pb_connect(self, port_of(self.tree, "pb"))).login("root", "correct horse")
        self.assertIn("pb", (await root_pb.callRemote("admin_stats"))["connections"])

    async def test_an_admin_watches_sees_a_room_and_kicks_from_it(self) -> None:
        await self.start()
        admin = await self.ws("root")
        reply = await admin.call("admin.watch")
        self.assertEqual(reply, {"watching": True, "interval": 0.1})
        first = await admin.event("stats")
        self.assertEqual(first["node"], "local")
        self.assertEqual(first["health"].get("database", "ok"), "ok")
        self.assertGreaterEqual(first["connections"]["websocket"], 1)

        line = await chat_client(self, port_of(self.tree, "chat"), "liner")
        await line.command("/join ops")
        seen = await stats_until(admin, lambda s: (room(s, "ops") or {}).get("members") == 1)
        self.assertEqual(seen["connections"]["chat"], 1)
        # messages per second: the room's last id grew between two snapshots
        for i in range(5):
            line.send(f"line {i}")
        await line.read_until(lambda text: text.startswith("MSG ops 5 "))
        busy = await stats_until(admin, lambda s: (room(s, "ops") or {}).get("rate", 0) > 0)
        self.assertEqual(room(busy, "ops")["last_id"], 5)  # type: ignore[index]
        self.assertGreater(busy["message_rate"], 0)
        self.assertEqual(await admin.call("who", room="ops"), {"room": "ops", "members": ["liner"]})

        # kick: the line client is told, and the room is gone from the snapshots
        self.assertEqual(await admin.call("kick", room="ops", nick="liner", reason="testing"),
                         {"room": "ops", "nick": "liner"})
        self.assertIn("KICK ops liner", (await line.read_until("KICK ops liner"))[-1])
        await stats_until(admin, lambda s: room(s, "ops") is None)

        # disconnect: every connection of the nick is closed
        self.assertEqual(await admin.call("disconnect", nick="liner", reason="enough"),
                         {"nick": "liner", "disconnected": True})
        await line.closed
        await stats_until(admin, lambda s: s["connections"]["chat"] == 0)
        bob = await self.ws("bob")
        self.assertEqual((await bob.request("disconnect", nick="root"))["error"]["code"], "FORBIDDEN")

        # a watcher that closes is removed; nobody watching: nothing is sampled
        sampler = self.tree.namedServices["operator"]
        self.assertEqual(len(sampler.watchers), 1)
        admin.transport.loseConnection()
        await admin.closed
        await poll_until(lambda: not sampler.sampling, "the sampler to stop", 10)
        self.assertEqual(sampler.watchers, {})

    async def test_unwatch_and_stats(self) -> None:
        await self.start()
        admin = await self.ws("root")
        stats = await admin.call("admin.stats")
        self.assertEqual(set(stats) >= {"rooms", "connections", "health", "reactor_lag", "errors", "message_rate"}, True)
        await admin.call("admin.watch")
        await admin.event("stats")
        self.assertEqual(await admin.call("admin.unwatch"), {"watching": False, "was_watching": True})
        sampler = self.tree.namedServices["operator"]
        self.assertFalse(sampler.sampling)
