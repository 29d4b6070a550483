"""The database service: owns the one connection pool, migrates at start, runs ``*_txn`` functions."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from myservices.db.config import DatabaseConfig, DatabaseUrl, parse_database_url
from myservices.db.migrations import MIGRATIONS, Migration, SchemaTooNew, migrate_txn
from myservices.db.pool import Dialect, Pool, Ticket, Txn, is_connection_error, is_transient_conflict, make_pool
from myservices.errors import DatabaseTimeout, DatabaseUnavailable
from myservices.metrics import Metrics
from myservices.startup import StartupError

T = TypeVar("T")


def _in_txn(cursor: Any, dialect: Dialect, ticket: Ticket, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    ticket.check()  # the caller gave up while this thread connected: do not start
    result = fn(Txn(cursor, dialect), *args, **kwargs)
    ticket.check()  # ... or while it ran: roll back instead of committing what nobody receives
    return result


class Database(Service):
    """The one L{adbapi.ConnectionPool} of the daemon.

    Attach it to the root service before the services that use it, so it
    starts first and stops last. The pool is opened in C{startService} and
    the schema migrated; C{run} waits for that, so the database is usable
    from the first request. If the database cannot be reached at start,
    migration is retried with backoff and C{run} fails fast with
    L{DatabaseUnavailable} meanwhile. Whatever holds a call up, it ends
    within C{request_timeout} (L{DatabaseTimeout}). C{clock} (default: the
    reactor) schedules the deadlines and retries.
    """

    log = Logger()
    name = "database"  # type: ignore[assignment]  # twisted's Service.name is unannotated (inferred as None)
    retry_initial = 0.5
    conflict_retries = 3
    retry_max = 30.0

    def __init__(
        self,
        cfg: DatabaseConfig,
        url: DatabaseUrl,
        reactor: Any,
        migrations: Sequence[Migration] = MIGRATIONS,
        metrics: Metrics | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics if metrics is not None else Metrics()
        self.url = url
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._migrations = migrations
        self.pool: Pool | None = None
        self.dialect: Dialect = "sqlite" if url.scheme == "sqlite" else "mysql"
        self.ready = False
        self.last_error: str | None = None
        self._waiters: list[Deferred[None]] = []  # requests waiting for the first migration attempt
        self._ready_waiters: list[Deferred[None]] = []
        self._attempt_in_flight = False
        self._retry: IDelayedCall | None = None
        self._delay = self.retry_initial
        self._answering = True  # False from a timeout until the next answer (logged once each way)

    @classmethod
    def from_config(cls, cfg: DatabaseConfig, data_dir: os.PathLike[str] | str, reactor: Any, **kw: Any) -> Database:
        """Build from the validated config (C{data_dir} anchors relative SQLite paths)."""
        return cls(cfg, parse_database_url(cfg.url, Path(data_dir), cfg.password), reactor, **kw)

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # twisted's Service is unannotated
        if self.url.scheme == "sqlite" and self.url.path != ":memory:":
            directory = os.path.dirname(self.url.path)
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as e:
                self.log.critical(
                    "database {url}: cannot create its directory {directory}: {reason}",
                    url=self.url.safe, directory=directory, reason=e.strerror,
                )
                raise StartupError(f"database {self.url.safe}: cannot create its directory {directory}") from None
        self.pool, self.dialect = make_pool(self.url, self.cfg, self._reactor)
        self.metrics.db_pool_size.set(self.pool.max)
        self.metrics.db_pool_open.set_function(lambda: len(self.pool.connections) if self.pool is not None else 0)
        self.log.info("database {url}: pool opened", url=self.url.safe)
        self._attempt_migration()

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]  # twisted's Service is unannotated
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        pool, self.pool = self.pool, None
        self.ready = False
        self.metrics.db_ready.set(0)
        self._fire_waiters()
        if pool is None:
            return succeed(None)
        for trigger in ("shutdownID", "startID"):  # the pool's own reactor triggers, removed on the reactor thread
            if getattr(pool, trigger, None):
                self._reactor.removeSystemEventTrigger(getattr(pool, trigger))
                setattr(pool, trigger, None)
        # finalClose joins the pool's threads, which may be inside a statement on a hung server
        # (up to query_timeout): never on the reactor thread
        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), pool.finalClose)
        d.addCallback(lambda _: self.log.info("database {url}: pool closed", url=self.url.safe))
        return d

    # --- readiness --------------------------------------------------------

    def when_ready(self) -> Deferred[None]:
        """Fires once the schema is migrated (never fails; it just waits)."""
        if self.ready:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._ready_waiters.append(d)
        return d

    def _attempt_migration(self) -> None:
        self._retry = None
        self._attempt_in_flight = True
        assert self.pool is not None
        # no deadline: DDL on a big table may take long; requests waiting for it have theirs
        ticket = Ticket()  # never abandoned
        d = self.pool.run_transaction(ticket, _in_txn, self.dialect, ticket, migrate_txn, (self._migrations,), {})
        d.addCallbacks(self._migrated, self._migration_failed)

    def _migrated(self, applied: list[int]) -> None:
        self._attempt_in_flight = False
        if not self.running:
            return
        self.ready = True
        self.metrics.db_ready.set(1)
        self.last_error = None
        self.log.info(
            "database {url}: schema ready (applied {applied})",
            url=self.url.safe, applied=", ".join(map(str, applied)) or "nothing new",
        )
        self._fire_waiters()
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.callback(None)

    def _migration_failed(self, failure: Any) -> None:
        self._attempt_in_flight = False
        self.last_error = failure.getErrorMessage()
        if not self.running:
            pass
        elif failure.check(SchemaTooNew):
            # retrying cannot help; stay unready so readiness checks say why
            self.log.critical("database {url}: {error}", url=self.url.safe, error=self.last_error)
        else:
            self.log.error(
                "database {url}: schema migration failed, retrying in {delay}s: {error}",
                url=self.url.safe, delay=self._delay, error=self.last_error,
            )
            self._retry = self._clock.callLater(self._delay, self._attempt_migration)
            self._delay = min(self._delay * 2, self.retry_max)
        self._fire_waiters()

    def _fire_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    # --- running transactions --------------------------------------------

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """Run C{fn(txn, *args, **kwargs)} in a pool thread, in one transaction.

        Fails with L{DatabaseUnavailable} when the database cannot be reached,
        and with L{DatabaseTimeout} (a L{DatabaseUnavailable}) when there is
        no result within C{request_timeout}, whatever held it up: the
        start-up migration, a free pool thread, a reconnect, the statements,
        conflict retries. A transaction that timed out is rolled back or never
        started, unless it was already committing: its outcome is unknown.
        Other errors (a bad query) pass through unchanged. A transaction the
        server rolls back as a deadlock is run again (up to
        C{conflict_retries} times), so C{fn} must have no effects outside the
        database.
        """
        operation = fn.__name__.removesuffix("_txn")
        ticket = Ticket()
        d = Deferred.fromCoroutine(self._run(ticket, operation, fn, args, kwargs))
        # on timeout the coroutine is cancelled: the Deferred it awaits (a waiter or the pool's)
        # eats the late result, and the ticket tells the worker thread to drop the work
        return d.addTimeout(self.cfg.request_timeout, self._clock, onTimeoutCancel=partial(self._timed_out, operation))

    def _timed_out(self, operation: str, result: Any, timeout: float) -> Any:
        if not (isinstance(result, Failure) and result.check(CancelledError)):
            return result
        self.metrics.db_errors.labels(operation, "timeout").inc()
        if self._answering:
            self._answering = False
            self.log.warn(
                "database {url}: no answer within {timeout}s ({operation}); requests time out until it answers",
                url=self.url.safe, timeout=timeout, operation=operation,
            )
        raise DatabaseTimeout(f"the database did not answer within {timeout:g}s")

    def _answered(self) -> None:
        if not self._answering:
            self._answering = True
            self.log.info("database {url}: answering again", url=self.url.safe)

    async def _run(self, ticket: Ticket, operation: str, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        try:
            if not self.ready and self._attempt_in_flight:
                # the first requests wait for the start-up migration instead of failing
                d: Deferred[None] = Deferred()
                self._waiters.append(d)
                await d
            if not self.ready or self.pool is None:
                self.metrics.db_errors.labels(operation, "unavailable").inc()
                detail = f": {self.last_error}" if self.last_error else ""
                raise DatabaseUnavailable(f"database is not ready{detail}")
            return await self._measured(ticket, operation, fn, args, kwargs)
        except CancelledError:
            ticket.abandon()  # timed out or cancelled by the caller
            raise

    async def _measured(self, ticket: Ticket, operation: str, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        metrics = self.metrics
        started = self._clock.seconds()
        metrics.db_in_flight.inc()
        try:
            result = await self._interact(ticket, operation, fn, args, kwargs)
        except CancelledError:
            raise
        except Exception as e:
            if is_connection_error(e):
                metrics.db_errors.labels(operation, "unavailable").inc()
                raise DatabaseUnavailable(f"database unavailable: {e}") from e
            metrics.db_errors.labels(operation, "error").inc()
            self._answered()
            raise
        finally:
            metrics.db_in_flight.dec()
            metrics.db_query_seconds.labels(operation).observe(self._clock.seconds() - started)
        self._answered()
        return result

    async def _interact(self, ticket: Ticket, operation: str, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        assert self.pool is not None
        retries = 0
        while True:
            try:
                result: T = await self.pool.run_transaction(ticket, _in_txn, self.dialect, ticket, fn, args, kwargs)
                return result
            except Exception as e:
                # the server rolled the transaction back and asks for it to be run again
                if retries >= self.conflict_retries or not is_transient_conflict(e):
                    raise
                retries += 1
                self.log.info("{operation}: {error}; running it again", operation=operation, error=e)
