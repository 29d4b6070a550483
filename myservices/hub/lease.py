"""One daemon per database for the memory engine: a lease row that one daemon at a time holds.

The memory engine keeps each room's last message id in its own process and
the history in the database. Two daemons with ``[hub] engine = "memory"`` on
one database would hand out the same ids in the same room, and the database
would keep only one of the two messages. So the memory engine serves the hub
only while its daemon holds the one row of ``hub_lease``:

- At start it takes the lease in one transaction (one conditional UPDATE: the
  row is free, expired or already its own), refreshes it every third of
  C{timeout} on the reactor clock, and releases it at stop, after the last
  message is committed (the lease stops after the hub, before the database).
- A lease held by another owner is waited out once: after ``kill -9`` the old
  process's lease runs out within C{timeout}, and hub requests wait for it.
  If its holder refreshes it meanwhile, another daemon is alive: this one
  refuses the hub (L{HUB_UNAVAILABLE}, and a log line that says why) and
  looks again whenever that lease would expire, so it takes over if the other
  daemon stops.
- A daemon that could not refresh its lease stops serving the hub when the
  lease expires (another could take it from then on); one that finds its
  lease taken by another daemon stops serving it for good (its rooms' last
  ids may be stale) and must be restarted.

An engine that many daemons share (Redis) needs no lease: the lease is part of
the memory engine's wiring (L{myservices.tree}), not of the database layer.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from myservices.db import Database, DatabaseUnavailable, Txn
from myservices.errors import DATABASE_UNAVAILABLE, HUB_UNAVAILABLE, SHUTTING_DOWN, RequestError

LEASE_NAME = "memory"  # the row the migration creates

STARTING, HELD, WAITING, REFUSED, LOST, STOPPED = "starting", "held", "waiting", "refused", "lost", "stopped"

ONE_DAEMON = (
    'with [hub] engine = "memory" only one daemon may use a database; give each daemon its own database,'
    ' or run several with [hub] engine = "redis"'
)


@dataclass(frozen=True)
class Holder:
    """The lease row as one claim found it."""

    owner: str
    host: str
    pid: int
    expires: float

    def describe(self) -> str:
        return f"{self.host or '?'} pid {self.pid} (owner {self.owner[:8]})"


def claim_lease_txn(txn: Txn, owner: str, host: str, pid: int, now: float, expires: float) -> Holder:
    """Take or extend the lease if it is free, expired or C{owner}'s; the row afterwards (its owner says who won)."""
    txn.execute(
        "UPDATE hub_lease SET owner = ?, host = ?, pid = ?, expires = ? WHERE name = ? AND (owner = ? OR expires <= ?)",
        (owner, host, pid, expires, LEASE_NAME, owner, now),
    )
    txn.execute("SELECT owner, host, pid, expires FROM hub_lease WHERE name = ?", (LEASE_NAME,))
    row = txn.fetchone()
    if row is None:
        raise RuntimeError("the hub_lease row is missing (the schema migration creates it)")
    return Holder(str(row[0]), str(row[1]), int(row[2]), float(row[3]))


def release_lease_txn(txn: Txn, owner: str) -> None:
    """Let the lease go at once, if C{owner} still holds it."""
    txn.execute("UPDATE hub_lease SET expires = 0 WHERE name = ? AND owner = ?", (LEASE_NAME, owner))


class HubLease(Service):
    """This daemon's claim on the database's hub, for the memory engine (see the module docstring).

    The engine calls L{held} before it uses a room (a comparison of two
    numbers) and, only when that is false, awaits L{ensure}, which waits for
    the claim in flight or the one due and raises the error to answer if the
    lease is not this daemon's.
    """

    log = Logger()
    name = "hub-lease"  # type: ignore[assignment]  # twisted's Service.name is unannotated (inferred as None)

    def __init__(
        self,
        database: Database,
        clock: IReactorTime,
        timeout: float,
        *,
        owner: str | None = None,
        host: str | None = None,
        pid: int | None = None,
    ) -> None:
        self.database = database
        self.clock = clock
        self.timeout = timeout
        self.owner = owner or uuid.uuid4().hex
        self.host = host if host is not None else socket.gethostname()
        self.pid = pid if pid is not None else os.getpid()
        self.state = STARTING
        self.valid_until = 0.0  # held until then, by this clock (the row says the same)
        self.holder: Holder | None = None  # the other daemon's row, when last seen
        self._held_once = False
        self._failing = False
        self._in_flight = False
        self._waiters: list[Deferred[None]] = []  # fired when the claim in flight (or the one due) ends
        self._answered = False  # the first claim has ended
        self._settled: list[Deferred[None]] = []
        self._timer: IDelayedCall | None = None

    @property
    def refresh_interval(self) -> float:
        return self.timeout / 3

    # --- what the engine asks ------------------------------------------------------

    def held(self) -> bool:
        """Whether this daemon may serve the hub now."""
        return self.state == HELD and self.clock.seconds() < self.valid_until

    async def ensure(self) -> None:
        """Return once this daemon holds the lease; else raise the error a hub request is answered with.

        Waits for at most one claim now (the one in flight, or a new one) and
        one claim due when an old lease expires (at most C{timeout} away).
        """
        waited_now = waited_due = False
        while not self.held():
            if self.state in (REFUSED, LOST, STOPPED):
                raise self.refusal()
            due = self.state == WAITING and self._timer is not None and not self._in_flight
            if waited_due if due else waited_now:
                raise self.refusal()
            d = self.next_claim()
            if due:
                waited_due = True
            else:
                waited_now = True
                if not self._in_flight:
                    self._claim_now()
            await d

    def settled(self) -> Deferred[None]:
        """Fires once the first claim has ended, whatever its outcome (L{held} and L{status} say it)."""
        d: Deferred[None] = Deferred()
        if self._answered:
            d.callback(None)
        else:
            self._settled.append(d)
        return d

    def next_claim(self) -> Deferred[None]:
        """Fires when the claim in flight, or else the next one (the refresh or retry due), has ended."""
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def refusal(self) -> RequestError:
        """Why the hub is not served now, for a client."""
        if self.state == STOPPED:
            return RequestError(SHUTTING_DOWN)
        if self.state == LOST:
            return RequestError(HUB_UNAVAILABLE, "another daemon took over this server's database; it must be restarted")
        if self.state == REFUSED:
            return RequestError(HUB_UNAVAILABLE, "another daemon serves the hub on this server's database")
        if self.state == WAITING:
            return RequestError(HUB_UNAVAILABLE, "waiting for the previous daemon's lease on the database to expire")
        return RequestError(DATABASE_UNAVAILABLE, "the hub cannot confirm its lease on the database now")

    def status(self) -> str:
        """"ok" or why not, for the readiness check (no host names: the log has them)."""
        if self.held():
            return "ok"
        return {
            STARTING: "taking the hub's lease on the database",
            HELD: "the hub's lease could not be refreshed (database unavailable)",
            WAITING: "waiting for the previous daemon's hub lease to expire",
            REFUSED: "another daemon holds the hub's lease on this database",
            LOST: "lost the hub's lease to another daemon: restart this one",
            STOPPED: "stopped",
        }[self.state]

    # --- taking, refreshing, releasing ---------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # twisted's Service is unannotated
        self._claim_now()

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]  # twisted's Service is unannotated
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._cancel_timer()
        if self._in_flight:
            d: Deferred[None] = Deferred()
            self._waiters.append(d)
            await d
        ours = self.state == HELD  # even if it lapsed: the release only touches the row while it is ours
        self.state = STOPPED
        self.valid_until = 0.0
        self._wake()  # requests waiting for an old lease to expire: the daemon is stopping
        if not ours:
            return
        try:
            await self.database.run(release_lease_txn, self.owner)
        except Exception as e:
            self.log.warn(
                "hub: could not release the lease ({error}); it expires by itself within {timeout}s",
                error=str(e), timeout=self.timeout,
            )
        else:
            self.log.info("hub: lease released")

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _claim_now(self) -> None:
        self._cancel_timer()
        self._in_flight = True
        Deferred.fromCoroutine(self._claim()).addErrback(lambda f: self.log.failure("hub: lease claim failed", f))

    async def _claim(self) -> None:
        now = self.clock.seconds()
        try:
            holder = await self.database.run(
                claim_lease_txn, self.owner, self.host, self.pid, now, now + self.timeout
            )
        except Exception as e:
            self._failed(e)
        else:
            self._claimed(holder, now)
        finally:
            self._in_flight = False
            if self.running:
                self._schedule()
            self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        if not self._in_flight and not self._answered:
            self._answered = True
            waiters += self._settled
            self._settled = []
        for d in waiters:
            d.callback(None)

    def _claimed(self, holder: Holder, now: float) -> None:
        if self._failing:
            self._failing = False
            self.log.info("hub: the lease is claimed again")
        if holder.owner == self.owner:
            if self.state != HELD:
                if self.holder is not None:
                    self.log.info("hub: the lease of {holder} expired; this daemon took it over", holder=self.holder.describe())
                else:
                    self.log.info(
                        "hub: this daemon holds the memory engine's lease on the database (refreshed every {interval:g}s)",
                        interval=self.refresh_interval,
                    )
            self.state, self.valid_until, self.holder, self._held_once = HELD, now + self.timeout, None, True
            return
        seen, self.holder = self.holder, holder
        if self._held_once:
            if self.state != LOST:
                self.log.critical(
                    "hub: another daemon ({holder}) took this daemon's lease on the database while it could not"
                    " refresh it; this daemon stops serving the hub and must be restarted; " + ONE_DAEMON,
                    holder=holder.describe(),
                )
            self.state, self.valid_until = LOST, 0.0
        elif seen is None or seen == holder:
            # not refreshed since we first looked: a crashed daemon's lease (or the first look)
            if self.state != WAITING:
                self.log.warn(
                    "hub: the database's hub lease is held by {holder} for {left:.1f}s more: waiting for it to expire"
                    " (after a crash that is the old process's lease); hub requests wait until then",
                    holder=holder.describe(), left=max(0.0, holder.expires - now),
                )
            self.state = WAITING
        else:
            if self.state != REFUSED:
                self.log.error(
                    "hub: refusing to serve the hub: another daemon ({holder}) is using this database and keeps its"
                    " lease; " + ONE_DAEMON + ". Hub requests are answered HUB_UNAVAILABLE; this daemon takes over"
                    " if that one stops",
                    holder=holder.describe(),
                )
            self.state = REFUSED

    def _failed(self, e: Exception) -> None:
        if self._failing:
            return  # logged once per run of failures
        self._failing = True
        if isinstance(e, DatabaseUnavailable):
            left = max(0.0, self.valid_until - self.clock.seconds()) if self.held() else 0.0
            self.log.warn(
                "hub: cannot take or refresh the lease: {error}; the hub is served for {left:.1f}s more"
                " unless the database answers", error=str(e), left=left,
            )
        else:
            self.log.failure("hub: taking the lease failed", code="INTERNAL")

    def _schedule(self) -> None:
        if self.state == LOST:
            return
        delay = self.refresh_interval
        if self.state in (WAITING, REFUSED) and self.holder is not None:
            # just after the other lease would expire (a little later, for clocks that differ slightly)
            left = self.holder.expires - self.clock.seconds()
            delay = min(max(left, 0.0) + self.timeout / 100, self.timeout)
        self._timer = self.clock.callLater(delay, self._claim_now)
