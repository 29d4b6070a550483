"""Chat history: every message is committed to the database before anyone sees it (group commit).

The hub hands each new message to L{HistoryStore.commit} and delivers it only
when the returned Deferred fires. Messages that arrive while a transaction
is in flight are written together by the next one, so the cost is one
transaction per batch, not per message, and a message waits for at most one
transaction before its own. The same transaction records each room's
highest id in ``chat_rooms``, so a restart (even after ``kill -9``) continues
every room after the last id anyone was given, with history on or off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from myservices.db import Database, DatabaseUnavailable, Txn
from myservices.hub.events import Message
from myservices.metrics import Metrics

Row = tuple[str, int, float, str, str, int]


class HistoryRejected(Exception):
    """The database refused to store this one message (the others of its batch were stored)."""


def write_messages_txn(txn: Txn, rows: Sequence[Row], keep: int) -> None:
    """Insert a batch, record each room's highest id, and trim each room to its last C{keep} messages."""
    newest: dict[str, int] = {}
    for room, msg_id, *_ in rows:
        newest[room] = max(msg_id, newest.get(room, 0))
    if keep:
        # a message already stored (another daemon on the same database) is not an error
        verb = "INSERT OR IGNORE" if txn.dialect == "sqlite" else "INSERT IGNORE"
        txn.executemany(f"{verb} INTO chat_messages (room, id, ts, nick, text, account) VALUES (?, ?, ?, ?, ?, ?)", rows)
    txn.executemany(_upsert_last_id_sql(txn), sorted(newest.items()))
    if keep:
        for room in newest:
            _trim_txn(txn, room, keep)


def _trim_txn(txn: Txn, room: str, keep: int) -> None:
    """Keep the room's last C{keep} messages: counted, not by id, since ids may skip (Redis lost its data)."""
    txn.execute("SELECT id FROM chat_messages WHERE room = ? ORDER BY id DESC LIMIT 1 OFFSET ?", (room, keep))
    row = txn.fetchone()
    if row is not None:
        txn.execute("DELETE FROM chat_messages WHERE room = ? AND id <= ?", (room, row[0]))


def _upsert_last_id_sql(txn: Txn) -> str:
    if txn.dialect == "sqlite":
        return (
            "INSERT INTO chat_rooms (room, last_id) VALUES (?, ?)"
            " ON CONFLICT (room) DO UPDATE SET last_id = MAX(last_id, excluded.last_id)"
        )
    return (
        "INSERT INTO chat_rooms (room, last_id) VALUES (?, ?)"
        " ON DUPLICATE KEY UPDATE last_id = GREATEST(last_id, VALUES(last_id))"
    )


def reserve_ids_txn(txn: Txn, room: str, upto: int) -> int:
    """Record that ids up to C{upto} of C{room} may be handed out (never lowering); the room's last id now."""
    txn.execute(_upsert_last_id_sql(txn), (room, upto))
    txn.execute("SELECT last_id FROM chat_rooms WHERE room = ?", (room,))
    row = txn.fetchone()
    return int(row[0]) if row else upto


def save_missing_txn(txn: Txn, rows: Sequence[Row], keep: int) -> int:
    """Store the messages of C{rows} not stored yet (a message already there is left alone); how many were new."""
    if not rows or not keep:
        return 0
    verb = "INSERT OR IGNORE" if txn.dialect == "sqlite" else "INSERT IGNORE"
    txn.executemany(f"{verb} INTO chat_messages (room, id, ts, nick, text, account) VALUES (?, ?, ?, ?, ?, ?)", rows)
    added = max(txn.rowcount, 0)  # rows inserted, the ignored ones left out (sqlite3 and pymysql alike)
    newest: dict[str, int] = {}
    for room, msg_id, *_ in rows:
        newest[room] = max(msg_id, newest.get(room, 0))
    txn.executemany(_upsert_last_id_sql(txn), sorted(newest.items()))
    for room in newest:
        _trim_txn(txn, room, keep)
    return added


def load_room_txn(txn: Txn, room: str, limit: int) -> tuple[int, list[tuple[int, float, str, str, int]]]:
    """The room's highest id ever given and its last C{limit} messages (oldest first)."""
    rows: list[tuple[int, float, str, str, int]] = []
    if limit:
        txn.execute(
            "SELECT id, ts, nick, text, account FROM chat_messages WHERE room = ? ORDER BY id DESC LIMIT ?", (room, limit)
        )
        rows = list(reversed(txn.fetchall()))
    txn.execute("SELECT last_id FROM chat_rooms WHERE room = ?", (room,))
    row = txn.fetchone()
    last_id = max(int(row[0]) if row else 0, rows[-1][0] if rows else 0)
    return last_id, rows


class HistoryStore:
    """Writes messages in order, one transaction at a time, each batch as soon as the previous one is done.

    L{commit} fails with L{DatabaseUnavailable} when the batch could not be
    written (the database is down or did not answer in time) or when more
    than C{max_backlog} messages already wait (the database is not keeping
    up), and with L{HistoryRejected} for a message the database refused on
    its own; a batch that fails for any other reason is written again one
    message at a time, so one bad row never holds up the others.
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
        self.metrics = metrics if metrics is not None else Metrics()
        self._queue: list[tuple[Message, Deferred[None]]] = []
        self._writing = 0
        self._timer: IDelayedCall | None = None
        self._write: Deferred[None] | None = None
        self._failing = False

    @property
    def failing(self) -> bool:
        """Whether the last batch could not be written (the database is down) or the backlog is full."""
        return self._failing or self.backlog >= self.max_backlog

    @property
    def backlog(self) -> int:
        """Messages waiting to be committed, the batch being written included."""
        return len(self._queue) + self._writing

    def commit(self, message: Message) -> Deferred[None]:
        """Fires once C{message} is committed; fails if it is not (see the class docstring)."""
        if self.backlog >= self.max_backlog:
            self.metrics.history_dropped.inc()
            return fail(DatabaseUnavailable(f"the database is not keeping up ({self.backlog} messages waiting)"))
        d: Deferred[None] = Deferred()
        self._queue.append((message, d))
        self._schedule()
        return d

    def _schedule(self) -> None:
        if self._timer is not None or self._write is not None or not self._queue:
            return
        delay = 0.0 if len(self._queue) >= self.batch_size else self.flush_interval
        # even at 0, the next reactor turn: every message published in this turn shares the transaction
        self._timer = self.clock.callLater(delay, self._write_batch)

    def _write_batch(self) -> Deferred[None]:
        self._timer = None
        batch, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size :]
        self._writing = len(batch)
        d = self._write = Deferred.fromCoroutine(self._store(batch))
        d.addErrback(lambda f: self.log.failure("history: writing a batch failed", f))
        d.addBoth(self._written)
        return d

    async def _store(self, batch: list[tuple[Message, Deferred[None]]]) -> None:
        try:
            await self.database.run(write_messages_txn, [_row(m) for m, _ in batch], self.keep)
        except DatabaseUnavailable as e:
            self._note_failing(str(e))
            self._settle(batch, Failure(e))
            return
        except Exception:
            if len(batch) == 1:
                self._reject(*batch[0], Failure())
                return
            # one bad row must not hold up the others: find it by writing them one at a time
            for entry in batch:
                await self._store([entry])
            return
        self._note_writing()
        self.metrics.history_written.inc(len(batch))
        self._settle(batch, None)

    def _reject(self, message: Message, d: Deferred[None], failure: Failure) -> None:
        self.metrics.history_rejected.inc()
        self.log.error(
            "history: the database refused message {id} of room {room}; not delivered: {error}",
            id=message.id, room=message.room, error=failure.getErrorMessage(),
        )
        d.errback(HistoryRejected(failure.getErrorMessage()))

    @staticmethod
    def _settle(batch: list[tuple[Message, Deferred[None]]], failure: Failure | None) -> None:
        # in id order: the hub delivers each message as its Deferred fires
        for _, d in batch:
            if failure is None:
                d.callback(None)
            else:
                d.errback(failure)

    def _note_failing(self, error: str) -> None:
        if not self._failing:
            self._failing = True
            self.log.error("history: cannot write ({error}); publishing fails until it can", error=error)

    def _note_writing(self) -> None:
        if self._failing:
            self._failing = False
            self.log.info("history: writing again")

    def _written(self, _: Any) -> None:
        self._writing, self._write = 0, None
        self._schedule()

    async def flush(self) -> None:
        """Wait until every message handed to L{commit} so far is committed or failed (a graceful stop)."""
        while self._write is not None or self._queue:
            if self._write is None:
                self._cancel_timer()
                self._write_batch()
            if self._write is not None:
                await self._write

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    async def reserve(self, room: str, upto: int) -> int:
        """Durably record that ids up to C{upto} may be handed out in C{room}; its last id now (at least C{upto})."""
        return await self.database.run(reserve_ids_txn, room, upto)

    async def save_missing(self, messages: Sequence[Message]) -> int:
        """Store those of C{messages} not stored yet, once each; how many were new.

        A success means the database answers again: L{failing} is cleared, as
        by a batch of L{commit} (the Redis engine commits nothing while failing).
        """
        added = await self.database.run(save_missing_txn, [_row(m) for m in messages], self.keep)
        self._note_writing()
        return added

    async def load(self, room: str, limit: int) -> tuple[int, list[Message]]:
        """The highest id C{room} has given, and its last C{limit} stored messages."""
        last_id, rows = await self.database.run(load_room_txn, room, min(limit, self.keep))
        return last_id, [
            Message(room=room, id=i, ts=ts, nick=nick, text=text, account=bool(account))
            for i, ts, nick, text, account in rows
        ]


def _row(m: Message) -> Row:
    return (m.room, m.id, m.ts, m.nick, m.text, int(m.account))
