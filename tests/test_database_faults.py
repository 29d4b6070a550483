"""A database that stops answering never holds a request past [database] request_timeout.

The MariaDB here is a private one per test, frozen with SIGSTOP (the kernel
still accepts its connections; nothing answers), never the shared server.
The deadline logic itself is also tested on SQLite with a task.Clock.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from myservices.db.config import DatabaseConfig
from myservices.counter import DurableCounter
from myservices.db import Database, DatabaseTimeout, DatabaseUnavailable, Migration, Txn
from myservices.framed.client import FramedError
from myservices.health import health_check_txn
from myservices.tree import ServiceTree, build_service_tree
from tests import mysql
from tests.support import (
    FAST_ACCOUNTS, HttpClient, HttpResponse, chat_client, framed_client, load, port_of, start_tree,
)

T = TypeVar("T")

TIMEOUT = 1.0  # [database] request_timeout in these tests
MARGIN = 0.5  # for scheduling on a busy test machine
POOL = 2


def fault_config(url: str, connect_timeout: float = 2.0, query_timeout: float = 30.0) -> str:
    # connect_timeout is by default longer than the deadline: the pool threads stay stuck on the frozen server past it
    return f"""
[daemon]
shutdown_timeout = 2
[database]
url = "{url}"
pool_min = 1
pool_max = {POOL}
connect_timeout = {connect_timeout}
query_timeout = {query_timeout}
request_timeout = {TIMEOUT}
# a transaction per batch of counter requests, none served from a reserved block: each one meets the deadline
counter_block = 1
{FAST_ACCOUNTS}
[services.http]
endpoint = "tcp:0:interface=127.0.0.1"
# longer than request_timeout: the database deadline is what ends the probe
ready_timeout = 10
retry_after = 3
[services.framed]
endpoint = "tcp:0:interface=127.0.0.1"
[services.chat]
endpoint = "tcp:0:interface=127.0.0.1"
"""


def private_database(testcase: TestCase) -> tuple[mysql.PrivateServer, str]:
    """A fresh private mariadbd (stopped at cleanup) and the URL of an empty database on it."""
    private = mysql.start_private_server(testcase)
    with private.server.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE myservices CHARACTER SET utf8mb4")
    return private, private.server.url("myservices")


async def within(limit: float, work: Awaitable[T]) -> tuple[T | Exception, float]:
    """C{work}'s result (or exception) and the seconds it took on the reactor clock; fails past C{limit}."""

    def late(result: object, timeout: float) -> None:
        raise AssertionError(f"no answer within {timeout}s")

    started = reactor.seconds()
    result = await Deferred.fromCoroutine(_outcome(work)).addTimeout(limit, reactor, onTimeoutCancel=late)
    return result, reactor.seconds() - started


async def _outcome(work: Awaitable[T]) -> T | Exception:
    try:
        return await work
    except Exception as e:
        return e


def number(response: HttpResponse) -> int:
    assert response.code == 200, (response.code, response.body)
    text = response.body.decode()
    assert text.startswith("I am request #"), text
    return int(text[len("I am request #"):])


def sample(tree: ServiceTree, name: str, **labels: str) -> float:
    return tree.metrics.registry.get_sample_value(name, labels) or 0.0


def stalled_txn(txn: Txn, entered: Deferred[None], go: threading.Event) -> None:
    """Has the test freeze the server between checking out the connection and the statement."""
    reactor.callFromThread(entered.callback, None)
    go.wait(30)
    txn.execute("SELECT 1")
    txn.fetchone()


def next_turn() -> Deferred[None]:
    """Fires on the reactor's next turn, after the calls already scheduled for now."""
    return deferLater(reactor, 0, lambda: None)


def rendezvous_txn(txn: Txn, barrier: threading.Barrier) -> int:
    """Returns only once every party is in a transaction at the same time: one pool thread each."""
    barrier.wait()
    txn.execute("SELECT CONNECTION_ID()")
    return txn.fetchone()[0]


@pytest.mark.mysql
class FrozenDatabaseTests(TestCase):
    """The real service tree on a private MariaDB that is stopped (SIGSTOP) and resumed (SIGCONT)."""

    def assert_unavailable(self, response: HttpResponse) -> None:
        self.assertEqual(response.code, 503, response.body)
        self.assertEqual(response.json()["error"]["code"], "DATABASE_UNAVAILABLE")
        self.assertEqual(response.header("Retry-After"), "3")

    async def test_every_request_ends_within_the_timeout_and_all_recover_on_resume(self) -> None:
        private, url = private_database(self)
        tree = await start_tree(self, load(self, fault_config(url)))
        http = HttpClient(self, port_of(tree, "http"))
        before = [number(await http.get("/")) for _ in range(3)]
        framed = await framed_client(self, port_of(tree, "framed"))
        await framed.call("register", username="alice", password="alice's password")
        await framed.call("login", username="alice", password="alice's password")
        await framed.call("kv.set", key="k", value="before")
        chat = await chat_client(self, port_of(tree, "chat"), nick="bob")
        speaker = await chat_client(self, port_of(tree, "chat"), nick="sue")
        await speaker.command("/join lobby")
        self.assertEqual((await speaker.command("/msg lobby before"))[-1], "OK msg lobby 1")

        private.freeze()
        self.addCleanup(private.thaw)  # whatever happens below
        limit = TIMEOUT + MARGIN
        # more requests than pool threads, on every front end that waits on the database, all at once
        outcomes = await gatherResults([
            Deferred.fromCoroutine(within(limit, work)) for work in [
                *(http.get("/") for _ in range(3 * POOL)),
                http.get("/readyz"),
                framed.call("kv.set", key="k", value="frozen"),
                chat.command("/join fresh"),
                speaker.command("/msg lobby frozen?"),
                *(tree.database.run(health_check_txn) for _ in range(2 * POOL)),
            ]
        ])
        pages, readyz, kv_set, join, publish, direct = (
            outcomes[: 3 * POOL], outcomes[3 * POOL], outcomes[3 * POOL + 1], outcomes[3 * POOL + 2],
            outcomes[3 * POOL + 3], outcomes[3 * POOL + 4 :],
        )
        for response, elapsed in pages:
            self.assert_unavailable(response)
            self.assertLess(elapsed, limit)
        response, _ = readyz
        self.assertEqual(response.code, 503, response.body)
        self.assertEqual(response.json()["checks"]["database"], "database unavailable")  # no driver detail
        error, _ = kv_set
        self.assertIsInstance(error, FramedError)
        self.assertEqual(error.code, "DATABASE_UNAVAILABLE")
        self.assertTrue(error.retry)
        lines, _ = join
        # a room's last id is unknown without the database: joining it would risk repeating ids
        self.assertEqual(lines[-1].split()[:2], ["ERR", "DATABASE_UNAVAILABLE"], lines)
        lines, _ = publish
        # not stored, so not delivered: a retry cannot duplicate it
        self.assertEqual(lines[-1].split()[:2], ["ERR", "DATABASE_UNAVAILABLE"], lines)
        for error, _ in direct:
            self.assertIsInstance(error, DatabaseTimeout)
        self.assertGreaterEqual(
            sample(tree, "myservices_db_errors_total", operation="increment", kind="timeout"), 1
        )
        # the counter's own queue: a request behind a reservation in flight still ends within the timeout
        counter = DurableCounter(tree.database, "http_requests", reactor)
        first = counter.next()
        await next_turn()  # its batch has started
        second = counter.next()
        await next_turn()
        queued, elapsed = await within(limit, counter.next())
        self.assertIsInstance(queued, DatabaseTimeout)
        self.assertLess(elapsed, limit)
        for d in (first, second):
            await self.assertFailure(d, DatabaseTimeout)

        private.thaw()
        # no restart: the next requests succeed, and no number is handed out twice
        after = number(await http.get("/"))
        self.assertGreater(after, max(before))
        more = [number(r) for r in await gatherResults([http.get("/") for _ in range(3 * POOL)])]
        self.assertEqual(len(set(more)), len(more))
        self.assertGreater(min(more), after)
        self.assertEqual((await http.get("/readyz")).code, 200)
        self.assertEqual(await framed.call("kv.set", key="k", value="after"), {"key": "k", "created": False})
        self.assertEqual(await framed.call("kv.get", key="k"), {"key": "k", "value": "after"})
        self.assertEqual((await chat.command("/join fresh"))[-1], "OK join fresh")
        after_publish = (await speaker.command("/msg lobby thawed"))[-1]
        self.assertRegex(after_publish, r"^OK msg lobby \d+$")
        self.assertGreater(int(after_publish.split()[-1]), 1)  # never id 1 again
        # every pool thread is back, each with a working connection
        barrier = threading.Barrier(POOL, timeout=TIMEOUT / 2)
        ids = await gatherResults([tree.database.run(rendezvous_txn, barrier) for _ in range(POOL)])
        self.assertEqual(len(set(ids)), POOL)

    async def test_requests_waiting_for_the_first_migration_end_within_the_timeout(self) -> None:
        private, url = private_database(self)
        private.freeze()
        tree = build_service_tree(load(self, fault_config(url)), reactor)
        tree.privilegedStartService()
        tree.startService()
        self.addCleanup(tree.stopService)
        self.addCleanup(private.thaw)  # before the tree stops: its threads wait on the server
        await tree.when_listening()
        http = HttpClient(self, port_of(tree, "http"))
        limit = TIMEOUT + MARGIN
        (page, page_elapsed), (readyz, _) = await gatherResults([
            Deferred.fromCoroutine(within(limit, http.get("/"))),
            Deferred.fromCoroutine(within(limit, http.get("/readyz"))),
        ])
        self.assert_unavailable(page)
        self.assertLess(page_elapsed, limit)
        self.assertEqual(readyz.code, 503)
        self.assertFalse(tree.database.ready)

        private.thaw()
        await tree.database.when_ready().addTimeout(30, reactor)
        self.assertEqual(number(await http.get("/")), 1)

    async def test_the_driver_timeouts_free_the_pool_threads_while_the_server_is_frozen(self) -> None:
        private, url = private_database(self)
        config = fault_config(url, connect_timeout=0.3, query_timeout=0.5)
        tree = await start_tree(self, load(self, config))
        barrier = threading.Barrier(POOL, timeout=TIMEOUT / 2)
        await gatherResults([tree.database.run(rendezvous_txn, barrier) for _ in range(POOL)])  # all connected

        # frozen in the middle of a transaction: the statement gives up after query_timeout, the dead
        # connection is dropped without a "Rollback failed" traceback (which would fail this test)
        entered: Deferred[None] = Deferred()
        go = threading.Event()
        self.addCleanup(go.set)
        stalled = tree.database.run(stalled_txn, entered, go)
        await entered
        private.freeze()
        self.addCleanup(private.thaw)
        go.set()
        error, _ = await within(TIMEOUT + MARGIN, stalled)
        self.assertIsInstance(error, DatabaseUnavailable)
        self.assertNotIsInstance(error, DatabaseTimeout)
        self.assertIn("Lost connection", str(error))

        # the ping (then a new connection's greeting) gives up after connect_timeout, not query_timeout:
        # each call fails on the connection error before its deadline, and its thread is free for the next
        for _ in range(3):
            outcomes = await gatherResults([
                Deferred.fromCoroutine(within(TIMEOUT + MARGIN, tree.database.run(health_check_txn)))
                for _ in range(POOL)
            ])
            for error, _ in outcomes:
                self.assertIsInstance(error, DatabaseUnavailable)
                self.assertNotIsInstance(error, DatabaseTimeout)
        self.assertEqual(sample(tree, "myservices_db_errors_total", operation="health_check", kind="timeout"), 0)

        private.thaw()
        barrier = threading.Barrier(POOL, timeout=TIMEOUT / 2)
        ids = await gatherResults([tree.database.run(rendezvous_txn, barrier) for _ in range(POOL)])
        self.assertEqual(len(set(ids)), POOL)


def _create_items(txn: Txn) -> None:
    txn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL)")


def insert_txn(
    txn: Txn, name: str, entered: Deferred[None] | None = None, release: threading.Event | None = None
) -> None:
    txn.execute("INSERT INTO items (name) VALUES (?)", (name,))
    if entered is not None and release is not None:
        reactor.callFromThread(entered.callback, None)
        release.wait(30)


def names_txn(txn: Txn) -> list[str]:
    txn.execute("SELECT name FROM items ORDER BY id")
    return [row[0] for row in txn.fetchall()]


class DeadlineTests(TestCase):
    """Database.run's deadline on a task.Clock; the pool is a real SQLite one (a single thread)."""

    timeout = 2.0

    def start(
        self, migrations: tuple[Migration, ...] = (Migration(1, "items", _create_items),)
    ) -> tuple[Database, Clock]:
        clock = Clock()
        url = f"sqlite:///{Path(self.mktemp()).resolve()}/test.sqlite3"
        db = Database.from_config(
            DatabaseConfig(url=url, request_timeout=self.timeout), Path(self.mktemp()), reactor,
            migrations=migrations, clock=clock,
        )
        db.startService()
        self.addCleanup(lambda: db.stopService() if db.running else None)
        return db, clock

    def timeouts(self, db: Database, operation: str) -> float:
        return db.metrics.registry.get_sample_value(
            "myservices_db_errors_total", {"operation": operation, "kind": "timeout"}
        ) or 0.0

    async def test_calls_fail_at_the_deadline_and_their_transactions_never_commit(self) -> None:
        db, clock = self.start()
        await db.when_ready()
        entered: Deferred[None] = Deferred()
        release = threading.Event()
        self.addCleanup(release.set)
        running = db.run(insert_txn, "running", entered, release)  # holds the only thread
        await entered
        queued = db.run(insert_txn, "queued")  # waits for the thread
        clock.advance(self.timeout - 0.01)
        self.assertFalse(running.called or queued.called)
        clock.advance(0.01)
        for d in (running, queued):
            error = self.failureResultOf(d, DatabaseTimeout).value
            self.assertIsInstance(error, DatabaseUnavailable)
            self.assertEqual(str(error), "the database did not answer within 2s")
        self.assertEqual(self.timeouts(db, "insert"), 2)
        self.assertEqual(clock.getDelayedCalls(), [])

        release.set()
        # the running one is rolled back, the queued one never starts; the thread serves the next call
        self.assertEqual(await db.run(names_txn), [])
        self.assertEqual(clock.getDelayedCalls(), [])  # an answered call leaves no timer behind
        await db.run(insert_txn, "answered")
        self.assertEqual(await db.run(names_txn), ["answered"])
        gc.collect()  # an unhandled late result would be logged now, and fail the test

    async def test_waiting_for_the_first_migration_ends_at_the_deadline(self) -> None:
        release = threading.Event()
        self.addCleanup(release.set)

        def slow_migration(txn: Txn) -> None:
            release.wait(30)
            _create_items(txn)

        db, clock = self.start((Migration(1, "slow", slow_migration),))
        early = db.run(names_txn)
        clock.advance(self.timeout)
        self.failureResultOf(early, DatabaseTimeout)
        self.assertEqual(self.timeouts(db, "names"), 1)

        release.set()
        await db.when_ready()
        self.assertEqual(await db.run(names_txn), [])

    async def test_a_caller_may_cancel_and_that_is_no_timeout(self) -> None:
        db, clock = self.start()
        await db.when_ready()
        entered: Deferred[None] = Deferred()
        release = threading.Event()
        self.addCleanup(release.set)
        running = db.run(insert_txn, "cancelled", entered, release)
        await entered
        running.cancel()
        self.failureResultOf(running, CancelledError)
        self.assertEqual(self.timeouts(db, "insert"), 0)
        self.assertEqual(clock.getDelayedCalls(), [])
        release.set()
        self.assertEqual(await db.run(names_txn), [])
