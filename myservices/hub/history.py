"""Chat history: the last N messages per room, written in batches so that persisting never delays fan-out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from myservices.db import Database, Txn
from myservices.hub.events import Message
from myservices.metrics import Metrics


def write_messages_txn(txn: Txn, rows: Sequence[tuple[str, int, float, str, str]], keep: int) -> None:
    """Insert a batch and trim each room it touched to its last C{keep} messages."""
    # a message already stored (another daemon on the same database) is not an error
    verb = "INSERT OR IGNORE" if txn.dialect == "sqlite" else "INSERT IGNORE"
    txn.executemany(f"{verb} INTO chat_messages (room, id, ts, nick, text) VALUES (?, ?, ?, ?, ?)", rows)
    newest: dict[str, int] = {}
    for room, msg_id, *_ in rows:
        newest[room] = max(msg_id, newest.get(room, 0))
    for room, msg_id in newest.items():
        txn.execute("DELETE FROM chat_messages WHERE room = ? AND id <= ?", (room, msg_id - keep))


def recent_messages_txn(txn: Txn, room: str, limit: int) -> list[tuple[int, float, str, str]]:
    txn.execute("SELECT id, ts, nick, text FROM chat_messages WHERE room = ? ORDER BY id DESC LIMIT ?", (room, limit))
    return list(reversed(txn.fetchall()))


class HistoryStore:
    """Keeps the last C{keep} messages of every room in the database.

    L{record} only queues; a timer writes the queue in batches of up to
    C{batch_size} rows, one transaction each, one at a time. While the
    database is down the queue is kept (at most C{max_backlog} messages; the
    oldest beyond that are dropped and counted) and retried. L{load} merges
    what is stored with what is still queued, so a message delivered a moment
    ago is in the history of the next joiner. L{flush} writes everything
    before a graceful stop.
    """

    log = Logger()

    def __init__(
        self,
        database: Database,
        clock: IReactorTime,
        keep: int,
        flush_interval: float,
        batch_size: int,
        max_backlog: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.database = database
        self.clock = clock
        self.keep = keep
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.max_backlog = max_backlog
        self.metrics = metrics
        self._queue: list[Message] = []
        self._writing: list[Message] = []
        self._timer: IDelayedCall | None = None
        self._write: Deferred[None] | None = None
        self._failing = False

    @property
    def backlog(self) -> int:
        """Messages not yet known to be stored."""
        return len(self._queue) + len(self._writing)

    def record(self, message: Message) -> None:
        if self.keep == 0:
            return
        self._queue.append(message)
        overflow = self.backlog - self.max_backlog
        if overflow > 0:
            del self._queue[:overflow]
            if self.metrics:
                self.metrics.history_dropped.inc(overflow)
        self._schedule()

    def _schedule(self, delay: float | None = None) -> None:
        if self._timer is not None or self._write is not None or not self._queue:
            return
        if delay is None:
            delay = 0 if len(self._queue) >= self.batch_size else self.flush_interval
        self._timer = self.clock.callLater(delay, self._write_batch)

    def _write_batch(self) -> Deferred[None]:
        self._timer = None
        batch, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size :]
        self._writing = batch
        rows = [(m.room, m.id, m.ts, m.nick, m.text) for m in batch]
        d = self._write = self.database.run(write_messages_txn, rows, self.keep)
        # the callbacks may run at once (a database that is down fails fast) and reset self._write
        d.addCallbacks(self._written, self._not_written, callbackArgs=(batch,), errbackArgs=(batch,))
        return d

    def _written(self, _: Any, batch: list[Message]) -> None:
        self._writing, self._write = [], None
        if self._failing:
            self._failing = False
            self.log.info("history: writing again ({backlog} queued)", backlog=self.backlog)
        if self.metrics:
            self.metrics.history_written.inc(len(batch))
        self._schedule()

    def _not_written(self, failure: Any, batch: list[Message]) -> None:
        self._writing, self._write = [], None
        self._queue[:0] = batch  # keep order; retried after the interval
        if not self._failing:
            self._failing = True
            self.log.error(
                "history: cannot write ({error}); keeping {backlog} messages and retrying",
                error=failure.getErrorMessage(), backlog=self.backlog,
            )
        self._schedule(max(self.flush_interval, 1.0))

    async def flush(self) -> None:
        """Write everything queued now; used on a graceful stop."""
        self._cancel_timer()
        if self._write is not None:
            await self._write
        while self._queue:
            self._cancel_timer()
            await self._write_batch()
            if self._failing:
                break
        self._cancel_timer()  # a write schedules the next one; nothing runs after a flush
        if self._queue:
            self.log.error("history: {count} messages could not be saved before stopping", count=len(self._queue))

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    async def load(self, room: str, limit: int) -> list[Message]:
        """The last C{limit} messages of C{room}, stored or still queued."""
        if self.keep == 0 or limit == 0:
            return []
        rows = await self.database.run(recent_messages_txn, room, limit)
        stored = [Message(room=room, id=i, ts=ts, nick=nick, text=text) for i, ts, nick, text in rows]
        newest = stored[-1].id if stored else 0
        unsaved = [m for m in self._writing + self._queue if m.room == room and m.id > newest]
        return (stored + unsaved)[-limit:]
