"""The durable request counter: unique, increasing numbers, reserved from the database a block at a time."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from myservices.db.pool import Txn
from myservices.errors import DatabaseTimeout, DatabaseUnavailable

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


def give_back_txn(txn: Txn, name: str, top: int, to: int) -> bool:
    """Lower counter C{name} from C{top} to C{to} if nobody reserved past C{top} meanwhile; whether it did.

    For the unused end of this process's last block (C{to+1 .. top}), at a
    graceful stop: the next block, of any process, then starts at C{to+1}.
    """
    txn.execute("UPDATE counters SET value = ? WHERE name = ? AND value = ?", (to, name, top))
    return txn.rowcount == 1


def read_txn(txn: Txn, name: str) -> int:
    """The current value of counter C{name} (0 if it was never incremented)."""
    txn.execute("SELECT value FROM counters WHERE name = ?", (name,))
    row = txn.fetchone()
    return int(row[0]) if row else 0


Taker = tuple[Callable[[int], object], Callable[[Failure], object]]


class DurableCounter:
    """Hands out numbers that are unique and increasing across restarts and across processes.

    Numbers come from blocks of at least C{block} numbers that one
    transaction reserves in the database (C{counters.value += k}); a number
    is handed out only once the transaction that reserved its block has
    committed, so most requests are answered from memory and a crash skips
    at most the rest of a block. When half a block is left, the next one is
    reserved in the background. One process hands out its numbers in
    increasing order; processes sharing the database each take their own
    blocks, so their numbers are unique but not ordered by time across
    processes (with C{block=1} they are: each batch reserves just what it
    hands out). Requests that arrive while no number is reserved wait and
    are served together by the next reservation (group commit); it fails
    them all with the database's error. At most one reservation is in
    flight. A number whose requester went away is not used, so the sequence
    can have gaps but never repeats. A reservation that times out (its
    outcome unknown: it may still commit) hands out none of its numbers,
    and fails every request waiting for it. L{close} gives the unused end
    of the last block back when nobody reserved past it.
    """

    log = Logger()
    retry_ahead = 1.0  # seconds between two reservations ahead of need while they fail

    def __init__(
        self, database: Database, name: str, clock: IReactorTime, block: int = 1, max_batch: int = 10_000
    ) -> None:
        if block < 1:
            raise ValueError("block must be at least 1")
        self.database = database
        self.name = name
        self.clock = clock
        self.block = block
        self.max_batch = max_batch
        self._low_water = block // 2  # reserve the next block when fewer are left than this
        self._next = 1  # the next number of the current block ...
        self._end = 0  # ... and its last (none while _next > _end)
        self._spare: deque[tuple[int, int]] = deque()  # blocks reserved after the current one, in order
        self._last: int | None = None  # the last number handed out
        self._waiting: deque[Taker] = deque()
        self._reserving: Deferred[None] | None = None  # fires when the reservation in flight has ended
        self._scheduled = False
        self._closed = False
        self._ahead_failed_at: float | None = None  # when the last reservation ahead of need failed

    # --- taking numbers ---------------------------------------------------------------------------

    def take_now(self) -> int | None:
        """The next number if one is reserved and nobody waits before: for the hottest path, the counter page.

        None means: use L{take} (it waits for the next reservation).
        """
        n = self._next
        if n > self._end:
            if not self._spare:
                return None
            n, self._end = self._spare.popleft()
        self._next = n + 1
        self._last = n
        if self._end - n < self._low_water and self._reserving is None and not self._spare and not self._closed:
            self._reserve_ahead()
        return n

    def next(self) -> Deferred[int]:
        """The next number, once its block is committed; fails as the database call fails (e.g. DatabaseUnavailable)."""
        n = self.take_now()
        if n is not None:
            return succeed(n)
        d: Deferred[int] = Deferred()
        self.take(d.callback, d.errback)
        return d

    def take(self, on_number: Callable[[int], object], on_error: Callable[[Failure], object]) -> None:
        """Like L{next}, with callbacks instead of a Deferred; called at once when a number is reserved.

        Exceptions from either callback are logged and do not affect other takers.
        """
        n = self.take_now() if not self._waiting else None
        if n is not None:
            self._give(on_number, n)
            return
        self._waiting.append((on_number, on_error))
        if self._reserving is None and not self._scheduled:
            # start on the next reactor turn, so every request parsed in this turn shares the transaction
            self._scheduled = True
            self.clock.callLater(0, self._start_waiting)

    def current(self) -> Deferred[int]:
        """The last number this process handed out, read after the database answered.

        Before this process has handed out any, the highest number reserved
        by any process (every number handed out so far is at most that).
        Either way, the next number this process hands out is greater. Fails
        like L{next} when the database does not answer.
        """
        d = self.database.run(read_txn, self.name)
        return d.addCallback(lambda value: value if self._last is None else self._last)

    # --- reserving --------------------------------------------------------------------------------

    def _start_waiting(self) -> None:
        self._scheduled = False
        if self._waiting and self._reserving is None:
            self._reserve(min(len(self._waiting), self.max_batch))

    def _reserve_ahead(self) -> None:
        if self._ahead_failed_at is not None and self.clock.seconds() - self._ahead_failed_at < self.retry_ahead:
            return  # the last try failed: do not send every request's worth of attempts to a failing database
        self._reserve(0)

    def _reserve(self, waiting: int) -> None:
        """Reserve a block for the first C{waiting} takers (and, unless closed, at least C{block} numbers)."""
        k = waiting if self._closed else max(self.block, waiting)
        done = self._reserving = Deferred()
        d = self.database.run(increment_txn, self.name, k)
        d.addCallbacks(self._reserved, self._failed, callbackArgs=(k,), errbackArgs=(waiting,))
        d.addErrback(lambda f: self.log.failure("counter {name}: handing out a block failed", f, name=self.name))
        d.addBoth(self._reservation_done, done)

    def _reserved(self, last: int, k: int) -> None:
        first = last - k + 1
        if self._ahead_failed_at is not None:
            self._ahead_failed_at = None
            self.log.info("counter {name}: reserving blocks again", name=self.name)
        if self._next > self._end and not self._spare:
            self._next, self._end = first, last
        elif self._spare and self._spare[-1][1] + 1 == first:
            self._spare[-1] = (self._spare[-1][0], last)
        elif not self._spare and self._end + 1 == first:
            self._end = last  # contiguous: one range, so that close() can give all of it back
        else:
            self._spare.append((first, last))
        while self._waiting:
            n = self.take_now()
            if n is None:
                break
            self._give(self._waiting.popleft()[0], n)

    def _failed(self, failure: Failure, waiting: int) -> None:
        if not waiting:
            # a reservation ahead of need: the numbers left are still handed out, then requests get the error
            if not failure.check(DatabaseUnavailable):
                self.log.failure("counter {name}: reserving the next block failed", failure, name=self.name)
            elif self._ahead_failed_at is None:
                self.log.warn("counter {name}: reserving the next block failed: {error}; the numbers left are"
                              " still handed out", name=self.name, error=failure.getErrorMessage())
            self._ahead_failed_at = self.clock.seconds()
        if failure.check(DatabaseTimeout):
            # the requests queued behind it would only start a reservation with a fresh deadline against the
            # same unanswering database: they fail now, within their own timeout
            waiting = len(self._waiting)
        for _ in range(min(waiting, len(self._waiting))):
            _, on_error = self._waiting.popleft()
            try:
                on_error(failure)
            except Exception:
                self.log.failure("counter: a taker failed with the error")

    @classmethod
    def _give(cls, on_number: Callable[[int], object], n: int) -> None:
        try:
            on_number(n)
        except Exception:
            cls.log.failure("counter: a taker failed with its number")

    def _reservation_done(self, _: object, done: Deferred[None]) -> None:
        self._reserving = None
        if self._waiting:
            if not self._scheduled:
                self._start_waiting()
        elif self._end - self._next < self._low_water - 1 and not self._spare and not self._closed:
            self._reserve_ahead()  # numbers were taken below the mark while this one was in flight
        done.callback(None)  # last: whoever waits for it (settled) sees the next one in flight

    def settled(self) -> Deferred[None]:
        """Fires once no reservation is in flight (at once if none is)."""
        return Deferred.fromCoroutine(self._settled())

    async def _settled(self) -> None:
        while self._reserving is not None:
            await self._reserving  # ends within the database's request timeout

    # --- stopping ---------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop reserving ahead, and give back the unused end of the last block if nobody reserved past it.

        Later requests are still served, each batch reserving just what it
        needs. Never raises: a block that cannot be given back is skipped.
        """
        self._closed = True
        await self._settled()
        if self._spare:
            first, top = self._spare[-1]
            unused = first
        else:
            unused, top = self._next, self._end
        self._next, self._end = 1, 0
        self._spare.clear()
        if unused > top:
            return
        try:
            given = await self.database.run(give_back_txn, self.name, top, unused - 1)
        except Exception as e:
            self.log.info("counter {name}: numbers {first} to {top} are skipped: {error}",
                          name=self.name, first=unused, top=top, error=str(e))
            return
        if not given:
            self.log.info("counter {name}: numbers {first} to {top} are skipped (another process reserved after them)",
                          name=self.name, first=unused, top=top)


class CounterService(Service):
    """Closes the counter (L{DurableCounter.close}) when the daemon stops: after the front ends, before the database."""

    name = "counter"  # type: ignore[assignment]  # twisted's Service.name is unannotated (inferred as None)

    def __init__(self, counter: DurableCounter) -> None:
        self.counter = counter

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self.counter.close())
