"""Counters and gauges for every service, kept in a registry owned by one service tree.

Each tree gets its own L{CollectorRegistry} (not prometheus_client's global one),
so tests can build several trees in one process. The HTTP service exports it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    """The metric families of one service tree."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections_open = Gauge(
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
        self.hub_rooms = Gauge("myservices_hub_rooms", "Rooms and topics with members or subscribers", registry=r)
        self.hub_sessions = Gauge("myservices_hub_sessions", "Connections attached to the hub", registry=r)
        self.hub_publishes = Counter("myservices_hub_publishes", "Messages published", registry=r)
        self.hub_deliveries = Counter("myservices_hub_deliveries", "Events delivered to connections", registry=r)
        self.history_written = Counter("myservices_history_written_messages", "Messages saved to history", registry=r)
        self.history_dropped = Counter(
            "myservices_history_dropped_messages", "Messages not saved because the backlog was full", registry=r
        )

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

    def refused(self, reason: str) -> None:
        self._metrics.refused.labels(self.service, reason).inc()

    def closed(self, reason: str) -> None:
        self._metrics.closed.labels(self.service, reason).inc()

    def dropped(self, reason: str) -> None:
        self._metrics.dropped.labels(self.service, reason).inc()

    def error(self, code: str) -> None:
        self._metrics.errors.labels(self.service, code).inc()
