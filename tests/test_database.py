"""The database layer on SQLite and on a real MariaDB: migrations, placeholders, errors, reconnects."""

from __future__ import annotations

import threading
from pathlib import Path

import pymysql
import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from myservices.db.config import DatabaseConfig
from myservices.db import Database, DatabaseUnavailable, Migration, Txn
from tests import mysql
from tests.support import free_port


def _create_items(txn: Txn) -> None:
    key = "INTEGER PRIMARY KEY AUTOINCREMENT" if txn.dialect == "sqlite" else "BIGINT PRIMARY KEY AUTO_INCREMENT"
    txn.execute(f"CREATE TABLE IF NOT EXISTS items (id {key}, name VARCHAR(200) NOT NULL)")


def _create_counter(txn: Txn) -> None:
    txn.execute("CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, value BIGINT NOT NULL)")
    txn.execute("INSERT INTO counter (id, value) VALUES (?, ?)", (1, 0))


MIGRATIONS = (Migration(1, "items", _create_items), Migration(2, "counter", _create_counter))


def insert_item_txn(txn: Txn, name: str) -> int:
    txn.execute("INSERT INTO items (name) VALUES (?)", (name,))
    return txn.lastrowid


def items_like_txn(txn: Txn, pattern: str) -> list[str]:
    # the literal % in the SQL text must survive pymysql's %-formatting
    txn.execute("SELECT name FROM items WHERE name LIKE ? OR name LIKE '100%' ORDER BY id", (pattern,))
    return [row[0] for row in txn.fetchall()]


def increment_txn(txn: Txn) -> int:
    txn.execute("UPDATE counter SET value = value + 1 WHERE id = ?", (1,))
    txn.execute("SELECT value FROM counter WHERE id = ?", (1,))
    return txn.fetchone()[0]


def versions_txn(txn: Txn) -> list[int]:
    txn.execute("SELECT version FROM schema_version ORDER BY version")
    return [row[0] for row in txn.fetchall()]


class DatabaseTestsMixin:
    """The same tests on both backends; subclasses say how to get a fresh database URL."""

    def database_url(self) -> str:
        raise NotImplementedError

    def start(self, url: str | None = None, migrations: tuple = MIGRATIONS) -> Database:
        if url is None:
            url = self._url = getattr(self, "_url", None) or self.database_url()
        db = Database.from_config(DatabaseConfig(url=url), Path(self.mktemp()), reactor, migrations=migrations)
        db.startService()
        self.addCleanup(lambda: db.stopService() if db.running else None)
        return db

    async def test_migrations_run_once_and_are_recorded(self) -> None:
        db = self.start()
        await db.when_ready()
        self.assertEqual(await db.run(versions_txn), [1, 2])
        db.stopService()
        again = self.start()
        await again.when_ready()
        self.assertEqual(await again.run(versions_txn), [1, 2])
        self.assertEqual(await again.run(increment_txn), 1)  # migration 2's row was not inserted twice

    async def test_requests_issued_before_ready_wait_for_the_migration(self) -> None:
        db = self.start()
        self.assertFalse(db.ready)
        row_id = await db.run(insert_item_txn, "early")
        self.assertTrue(db.ready)
        self.assertGreater(row_id, 0)

    async def test_parameters_are_never_sql(self) -> None:
        db = self.start()
        hostile = "x'); DROP TABLE items; --"
        for name in (hostile, "50% off", "100% sure", "a?b"):
            await db.run(insert_item_txn, name)
        self.assertEqual(await db.run(items_like_txn, "50%"), ["50% off", "100% sure"])
        self.assertEqual(await db.run(items_like_txn, hostile), [hostile, "100% sure"])
        self.assertEqual(await db.run(items_like_txn, "a?b"), ["100% sure", "a?b"])

    async def test_a_bad_query_fails_with_the_driver_error_not_unavailable(self) -> None:
        db = self.start()

        def broken_txn(txn: Txn) -> None:
            txn.execute("SELECT nope FROM no_such_table")

        with self.assertRaises(Exception) as caught:
            await db.run(broken_txn)
        self.assertNotIsInstance(caught.exception, DatabaseUnavailable)
        self.assertEqual(await db.run(insert_item_txn, "still works"), 1)

    async def test_a_failed_transaction_is_rolled_back(self) -> None:
        db = self.start()

        def half_txn(txn: Txn) -> None:
            insert_item_txn(txn, "never")
            raise ValueError("abort")

        with self.assertRaises(ValueError):
            await db.run(half_txn)
        self.assertEqual(await db.run(items_like_txn, "never"), [])

    async def test_concurrent_updates_are_not_lost(self) -> None:
        db = self.start()
        values = await gatherResults([db.run(increment_txn) for _ in range(200)])
        self.assertEqual(sorted(values), list(range(1, 201)))

    async def test_schema_newer_than_the_code_keeps_the_database_unready(self) -> None:
        db = self.start()
        await db.when_ready()

        def future_txn(txn: Txn) -> None:
            txn.execute("INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)", (99, "future", 0))

        await db.run(future_txn)
        db.stopService()
        old = self.start()
        with self.assertRaises(DatabaseUnavailable) as caught:
            await old.run(versions_txn)
        self.assertIn("schema version 99 is newer than this myservices knows (2)", str(caught.exception))
        self.assertFalse(old.ready)

    async def test_stop_closes_the_pool(self) -> None:
        db = self.start()
        await db.when_ready()
        db.stopService()
        self.assertIsNone(db.pool)
        with self.assertRaises(DatabaseUnavailable):
            await db.run(versions_txn)


class SQLiteDatabaseTests(DatabaseTestsMixin, TestCase):
    def database_url(self) -> str:
        return f"sqlite:///{Path(self.mktemp()).resolve()}/test.sqlite3"

    async def test_relative_path_is_created_in_the_data_dir(self) -> None:
        data_dir = Path(self.mktemp())
        db = Database.from_config(DatabaseConfig(url="sqlite:///sub/x.sqlite3"), data_dir, reactor, migrations=MIGRATIONS)
        db.startService()
        self.addCleanup(db.stopService)
        await db.when_ready()
        self.assertTrue((data_dir / "sub" / "x.sqlite3").exists())

    async def test_in_memory(self) -> None:
        db = self.start("sqlite:///:memory:")
        self.assertEqual(await db.run(insert_item_txn, "m"), 1)

    async def test_a_data_dir_that_cannot_be_created_is_explained_and_retried(self) -> None:
        # a file where the data directory's parent should be: real for every user, root included
        # (tests/test_daemon_process.py has the directory another user owns, with a real daemon)
        in_the_way = Path(self.mktemp()).resolve()
        in_the_way.parent.mkdir(parents=True, exist_ok=True)
        in_the_way.write_text("not a directory")
        data_dir = in_the_way / "data"
        db = Database.from_config(DatabaseConfig(url="sqlite:///x.sqlite3"), data_dir, reactor, migrations=MIGRATIONS)
        db.startService()  # does not raise: the directory is made in the pool's thread, and retried
        self.addCleanup(db.stopService)
        with self.assertRaises(DatabaseUnavailable) as caught:
            await db.run(insert_item_txn, "x")
        message = str(caught.exception)
        self.assertIn(f"cannot open the SQLite database {data_dir / 'x.sqlite3'}", message)
        self.assertIn(f"{in_the_way} is not a directory", message)
        self.assertIn("[daemon] data_dir", message)
        self.assertIsNotNone(db._retry)  # fixing it needs no restart
        in_the_way.unlink()
        in_the_way.mkdir()
        db._retry.reset(0)
        await db.when_ready()
        self.assertEqual(await db.run(insert_item_txn, "x"), 1)


@pytest.mark.mysql
class MySQLDatabaseTests(DatabaseTestsMixin, TestCase):
    def database_url(self) -> str:
        return mysql.create_database(self)

    async def test_a_connection_killed_by_the_server_is_replaced_without_failing_a_request(self) -> None:
        """What a MariaDB restart does to pooled connections: each is dead on the server side."""
        db = self.start()

        def connection_id_txn(txn: Txn) -> int:
            txn.execute("SELECT CONNECTION_ID()")
            return txn.fetchone()[0]

        first = await db.run(connection_id_txn)
        with mysql.server().connect() as admin, admin.cursor() as cur:
            cur.execute("KILL CONNECTION %s", (first,))
        second = await db.run(connection_id_txn)  # must not fail
        self.assertNotEqual(first, second)
        self.assertEqual(await db.run(insert_item_txn, "after reconnect"), 1)

    async def test_unreachable_server_fails_fast_with_a_clear_error_and_retries(self) -> None:
        db = self.start(f"mysql://root@127.0.0.1:{free_port()}/nothing")
        with self.assertRaises(DatabaseUnavailable) as caught:
            await db.run(versions_txn)
        self.assertIn("database is not ready", str(caught.exception))
        self.assertIn("Can't connect", str(caught.exception))
        self.assertIsNotNone(db._retry)  # a migration retry is scheduled; stopService cancels it

    async def test_a_deadlock_is_run_again_and_both_transactions_commit(self) -> None:
        db = self.start()
        await db.run(insert_item_txn, "a")
        await db.run(insert_item_txn, "b")
        # two transactions lock rows 1 and 2 in opposite orders: the server kills one as a deadlock
        barrier = threading.Barrier(2, timeout=20)
        attempts: list[str] = []

        def crossing_txn(txn: Txn, first: int, second: int, label: str) -> str:
            attempts.append(label)
            txn.execute("UPDATE items SET name = CONCAT(name, ?) WHERE id = ?", (label, first))
            if attempts.count(label) == 1:
                barrier.wait()  # both hold their first lock
            txn.execute("UPDATE items SET name = CONCAT(name, ?) WHERE id = ?", (label, second))
            return label

        results = await gatherResults([db.run(crossing_txn, 1, 2, "x"), db.run(crossing_txn, 2, 1, "y")])
        self.assertEqual(sorted(results), ["x", "y"])
        self.assertEqual(len(attempts), 3, "exactly one transaction was run again")
        names = await db.run(items_like_txn, "%")
        self.assertEqual(sorted(n[1:] for n in names), ["xy", "xy"] if attempts[-1] == "y" else ["yx", "yx"])

    async def test_utf8mb4_round_trip(self) -> None:
        db = self.start()
        name = "emoji \U0001f600 and 漢字"
        await db.run(insert_item_txn, name)
        self.assertEqual(await db.run(items_like_txn, name), ["100% sure", name][1:])

    def test_server_is_real(self) -> None:
        with mysql.server().connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            self.assertIsInstance(cur.fetchone()[0], str)
        self.assertTrue(issubclass(pymysql.err.OperationalError, Exception))


class PoolStopTests(TestCase):
    """Stopping the pool never joins its threads on the reactor thread."""

    async def test_stop_does_not_block_the_reactor_while_a_statement_runs(self) -> None:
        db = Database.from_config(
            DatabaseConfig(url=f"sqlite:///{Path(self.mktemp()).resolve()}/stop.sqlite3"), Path(self.mktemp()), reactor
        )
        db.startService()
        await db.when_ready()
        release = threading.Event()
        entered: Deferred[None] = Deferred()

        def stuck_txn(txn: object) -> None:
            reactor.callFromThread(entered.callback, None)
            release.wait(30)  # a statement on a hung server

        running = db.run(stuck_txn)
        await entered
        stopping = db.stopService()
        self.assertFalse(stopping.called)  # returned at once: the join waits in another thread
        turned = await deferLater(reactor, 0, lambda: True)  # and the reactor still turns
        self.assertTrue(turned)
        self.assertFalse(stopping.called)
        release.set()
        await stopping
        await running
