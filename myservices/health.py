"""Readiness: is every listener bound, does the database answer in time, can the hub's engine be reached?"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from myservices.db.pool import Txn

if TYPE_CHECKING:
    from myservices.db import Database
    from myservices.listeners import ListenerService

log = Logger()

# what /readyz says when the database check fails; the reason itself goes to the log
DATABASE_UNAVAILABLE_REASON = "database unavailable"
# user:password@ in a URL a driver may quote
_URL_CREDENTIALS = re.compile(r"(://[^/@\s:]*):[^/\s]*@")


def health_check_txn(txn: Txn) -> None:
    """The cheapest query that proves the database answers."""
    txn.execute("SELECT 1")
    txn.fetchone()


@dataclass(frozen=True)
class ReadinessReport:
    """Each check's verdict: "ok" or why not."""

    checks: dict[str, str] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return all(v == "ok" for v in self.checks.values())

    @property
    def failed(self) -> list[str]:
        return [name for name, v in self.checks.items() if v != "ok"]


class Readiness:
    """The daemon's readiness checks, shared by whatever reports them (/readyz).

    Concurrent probes share one database query, so a load balancer probing
    often while the database hangs cannot tie up the pool's threads.
    """

    def __init__(
        self,
        listeners: Mapping[str, ListenerService],
        database: Database,
        clock: IReactorTime,
        running: Callable[[], bool],
        extra: Mapping[str, Callable[[], str]] | None = None,
    ) -> None:
        self.listeners = listeners
        self.extra = dict(extra or {})  # further checks by name, each "ok" or why not (the hub: its lease or its Redis; the workers)
        self.database = database
        self.clock = clock
        self._running = running
        self._probe_waiters: list[Deferred[None]] | None = None
        self._last_logged: str | None = None

    async def check(self, timeout: float) -> ReadinessReport:
        """Run every check; the database must answer within C{timeout} seconds."""
        checks: dict[str, str] = {}
        checks["running"] = "ok" if self._running() else "the daemon is stopping"
        unbound = [name for name, service in self.listeners.items() if service.address is None]
        checks["listeners"] = "ok" if not unbound else "not listening: " + ", ".join(unbound)
        checks["database"] = await self._check_database(timeout)
        for name, check in self.extra.items():
            checks[name] = check()
        return ReadinessReport(checks)

    async def _check_database(self, timeout: float) -> str:
        waiter: Deferred[None] = Deferred()
        waiter.addTimeout(timeout, self.clock)
        if self._probe_waiters is None:
            self._probe_waiters = [waiter]
            self.database.run(health_check_txn).addBoth(self._probe_done)
        else:
            self._probe_waiters.append(waiter)
        try:
            await waiter
        except TimeoutError:
            return f"no answer within {timeout:g}s"
        except Exception as e:
            # the driver's message names hosts and ports: for the log, not for whoever probes
            self._log_failure(f"{type(e).__name__}: {e}")
            return DATABASE_UNAVAILABLE_REASON
        self._last_logged = None
        return "ok"

    def _log_failure(self, detail: str) -> None:
        detail = _URL_CREDENTIALS.sub(r"\1:***@", detail)
        if detail != self._last_logged:  # once per outage and distinct error, not once per probe
            self._last_logged = detail
            log.warn("readiness: the database check failed: {error}", error=detail)

    def _probe_done(self, result: Any) -> None:
        waiters, self._probe_waiters = self._probe_waiters or [], None
        waiting = [d for d in waiters if not d.called]  # those that timed out have fired already
        if isinstance(result, Failure) and not waiting:
            log.warn("late database health check failed: {error}", error=result.getErrorMessage())
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)
