"""Counters and gauges for every service, kept in a registry owned by one service tree.

Each tree gets its own L{CollectorRegistry} (not prometheus_client's global one),
so tests can build several trees in one process. The HTTP service exports it.

With workers (``[daemon] workers``), each worker's values live in files in a
directory the supervisor shares with them (prometheus_client's multiprocess
mode: C{PROMETHEUS_MULTIPROC_DIR}, set before the worker starts), and the
HTTP service exports the sum over every worker: counters and histograms
summed, gauges summed over the live workers (C{myservices_db_ready}: the
lowest, C{myservices_reactor_lag_last_seconds}: the highest). Gauges
computed by a function are set at each flush instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    GC_COLLECTOR, PLATFORM_COLLECTOR, CollectorRegistry, Counter, Gauge, Histogram, values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

# seconds; from a fast local query to a server struggling
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _PendingFlusher(Collector):
    """Registered first: before any read of the registry, folds pending hot-path counts into it."""

    def __init__(self) -> None:
        self.hooks: list[Callable[[], None]] = []

    def collect(self) -> Iterable[Metric]:
        for hook in self.hooks:
            hook()
        return []


class _Gauge(Gauge):
    """A Gauge whose C{set_function} also works across processes: there the function is read at each flush."""

    _poll: Callable[[Callable[[], None]], None] | None = None

    def set_function(self, f: Callable[[], float]) -> None:
        if self._poll is None:
            super().set_function(f)
        else:
            self._poll(lambda: self.set(f()))


class Metrics:
    """The metric families of one service tree.

    C{registry} holds this process's metrics; C{export_registry} is what
    C{/metrics} serves: the same, or with C{multiprocess_dir}, every worker's.
    """

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        if multiprocess_dir is not None and values.ValueClass is values.MutexValue:
            raise RuntimeError("shared metrics need PROMETHEUS_MULTIPROC_DIR set before prometheus_client is imported")
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        r = self.registry
        self._flusher = _PendingFlusher()
        r.register(self._flusher)
        self.connections_open = self._gauge(
            "myservices_connections_open", "Connections open now", ["service"], registry=r
        )
        self.connections = Counter(
            "myservices_connections", "Connections accepted", ["service"], registry=r
        )
        self.refused = Counter(
            "myservices_connections_refused", "Connections refused", ["service", "reason"], registry=r
        )
        self.closed = Counter(
            "myservices_connections_closed_by_server",
            "Connections the server closed, by reason",
            ["service", "reason"],
            registry=r,
        )
        self.bytes_in = Counter("myservices_received_bytes", "Bytes received", ["service"], registry=r)
        self.bytes_out = Counter("myservices_sent_bytes", "Bytes sent", ["service"], registry=r)
        self.messages_in = Counter(
            "myservices_received_messages", "Messages (datagrams, lines, frames) received", ["service"], registry=r
        )
        self.messages_out = Counter(
            "myservices_sent_messages", "Messages (datagrams, lines, frames) sent", ["service"], registry=r
        )
        self.backpressure_pauses = Counter(
            "myservices_backpressure_pauses",
            "Times reading from a connection paused because its peer was not reading",
            ["service"],
            registry=r,
        )
        self.dropped = Counter(
            "myservices_dropped_messages", "Messages dropped, by reason", ["service", "reason"], registry=r
        )

        self.errors = Counter(
            "myservices_errors", "Error replies sent to clients, by code", ["service", "code"], registry=r
        )
        self.slow_consumers = Counter(
            "myservices_slow_consumers",
            "Connections closed because they did not read their output",
            ["service"],
            registry=r,
        )
        self.hub_rooms = self._gauge("myservices_hub_rooms", "Rooms and topics with members or subscribers", registry=r)
        self.hub_sessions = self._gauge("myservices_hub_sessions", "Connections attached to the hub", registry=r)
        self.hub_publishes = Counter("myservices_hub_publishes", "Messages published", registry=r)
        self.hub_directs = Counter("myservices_hub_direct_messages", "Direct messages sent", registry=r)
        self.hub_deliveries = Counter("myservices_hub_deliveries", "Events delivered to connections", registry=r)
        self.hub_undeliverable = Counter(
            "myservices_hub_undeliverable_events", "Events no connection of a wire format could be sent", registry=r
        )
        self.history_written = Counter("myservices_history_written_messages", "Messages saved to history", registry=r)
        self.history_dropped = Counter(
            "myservices_history_dropped_messages",
            "Messages refused (DATABASE_UNAVAILABLE) because max_history_backlog messages already waited",
            registry=r,
        )
        self.history_rejected = Counter(
            "myservices_history_rejected_messages", "Messages the database refused to store (not delivered)", registry=r
        )
        self.hub_engine_up = self._gauge(
            "myservices_hub_engine_up", "1 while the hub's engine can be reached (always 1 with the memory engine)",
            registry=r, multiprocess_mode="livemin",  # with workers: 1 only while every worker reaches it
        )
        self.hub_engine_up.set(1)
        self.hub_engine_errors = Counter(
            "myservices_hub_engine_errors",
            "Engine requests that failed with ENGINE_UNAVAILABLE (Redis did not answer in time or was not connected)",
            registry=r,
        )
        self.hub_engine_outages = Counter(
            "myservices_hub_engine_outages", "Connections to Redis lost (each is reopened)", registry=r
        )
        self.hub_engine_gaps = Counter(
            "myservices_hub_engine_gaps",
            "Times a room could not be caught up after a lost connection: messages missed were no longer in Redis",
            registry=r,
        )
        self.hub_engine_data_losses = Counter(
            "myservices_hub_engine_data_losses", "Times Redis was found to have lost its data (a new epoch)", registry=r
        )
        self.history_deferred = Counter(
            "myservices_history_deferred_messages",
            "Messages delivered and acknowledged whose commit failed: kept and written when the database answers",
            registry=r,
        )
        self.history_lost = Counter(
            "myservices_history_unkept_messages",
            "Messages whose commit failed while max_history_backlog already waited: left to the sweep at next start",
            registry=r,
        )
        self.history_swept = Counter(
            "myservices_history_swept_messages",
            "Messages found in Redis only at start (their process stopped before saving them) and saved",
            registry=r,
        )
        self.hub_members = self._gauge(
            "myservices_hub_members", "Room memberships and topic subscriptions, summed over rooms", registry=r
        )

        self.requests = Counter(
            "myservices_requests",
            "Requests answered by the framed and PB services, by command and result (ok or an error code)",
            ["service", "command", "result"],
            registry=r,
        )
        self.http_requests = Counter(
            "myservices_http_requests", "HTTP requests answered, by status code", ["service", "status"], registry=r
        )

        self.db_query_seconds = Histogram(
            "myservices_db_query_seconds", "Database transactions, from queueing for a connection to the result",
            ["operation"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.db_errors = Counter(
            "myservices_db_errors", "Database transactions that failed, by kind (unavailable, timeout, error)",
            ["operation", "kind"], registry=r,
        )
        self.db_in_flight = self._gauge(
            "myservices_db_transactions_in_flight",
            "Transactions running or queued for a pool connection (more than the pool size means waiting)",
            registry=r,
        )
        self.db_pool_size = self._gauge(
            "myservices_db_pool_max_connections", "Most pool connections open at once", registry=r
        )
        self.db_pool_open = self._gauge("myservices_db_pool_open_connections", "Pool connections open now", registry=r)
        self.db_ready = self._gauge(
            "myservices_db_ready", "1 once the schema is migrated and the pool usable", registry=r,
            multiprocess_mode="livemin",
        )

        self.reactor_lag = Histogram(
            "myservices_reactor_lag_seconds",
            "How late a periodic timer fired: time the event loop was busy with other work",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.reactor_lag_last = self._gauge(
            "myservices_reactor_lag_last_seconds", "The most recent reactor lag measurement", registry=r,
            multiprocess_mode="livemax",
        )
        if multiprocess_dir is None:
            # the process's CPU, memory and open files, as the default registry would have them
            ProcessCollector(registry=r)
            for collector in (PLATFORM_COLLECTOR, GC_COLLECTOR):
                r.register(collector)
            self.export_registry = r
        else:
            # every worker's files; process_* and python_gc_* would describe only the worker that answers.
            # Read in a thread (files): the pending counts are folded in first, on the reactor (flush()).
            self.export_registry = CollectorRegistry()
            MultiProcessCollector(self.export_registry, path=multiprocess_dir)
            self.export_registry.register(PLATFORM_COLLECTOR)

    @property
    def multiprocess(self) -> bool:
        return self.multiprocess_dir is not None

    def _gauge(self, *args: Any, **kw: Any) -> _Gauge:
        """A gauge summed over the live workers unless C{multiprocess_mode} says otherwise."""
        kw.setdefault("multiprocess_mode", "livesum")
        gauge = _Gauge(*args, **kw)
        if self.multiprocess_dir is not None:
            gauge._poll = self.before_collect
        return gauge

    def flush(self) -> None:
        """Fold the pending hot-path counts into the metrics (done before every read of the registry)."""
        for hook in self._flusher.hooks:
            hook()

    def before_collect(self, hook: Callable[[], None]) -> None:
        """Call C{hook} before every read of the registry.

        For the hottest paths: count in plain integers (a prometheus_client
        increment takes a lock and costs about half a microsecond) and fold
        them into the metrics in C{hook}. Reads happen on the reactor thread.
        """
        self._flusher.hooks.append(hook)

    def for_service(self, service: str) -> ServiceMetrics:
        """Children bound to one service's label, for use on hot paths."""
        return ServiceMetrics(self, service)


class ServiceMetrics:
    """One service's metric children; binding labels once keeps the per-message cost low."""

    def __init__(self, metrics: Metrics, service: str) -> None:
        self._metrics = metrics
        self.service = service
        self.connections_open = metrics.connections_open.labels(service)
        self.connections = metrics.connections.labels(service)
        self.bytes_in = metrics.bytes_in.labels(service)
        self.bytes_out = metrics.bytes_out.labels(service)
        self.messages_in = metrics.messages_in.labels(service)
        self.messages_out = metrics.messages_out.labels(service)
        self.backpressure_pauses = metrics.backpressure_pauses.labels(service)
        self.slow_consumers = metrics.slow_consumers.labels(service)

    def slow_consumer(self) -> None:
        """A connection is dropped because it did not read its output."""
        self.slow_consumers.inc()
        self.closed("slow_consumer")

    def refused(self, reason: str) -> None:
        self._metrics.refused.labels(self.service, reason).inc()

    def closed(self, reason: str) -> None:
        self._metrics.closed.labels(self.service, reason).inc()

    def dropped(self, reason: str) -> None:
        self._metrics.dropped.labels(self.service, reason).inc()

    def error(self, code: str) -> None:
        self._metrics.errors.labels(self.service, code).inc()


class RequestCounts:
    """Mixin for the factories of request/reply services: messages, bytes and results counted in plain
    integers on the hot path and folded into the metrics when they are read (L{Metrics.before_collect})."""

    messages_in: int
    messages_out: int
    bytes_in: int

    def start_counting(self, metrics: Metrics, service: ServiceMetrics) -> None:
        """Call from C{__init__}."""
        self.messages_in = self.messages_out = self.bytes_in = 0
        self._results: dict[tuple[str, str], int] = {}
        self._ok: dict[str, int] = {}
        self._counted = service
        self._requests = metrics.requests
        metrics.before_collect(self._fold_counts)

    def count(self, command: str, result: str) -> None:
        """One request answered: C{result} is "ok" or an error code."""
        key = (command, result)
        self._results[key] = self._results.get(key, 0) + 1

    def count_ok(self, command: str) -> None:
        """One request answered "ok" (the hot path: no key to build)."""
        ok = self._ok
        ok[command] = ok.get(command, 0) + 1

    def _fold_counts(self) -> None:
        m = self._counted
        m.messages_in.inc(self.messages_in)
        m.messages_out.inc(self.messages_out)
        m.bytes_in.inc(self.bytes_in)
        self.messages_in = self.messages_out = self.bytes_in = 0
        results, self._results = self._results, {}
        ok, self._ok = self._ok, {}
        for command, n in ok.items():
            results[(command, "ok")] = results.get((command, "ok"), 0) + n
        for (command, result), n in results.items():
            self._requests.labels(m.service, command, result).inc(n)
