"""The durable request counter: unique, increasing numbers from the database, with group commit."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from myservices.db.pool import Txn

if TYPE_CHECKING:
    from myservices.db import Database


def increment_txn(txn: Txn, name: str, k: int) -> int:
    """Add C{k} to counter C{name} and return the new value; the block is C{value-k+1 .. value}.

    The row lock held until commit makes concurrent increments from several
    daemons on one MySQL database hand out disjoint blocks.
    """
    for _ in range(2):
        if txn.dialect == "mysql":
            # LAST_INSERT_ID(expr) hands the new value back in the OK packet: no second round trip
            txn.execute("UPDATE counters SET value = LAST_INSERT_ID(value + ?) WHERE name = ?", (k, name))
            if txn.rowcount == 1:
                return int(txn.lastrowid or 0)
            txn.execute("INSERT IGNORE INTO counters (name, value) VALUES (?, 0)", (name,))
        else:
            txn.execute("UPDATE counters SET value = value + ? WHERE name = ? RETURNING value", (k, name))
            row = txn.fetchone()
            if row is not None:
                return int(row[0])
            txn.execute("INSERT OR IGNORE INTO counters (name, value) VALUES (?, 0)", (name,))
    raise RuntimeError(f"counter {name!r} could not be created")


def read_txn(txn: Txn, name: str) -> int:
    """The current value of counter C{name} (0 if it was never incremented)."""
    txn.execute("SELECT value FROM counters WHERE name = ?", (name,))
    row = txn.fetchone()
    return int(row[0]) if row else 0


class DurableCounter:
    """Hands out numbers that are unique and increasing across restarts and across daemons.

    A number is handed out only after the transaction that reserved it has
    committed. Requests arriving while a transaction is in flight wait and are
    then served together by the next one (group commit): one database round
    trip per batch, not per request. A number whose requester went away is
    simply not used, so the sequence can have gaps but never repeats.
    """

    log = Logger()

    def __init__(self, database: Database, name: str, max_batch: int = 10_000) -> None:
        self.database = database
        self.name = name
        self.max_batch = max_batch
        self._waiting: deque[Deferred[int]] = deque()
        self._in_flight = False

    def next(self) -> Deferred[int]:
        """The next number, once committed; fails as the database call fails (e.g. DatabaseUnavailable)."""
        d: Deferred[int] = Deferred()
        self._waiting.append(d)
        if not self._in_flight:
            self._start_batch()
        return d

    def current(self) -> Deferred[int]:
        """The last number handed out (or reserved), without taking one."""
        return self.database.run(read_txn, self.name)

    def _start_batch(self) -> None:
        n = min(len(self._waiting), self.max_batch)
        batch = [self._waiting.popleft() for _ in range(n)]
        self._in_flight = True
        d = self.database.run(increment_txn, self.name, n)
        d.addCallbacks(self._reserved, self._failed, callbackArgs=(batch,), errbackArgs=(batch,))
        d.addBoth(self._batch_done)

    @staticmethod
    def _reserved(last: int, batch: list[Deferred[int]]) -> None:
        for i, d in enumerate(batch, start=last - len(batch) + 1):
            d.callback(i)

    @staticmethod
    def _failed(failure: object, batch: list[Deferred[int]]) -> None:
        for d in batch:
            d.errback(failure)

    def _batch_done(self, result: object) -> None:
        if isinstance(result, Failure):
            self.log.failure("counter {name}: handing out a batch failed", result, name=self.name)
        self._in_flight = False
        if self._waiting:
            self._start_batch()
