"""The durable request counter: unique, increasing numbers from the database, with group commit."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from myservices.db.pool import Txn
from myservices.errors import DatabaseTimeout

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


Taker = tuple[Callable[[int], object], Callable[[Failure], object]]


class DurableCounter:
    """Hands out numbers that are unique and increasing across restarts and across daemons.

    A number is handed out only after the transaction that reserved it has
    committed. Requests that arrive while transactions are in flight wait and
    are then served together by the next one (group commit): one database
    round trip per batch, not per request. At most C{max_in_flight}
    transactions run at once; a second one queues behind the first's row
    lock (or the single SQLite connection), so it always gets the later block
    and the database does not sit idle between batches. A number whose
    requester went away is not used, so the sequence can have gaps but never
    repeats. A batch that times out (its outcome unknown: it may still
    commit) hands out none of its numbers, and fails the requests queued
    behind it too.
    """

    log = Logger()
    max_in_flight = 2

    def __init__(self, database: Database, name: str, clock: IReactorTime, max_batch: int = 10_000) -> None:
        self.database = database
        self.name = name
        self.clock = clock
        self.max_batch = max_batch
        self._waiting: deque[Taker] = deque()
        self._in_flight = 0
        self._scheduled = False

    def next(self) -> Deferred[int]:
        """The next number, once committed; fails as the database call fails (e.g. DatabaseUnavailable)."""
        d: Deferred[int] = Deferred()
        self.take(d.callback, d.errback)
        return d

    def take(self, on_number: Callable[[int], object], on_error: Callable[[Failure], object]) -> None:
        """Like L{next}, with callbacks instead of a Deferred: for the hottest path, the HTTP counter page.

        Exceptions from either callback are logged and do not affect other takers.
        """
        self._waiting.append((on_number, on_error))
        if self._in_flight < self.max_in_flight and not self._scheduled:
            self._schedule_batch()

    def current(self) -> Deferred[int]:
        """The last number handed out (or reserved), without taking one."""
        return self.database.run(read_txn, self.name)

    def _schedule_batch(self) -> None:
        # start on the next reactor turn, so every request parsed in this turn shares the transaction:
        # each transaction costs a round trip to a pool thread, whatever its size
        self._scheduled = True
        self.clock.callLater(0, self._start_batch)

    def _start_batch(self) -> None:
        self._scheduled = False
        n = min(len(self._waiting), self.max_batch)
        batch = [self._waiting.popleft() for _ in range(n)]
        self._in_flight += 1
        d = self.database.run(increment_txn, self.name, n)
        d.addCallbacks(self._reserved, self._failed, callbackArgs=(batch,), errbackArgs=(batch,))
        d.addErrback(lambda f: self.log.failure("counter {name}: handing out a batch failed", f, name=self.name))
        d.addBoth(self._batch_done)

    @staticmethod
    def _reserved(last: int, batch: list[Taker]) -> None:
        first = last - len(batch) + 1
        for i, (on_number, _) in enumerate(batch):
            try:
                on_number(first + i)
            except Exception:
                DurableCounter.log.failure("counter: a taker failed with its number")

    def _failed(self, failure: Failure, batch: list[Taker]) -> None:
        if failure.check(DatabaseTimeout):
            # the requests queued behind it would only start a batch with a fresh deadline against the same
            # unanswering database: they fail now, within their own timeout
            batch = batch + list(self._waiting)
            self._waiting.clear()
        for _, on_error in batch:
            try:
                on_error(failure)
            except Exception:
                DurableCounter.log.failure("counter: a taker failed with the error")

    def _batch_done(self, _: object) -> None:
        self._in_flight -= 1
        if self._waiting and not self._scheduled:
            self._schedule_batch()
