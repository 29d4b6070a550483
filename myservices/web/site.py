"""The twisted.web Site of the HTTP service: connection limits, per-request metrics, optional access log."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from myservices.errors import BUSY
from myservices.listeners import ConnectionTrackingFactory
from myservices.metrics import Metrics, ServiceMetrics
from myservices.web.channel import HttpLimits, LimitedHTTPChannel, LimitedRequest, error_body

access_log = Logger(namespace="myservices.web.access")


def _refusal() -> bytes:
    body = error_body(BUSY, BUSY.message)
    return (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body


class HttpSite(ConnectionTrackingFactory, Site):
    """A Site whose connections are counted, limited and closed on stop like every other service's."""

    protocol = LimitedHTTPChannel
    requestFactory = LimitedRequest
    displayTracebacks = False
    refusal_message = _refusal()

    def __init__(
        self,
        service_name: str,
        resource: IResource,
        *,
        limits: HttpLimits,
        max_connections: int,
        idle_timeout: float,
        access_log: bool,
        metrics: Metrics,
        clock: IReactorTime,
    ) -> None:
        Site.__init__(
            self, resource, requestFactory=LimitedRequest, parsePOSTFormSubmission=False,
            timeout=idle_timeout or None, reactor=clock,
        )
        ConnectionTrackingFactory.__init__(
            self, service_name, max_connections, metrics.for_service(service_name), clock
        )
        self.limits = limits
        self.access_log = access_log
        self._requests = metrics.http_requests
        self._request_seconds = metrics.http_request_seconds.labels(service_name)
        self._by_status: dict[int, Any] = {}

    # twisted.web's access log would start a once-a-second timer and write to the legacy log
    def startFactory(self) -> None:
        pass

    def stopFactory(self) -> None:
        pass

    def log(self, request: Request) -> None:
        """Called by twisted.web as each response finishes: count it and, if enabled, log it."""
        status = request.code
        self._count(status)
        m = self.metrics
        m.messages_in.inc()
        m.messages_out.inc()
        m.bytes_out.inc(request.sentLength)
        elapsed = self.clock.seconds() - getattr(request, "received_at", self.clock.seconds())
        self._request_seconds.observe(elapsed)
        if self.access_log:
            access_log.info(
                "{peer} {method} {uri} {status} {size} {duration_ms}ms",
                peer=_peer(request),
                method=request.method.decode("latin-1"),
                uri=request.uri.decode("latin-1"),
                status=status,
                size=request.sentLength,
                duration_ms=round(elapsed * 1000, 3),
                user_agent=(request.getHeader(b"user-agent") or b"").decode("latin-1"),
            )

    def count_rejection(self, status: int) -> None:
        """A request refused by the channel's limits (413, 431, 414, 408)."""
        self._count(status)
        self.metrics.error({413: "TOO_LARGE", 414: "TOO_LARGE", 431: "TOO_LARGE", 408: "TIMEOUT"}.get(status, str(status)))

    def _count(self, status: int) -> None:
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self._requests.labels(self.service_name, str(status))
        child.inc()


def _peer(request: Request) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    return str(host) if host is not None else str(address)
