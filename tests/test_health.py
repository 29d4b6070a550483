"""Readiness checks and the reactor lag probe, with a fake clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from myservices.db import DatabaseUnavailable
from myservices.health import Readiness
from myservices.lag import ReactorLagMonitor
from myservices.metrics import Metrics


class _Listener:
    def __init__(self, address: object | None) -> None:
        self.address = address


class _HangingDatabase:
    """Stands in for a database whose server stopped answering: queries never return."""

    def __init__(self) -> None:
        self.queries: list[Deferred[None]] = []

    def run(self, fn: Any, *args: Any) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.queries.append(d)
        return d


class ReadinessTests(TestCase):
    def test_a_hanging_database_fails_the_check_at_the_deadline_and_probes_are_shared(self) -> None:
        clock, db = Clock(), _HangingDatabase()
        readiness = Readiness({"http": _Listener("addr")}, db, clock, lambda: True)  # type: ignore[arg-type]
        reports = [Deferred.fromCoroutine(readiness.check(2.0)) for _ in range(3)]
        self.assertEqual(len(db.queries), 1, "concurrent probes share one query")
        clock.advance(1.9)
        self.assertFalse(any(r.called for r in reports))
        clock.advance(0.1)
        for d in reports:
            report = self.successResultOf(d)
            self.assertEqual(report.failed, ["database"])
            self.assertEqual(report.checks["database"], "no answer within 2s")
        db.queries[0].callback(None)  # the late answer is ignored
        report = Deferred.fromCoroutine(readiness.check(2.0))
        db.queries[-1].callback(None)
        self.assertTrue(self.successResultOf(report).ready)

    def test_unbound_listeners_and_stopping_are_reported(self) -> None:
        class Db:
            def run(self, fn: Any) -> Deferred[None]:
                return fail(DatabaseUnavailable("database is not ready: mysql://app:hunter2@db.internal:3306 refused"))

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        stopping = {"value": False}
        readiness = Readiness(
            {"http": _Listener("addr"), "chat": _Listener(None)}, Db(), Clock(), lambda: not stopping["value"],  # type: ignore[arg-type]
            extra={"hub": lambda: "redis unavailable"},
        )
        stopping["value"] = True
        report = self.successResultOf(Deferred.fromCoroutine(readiness.check(1.0)))
        self.assertEqual(
            report.checks,
            {"running": "the daemon is stopping", "listeners": "not listening: chat",
             "database": "database unavailable", "hub": "redis unavailable"},
        )
        self.assertFalse(report.ready)
        # the driver's detail goes to the log, once per distinct error and without the password
        self.successResultOf(Deferred.fromCoroutine(readiness.check(1.0)))
        logged = [formatEvent(e) for e in events if e.get("log_namespace") == "myservices.health"]
        self.assertEqual(
            logged, ["readiness: the database check failed: DatabaseUnavailable: database is not ready: "
                     "mysql://app:***@db.internal:3306 refused"],
        )


class ReactorLagTests(TestCase):
    def test_records_how_late_the_timer_fired(self) -> None:
        clock, metrics = Clock(), Metrics()
        monitor = ReactorLagMonitor(clock, 1.0, metrics)
        monitor.startService()
        clock.advance(1.0)  # on time
        clock.advance(1.25)  # the reactor was busy for a quarter second
        self.assertEqual(metrics.reactor_lag_last._value.get(), 0.25)
        self.assertEqual(metrics.registry.get_sample_value("myservices_reactor_lag_seconds_count"), 2)
        monitor.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_an_error_in_one_tick_does_not_stop_the_probe(self) -> None:
        clock, metrics = Clock(), Metrics()
        monitor = ReactorLagMonitor(clock, 1.0, metrics)
        monitor.startService()
        observe = metrics.reactor_lag.observe
        metrics.reactor_lag.observe = lambda lag: 1 / 0  # type: ignore[method-assign]
        clock.advance(1.0)
        metrics.reactor_lag.observe = observe  # type: ignore[method-assign]
        clock.advance(1.5)
        self.assertEqual(metrics.reactor_lag_last._value.get(), 0.5)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        monitor.stopService()
