"""Reactor lag: how late a periodic timer fires, which is how long the event loop was busy elsewhere."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from myservices.metrics import Metrics


class ReactorLagMonitor(Service):
    """Schedules a timer every C{interval} seconds and records how late it fired.

    A lag near zero means the reactor is idle or keeping up; a lag close to a
    second means every connection waited that long for service.
    """

    name = "reactor-lag"  # type: ignore[assignment]  # twisted's Service.name is unannotated (inferred as None)
    log = Logger()

    def __init__(self, clock: IReactorTime, interval: float, metrics: Metrics) -> None:
        self.clock = clock
        self.interval = interval
        self.metrics = metrics
        self._call: IDelayedCall | None = None
        self._due = 0.0
        self.last: float | None = None  # seconds late, at the last probe (the operator page shows it)

    def startService(self) -> None:
        super().startService()
        self._schedule()

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        self._due = self.clock.seconds() + self.interval
        self._call = self.clock.callLater(self.interval, self._fired)

    def _fired(self) -> None:
        lag = max(0.0, self.clock.seconds() - self._due)
        self._schedule()  # first: an error below must not end the probe
        self.last = lag
        try:
            self.metrics.reactor_lag.observe(lag)
            self.metrics.reactor_lag_last.set(lag)
        except Exception:
            self.log.failure("reactor lag: recording a sample failed")
