"""The durable counter's blocks on a real SQLite database, without HTTP (the processes: test_counter_processes.py)."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase

from myservices.counter import DurableCounter, read_txn
from myservices.db import Database, DatabaseUnavailable
from myservices.db.config import DatabaseConfig


def increments(db: Database) -> float:
    """Transactions that reserved numbers so far."""
    return db.metrics.registry.get_sample_value("myservices_db_query_seconds_count", {"operation": "increment"}) or 0


class BlockTests(TestCase):
    async def database(self, directory: Path | None = None) -> Database:
        directory = directory or Path(self.mktemp()).resolve()
        db = Database.from_config(DatabaseConfig(url="sqlite:///c.sqlite3"), directory, reactor)
        db.startService()
        self.addCleanup(lambda: db.stopService() if db.running else None)
        await db.when_ready()
        return db

    async def test_one_transaction_reserves_a_block_that_serves_later_requests_from_memory(self) -> None:
        db = await self.database()
        counter = DurableCounter(db, "tests", reactor, block=100)
        self.assertIsNone(counter.take_now())  # nothing reserved yet
        self.assertEqual(await gatherResults([counter.next() for _ in range(3)]), [1, 2, 3])
        self.assertEqual(await db.run(read_txn, "tests"), 100)  # committed before 1 was handed out
        self.assertEqual([counter.take_now() for _ in range(40)], list(range(4, 44)))
        self.assertEqual(increments(db), 1)
        self.assertEqual(await counter.current(), 43)  # the last number this process handed out

    async def test_the_next_block_is_reserved_ahead_and_continues_the_sequence(self) -> None:
        db = await self.database()
        counter = DurableCounter(db, "tests", reactor, block=10)
        self.assertEqual(await counter.next(), 1)
        self.assertEqual([counter.take_now() for _ in range(5)], [2, 3, 4, 5, 6])  # 4 left: the next block is asked for
        await counter.settled()
        self.assertEqual(increments(db), 2)
        # served without waiting, across the two blocks
        self.assertEqual([counter.take_now() for _ in range(14)], list(range(7, 21)))
        await counter.settled()
        self.assertEqual(await db.run(read_txn, "tests"), 30)  # the third, reserved when the second ran low

    async def test_more_waiting_requests_than_a_block_get_one_block_for_all(self) -> None:
        db = await self.database()
        counter = DurableCounter(db, "tests", reactor, block=4)
        self.assertEqual(await gatherResults([counter.next() for _ in range(9)]), list(range(1, 10)))
        self.assertEqual(increments(db), 1)
        await counter.settled()  # the next block, reserved ahead since none is left
        self.assertEqual(counter.take_now(), 10)

    async def test_close_gives_back_the_unused_end_of_the_block(self) -> None:
        db = await self.database()
        counter = DurableCounter(db, "tests", reactor, block=100)
        self.assertEqual(await gatherResults([counter.next() for _ in range(3)]), [1, 2, 3])
        await counter.close()
        self.assertEqual(await db.run(read_txn, "tests"), 3)
        # a later process continues without a gap
        self.assertEqual(await DurableCounter(db, "tests", reactor, block=100).next(), 4)
        # the closed counter still serves, a transaction per batch, nothing reserved ahead
        self.assertEqual(await counter.next(), 104)
        self.assertEqual(await db.run(read_txn, "tests"), 104)

    async def test_close_keeps_the_block_when_another_process_reserved_after_it(self) -> None:
        db = await self.database()
        first = DurableCounter(db, "tests", reactor, block=10)
        second = DurableCounter(db, "tests", reactor, block=10)
        self.assertEqual(await first.next(), 1)
        self.assertEqual(await second.next(), 11)
        await first.close()  # 2 to 10 are skipped: lowering the value would hand out 11 to 20 again
        self.assertEqual(await db.run(read_txn, "tests"), 20)
        self.assertEqual([second.take_now() for _ in range(3)], [12, 13, 14])
        self.assertEqual(await DurableCounter(db, "tests", reactor, block=10).next(), 21)

    async def test_with_the_database_down_the_reserved_block_serves_then_requests_fail_and_no_number_repeats(
        self,
    ) -> None:
        db = await self.database()
        counter = DurableCounter(db, "tests", reactor, block=6)
        self.assertEqual(await counter.next(), 1)
        await db.stopService()
        # acknowledged numbers are durable: their block was committed before the first of them went out
        served = [await counter.next() for _ in range(5)]
        self.assertEqual(served, [2, 3, 4, 5, 6])
        self.flushLoggedErrors(DatabaseUnavailable)
        failures = await gatherResults([counter.next().addErrback(lambda f: f.value) for _ in range(3)])
        self.assertTrue(all(isinstance(f, DatabaseUnavailable) for f in failures), failures)
        db.startService()
        await db.when_ready()
        after = await gatherResults([counter.next() for _ in range(3)])
        self.assertEqual(after, [7, 8, 9])  # above every number handed out: none is reused
