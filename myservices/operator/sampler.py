"""Sampler: the statistics the operator page shows, taken every C{interval} seconds while an admin watches.

Each snapshot holds the rooms in use (members, subscribers and messages per
second: the growth of each room's last message id since the previous
snapshot, exact and cluster-wide since ids increase per room), this
process's connections per service and hub sessions, the readiness checks
(the database among them), the reactor lag and the recent warnings and
errors of the log. It is pushed to every watcher as a L{Stats} event through
the watcher's hub subscriber, like any other event, so the front ends'
output bounds apply to it; one snapshot is encoded once per wire format.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from myservices.errors import BUSY, RequestError
from myservices.handlers.pipeline import classify
from myservices.hub import Hub, RoomInfo, Session, Stats, UnencodableEvent
from myservices.metrics import Metrics
from myservices.operator.config import AdminConfig
from myservices.operator.recent_errors import RecentErrors

if TYPE_CHECKING:
    from myservices.health import Readiness, ReadinessReport


class Sampler(Service):
    """Takes snapshots while anyone watches; L{watch} and L{unwatch} add and remove watchers (hub sessions).

    Watching is for admins: a watcher whose session closed, logged out or is no
    longer an admin is dropped at the next snapshot. The log observer of the
    recent errors is registered while the service runs.
    """

    name = "operator"  # type: ignore[assignment]  # twisted's Service.name is unannotated (inferred as None)
    log = Logger()

    def __init__(
        self,
        config: AdminConfig,
        hub: Hub,
        metrics: Metrics,
        clock: IReactorTime,
        errors: RecentErrors,
        readiness: Readiness | None = None,
        lag: Callable[[], float | None] | None = None,
    ) -> None:
        self.config = config
        self.hub = hub
        self.metrics = metrics
        self.clock = clock
        self.errors = errors
        self.readiness = readiness
        self.lag = lag
        self.watchers: dict[Session, None] = {}
        self._loop: LoopingCall | None = None
        self._last: Stats | None = None
        self._previous: dict[str, int] = {}  # each room's last id at the previous sample
        self._previous_time: float | None = None
        self._health: dict[str, str] = {}
        self._checking = False

    # --- the service: the log observer while running ------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.errors.start()

    def stopService(self) -> None:
        super().stopService()
        self.errors.stop()
        self.watchers.clear()
        self._stop_loop()

    # --- watchers -----------------------------------------------------------------------

    @property
    def sampling(self) -> bool:
        return self._loop is not None and self._loop.running

    def watch(self, session: Session) -> bool:
        """Push snapshots to C{session} from now on, the first at once; False if it watched already.

        BUSY when C{max_watchers} watch already. The caller checks that the session is an admin's.
        """
        if session in self.watchers:
            return False
        if len(self.watchers) >= self.config.max_watchers:
            raise RequestError(BUSY, f"at most {self.config.max_watchers} connections may watch the statistics")
        self.watchers[session] = None
        if not self.sampling:
            loop = self._loop = LoopingCall(self._run)
            loop.clock = self.clock
            loop.start(self.config.interval, now=True).addErrback(self._loop_failed)
        elif self._last is not None:
            self._deliver(session, self._last)
        return True

    def unwatch(self, session: Session) -> bool:
        """No more snapshots for C{session}; False if it did not watch."""
        if session not in self.watchers:
            return False
        del self.watchers[session]
        if not self.watchers:
            self._stop_loop()
        return True

    def _stop_loop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        self._last = None
        self._previous = {}
        self._previous_time = None

    def _loop_failed(self, failure: Failure) -> None:
        self.log.failure("operator: the statistics loop failed", failure)

    def _prune(self) -> None:
        policy = self.hub.policy
        for session in [s for s in self.watchers if s.closed or not policy.is_admin(s)]:
            del self.watchers[session]

    # --- snapshots ----------------------------------------------------------------------

    def _run(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._tick())

    async def _tick(self) -> None:
        # a LoopingCall whose call raises stops for good: every failure is caught and logged here
        loop = self._loop
        try:
            self._prune()
            if not self.watchers:
                self._stop_loop()
                return
            event = Stats(data=await self.sample())
            if not self.sampling or self._loop is not loop:
                return  # nobody watched any more meanwhile (or a new watch started a new loop, which sends its own)
            self._last = event
            self._prune()
            for session in list(self.watchers):
                self._deliver(session, event)
        except Exception:
            self.log.failure("operator: taking a snapshot failed")

    def _deliver(self, session: Session, event: Stats) -> None:
        try:
            session.subscriber.deliver(event)
        except UnencodableEvent as e:
            if e.first:
                self.log.failure("operator: cannot encode a snapshot", Failure(e.__cause__))
        except Exception:
            self.log.failure("operator: sending a snapshot to {session} failed; it stops watching", session=session)
            self.watchers.pop(session, None)

    async def snapshot(self) -> dict[str, Any]:
        """The latest snapshot while sampling; otherwise a new one (rates since the previous one taken)."""
        if self.sampling and self._last is not None:
            return self._last.data
        return await self.sample()

    async def sample(self) -> dict[str, Any]:
        """A new snapshot; message rates are per second since the previous one (0 for the first)."""
        self._check_health()
        error = None
        try:
            infos = await self.hub.rooms()
        except Exception:  # the engine away (ENGINE_UNAVAILABLE), say: the rest is still worth seeing
            infos, error = [], classify(Failure(), "operator", "listing the rooms").error.code
        now = self.clock.seconds()
        rooms, total_rate = self._rooms(infos, now)
        cap = self.config.max_rooms
        data: dict[str, Any] = {
            "time": now,
            "interval": self.config.interval,
            "node": self.hub.node_id,
            "rooms": rooms[:cap],
            "rooms_total": len(rooms),
            "rooms_omitted": max(0, len(rooms) - cap),
            "message_rate": total_rate,
            "members": sum(i.members for i in infos),
            "subscribers": sum(i.subscribers for i in infos),
            "connections": self._connections(),
            "sessions": len(self.hub.sessions),
            "reactor_lag": self.lag() if self.lag is not None else None,
            "health": dict(self._health),
            "errors": self.errors.recent(),
            "watchers": len(self.watchers),
        }
        if error is not None:
            data["rooms_error"] = error
        return data

    def _rooms(self, infos: list[RoomInfo], now: float) -> tuple[list[dict[str, Any]], float]:
        previous, since = self._previous, self._previous_time
        dt = now - since if since is not None else 0.0
        rooms: list[dict[str, Any]] = []
        total = 0.0
        for info in infos:
            last_id = info.last_id
            before = previous.get(info.name)
            rate = max(0, last_id - before) / dt if before is not None and dt > 0 else 0.0
            total += rate
            rooms.append({
                "name": info.name, "members": info.members, "subscribers": info.subscribers, "rate": rate,
                "last_id": last_id,
            })
        self._previous = {info.name: info.last_id for info in infos}
        self._previous_time = now
        # the busiest first, so what is cut off is the quietest
        rooms.sort(key=lambda r: (-r["rate"], -(r["members"] + r["subscribers"]), r["name"]))
        return rooms, total

    def _connections(self) -> dict[str, int]:
        """This process's open connections per service (the gauge the listeners keep)."""
        out: dict[str, int] = {}
        for family in self.metrics.connections_open.collect():
            for sample in family.samples:
                service = sample.labels.get("service")
                if service:
                    out[service] = int(sample.value)
        return out

    def _check_health(self) -> None:
        # the readiness checks run beside the snapshots: a database that hangs does not hold them up;
        # each snapshot shows the last verdict
        if self.readiness is None or self._checking:
            return
        self._checking = True
        d = Deferred.fromCoroutine(self.readiness.check(self.config.health_timeout))
        d.addCallbacks(self._checked, self._check_failed)

    def _checked(self, report: ReadinessReport) -> None:
        self._checking = False
        self._health = dict(report.checks)

    def _check_failed(self, failure: Failure) -> None:
        self._checking = False
        self.log.failure("operator: the health check failed", failure)
