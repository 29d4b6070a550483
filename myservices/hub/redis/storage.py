"""What the Redis engine asks of the database: where a room's ids start, blocks of ids, and every message saved.

Ids. Redis hands out a room's ids (``top``) but never past ``reserved``, the
highest id the database has durably recorded in ``chat_rooms.last_id``. A
room Redis does not know (new, or Redis lost its data) is seeded from that
last id, so an id is never given twice; reserving a block costs one database
write per ``[hub] id_block`` messages.

Messages. The publishing process commits each message through the
L{HistoryStore} (group commit) after Redis delivered it. If that commit
fails, the message waits here (at most ``max_history_backlog`` of them) and is
written once the database answers. What a crashed process never saved is in
the room's stream, and the sweep at the next start of any process writes
every stream's messages that the database does not have.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from myservices.db import DatabaseUnavailable
from myservices.errors import DATABASE_UNAVAILABLE, RequestError
from myservices.hub.events import Message
from myservices.hub.history import HistoryRejected, HistoryStore
import myservices.hub.redis.scripts as scripts
from myservices.hub.redis.client import EngineUnavailable, RedisLink
from myservices.hub.redis.codec import decode_message, message_prefix
from myservices.metrics import Metrics

T = TypeVar("T")
SWEEP_CHUNK = 500


class EpochChanged(Exception):
    """Redis lost its data while a room was being seeded: seed it again."""


class Once:
    """Concurrent calls for one key share one run (a burst of publishes seeds a room once).

    Callers resume in the order they called, the first one first: publishes
    that waited for a seed or a reservation send their retries in the order
    they were made, so one connection's messages keep their order.
    """

    def __init__(self) -> None:
        self._running: dict[str, list[Deferred[Any]]] = {}

    async def run(self, key: str, fn: Callable[[], Awaitable[T]]) -> T:
        d: Deferred[T] = Deferred()
        waiting = self._running.get(key)
        if waiting is not None:
            waiting.append(d)
            return await d
        self._running[key] = [d]
        Deferred.fromCoroutine(self._run(key, fn))  # fires every caller's Deferred, in order; never fails
        return await d

    def join(self, key: str) -> Deferred[Any] | None:
        """A Deferred behind every caller so far if a run for C{key} is going on (fires with its outcome)."""
        waiting = self._running.get(key)
        if waiting is None:
            return None
        d: Deferred[Any] = Deferred()
        waiting.append(d)
        return d

    async def _run(self, key: str, fn: Callable[[], Awaitable[T]]) -> None:
        try:
            result = await fn()
        except Exception:
            failure = Failure()
            for w in self._running.pop(key):
                w.errback(failure)
            return
        for w in self._running.pop(key):
            w.callback(result)


def stored_form(m: Message) -> str:
    """A message as the publish script would have written it."""
    return message_prefix(m.room, m.ts, m.nick, m.text, m.account) + f"{m.id}}}"


class Storage:
    """Seeding and reserving ids, saving messages late, and the sweep (see the module docstring)."""

    log = Logger()

    def __init__(
        self,
        store: HistoryStore | None,
        link: RedisLink,
        prefix: str,
        history_size: int,
        id_block: int,
        max_backlog: int,
        metrics: Metrics,
        epoch: Callable[[], str | None],
    ) -> None:
        self.store = store
        self.link = link
        self.prefix = prefix
        self.history_size = history_size
        self.id_block = id_block
        self.max_backlog = max_backlog
        self.metrics = metrics
        self._epoch = epoch
        self._seeding = Once()
        self._reserving = Once()
        self.unsaved: list[Message] = []
        self.swept = store is None
        self._sweeping = False
        self._saving_late = False

    # --- ids ----------------------------------------------------------------------------------------

    async def seed(self, room: str) -> list[Message]:
        """Put C{room}'s last id (and its recent messages) into Redis unless it is there; those messages.

        Fails with DATABASE_UNAVAILABLE when the database does not answer, and
        with L{EpochChanged} when Redis lost its data meanwhile.
        """
        return await self._seeding.run(room, lambda: self._seed(room))

    async def load(self, room: str) -> list[Message]:
        """C{room}'s last messages in the database; DATABASE_UNAVAILABLE when it does not answer."""
        return (await self._load(room))[1]

    async def _load(self, room: str) -> tuple[int, list[Message]]:
        if self.store is None:
            return 0, []
        try:
            return await self.store.load(room, self.history_size)
        except DatabaseUnavailable as e:
            raise RequestError(DATABASE_UNAVAILABLE, f'room "{room}" cannot be loaded now; try again') from e

    async def _seed(self, room: str) -> list[Message]:
        epoch = self._epoch()  # taken before the read: a loss of Redis's data after it makes the read stale
        last_id, messages = await self._load(room)
        args = [self.prefix, room, epoch or "", last_id, self.history_size, *(stored_form(m) for m in messages)]
        if int(await self.link.eval(scripts.SEED, args)) < 0:
            raise EpochChanged(room)
        return messages

    async def settled(self, room: str) -> None:
        """Once a seed or reservation of C{room} going on now is over (behind the publishes that wait for it)."""
        for once in (self._seeding, self._reserving):
            d = once.join(room)
            if d is not None:
                try:
                    await d
                except Exception:  # noqa: S110 - the publish that started it reports it; ours retries anyway
                    pass

    async def reserve(self, room: str) -> None:
        """Reserve the next block of C{room}'s ids in the database, then let Redis hand them out."""
        await self._reserving.run(room, lambda: self._reserve(room))

    async def _reserve(self, room: str) -> None:
        top = int(await self.link.call("HGET", f"{self.prefix}room:{room}:meta", "top") or 0)
        reserved = top + self.id_block
        if self.store is not None:
            try:
                reserved = await self.store.reserve(room, reserved)
            except DatabaseUnavailable as e:
                raise RequestError(DATABASE_UNAVAILABLE, "the message was not saved nor delivered; send it again") from e
        await self.link.eval(scripts.RAISE_RESERVED, [self.prefix, room, reserved])

    # --- saving -------------------------------------------------------------------------------------

    @property
    def refusing(self) -> bool:
        """Whether publishing must be refused now: the database is failing or not keeping up."""
        return self.store is not None and self.store.failing

    async def save(self, message: Message) -> None:
        """Commit a message Redis has delivered; if that fails, keep it to write later. Never raises."""
        if self.store is None:
            return
        try:
            await self.store.commit(message)
        except HistoryRejected:
            return  # the database refuses this row for good (logged and counted by the store)
        except DatabaseUnavailable as e:
            self._keep(message, str(e))

    def _keep(self, message: Message, error: str) -> None:
        if len(self.unsaved) >= self.max_backlog:
            self.metrics.history_lost.inc()
            self.log.error(
                "history: message {id} of room {room} was delivered but cannot be saved now and max_history_backlog "
                "are waiting; it stays in Redis, where the sweep at the next start saves it",
                id=message.id, room=message.room,
            )
            return
        if not self.unsaved:
            self.log.warn(
                "history: delivered messages cannot be saved now ({error}); they are kept and written when the "
                "database answers", error=error,
            )
        self.unsaved.append(message)
        self.metrics.history_deferred.inc()

    async def save_late(self) -> None:
        """Write the messages kept after a failed commit, if the database answers now.

        While the history writer is failing, publishing is refused, so no
        commit would ever tell it the database is back: this write (even of
        nothing) does.
        """
        if self.store is None or self._saving_late or not (self.unsaved or self.store.failing):
            return
        batch = list(self.unsaved)
        self._saving_late = True
        try:
            await self.store.save_missing(batch)
        except DatabaseUnavailable:
            return
        finally:
            self._saving_late = False
        del self.unsaved[: len(batch)]  # those saved; later ones wait for the next try
        if batch:
            self.log.info("history: saved {count} delivered messages late", count=len(batch))

    async def sweep(self) -> None:
        """Save every message Redis's streams hold that the database has not (after a crash); at most once."""
        if self.swept or self.store is None or self._sweeping:
            return
        added = 0
        self._sweeping = True
        try:
            rooms = await self.link.call("SMEMBERS", self.prefix + "rooms")
            for room in sorted(rooms):
                _, _, _, payloads = await self.link.eval(scripts.READ, [self.prefix, room, 0])
                messages = [decode_message(p) for p in payloads]
                for i in range(0, len(messages), SWEEP_CHUNK):
                    added += await self.store.save_missing(messages[i : i + SWEEP_CHUNK])
        except (DatabaseUnavailable, EngineUnavailable) as e:
            self.log.warn("history: the sweep of Redis's messages will be tried again: {error}", error=e)
            return
        finally:
            self._sweeping = False
        self.swept = True
        self.metrics.history_swept.inc(added)
        if added:
            self.log.warn("history: saved {count} messages found in Redis only (a process stopped before "
                          "saving them)", count=added)
        else:
            self.log.info("history: every message Redis holds is in the database")
