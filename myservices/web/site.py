"""The twisted.web Site of the HTTP service: connection limits, per-request metrics, optional access log."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Site

from myservices.errors import BUSY, ErrorCode
from myservices.listeners import ConnectionTrackingFactory
from myservices.metrics import Metrics
from myservices.web.channel import HttpLimits, LimitedHTTPChannel
from myservices.web.request import LimitedRequest, error_body

access_log = Logger(namespace="myservices.web.access")


def _refusal() -> bytes:
    body = error_body(BUSY, BUSY.message)
    return (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body


# buildProtocol: ConnectionTrackingFactory's (any Protocol, for the refusal) comes first in the MRO
class HttpSite(ConnectionTrackingFactory, Site):  # type: ignore[misc]
    """A Site whose connections are counted, limited and closed on stop like every other service's."""

    # HTTP/1.1 only: the channel itself, not twisted.web's wrapper that can switch to HTTP/2
    protocol = LimitedHTTPChannel  # type: ignore[assignment]
    live_settings = ("max_connections", "access_log")
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
        # counted in plain integers and folded into the metrics when they are read (see Metrics.before_collect)
        self._pending_status: dict[int, int] = {}
        self._pending_bytes = 0
        self.bytes_in = 0  # added to by the channels as they read
        metrics.before_collect(self._fold_counts)

    # twisted.web's access log would start a once-a-second timer and write to the legacy log
    def startFactory(self) -> None:
        pass

    def stopFactory(self) -> None:
        pass

    def log(self, request: http.Request) -> None:
        """Called by twisted.web as each response finishes: count it and, if enabled, log it."""
        status = request.code
        pending = self._pending_status
        pending[status] = pending.get(status, 0) + 1
        self._pending_bytes += request.sentLength
        if self.access_log:
            received = getattr(request, "received_at", None)
            access_log.info(
                "{peer} {method} {uri} {status} {size} {duration_ms}ms",
                peer=_peer(request),
                method=request.method.decode("latin-1"),
                uri=request.uri.decode("latin-1"),
                status=status,
                size=request.sentLength,
                duration_ms=None if received is None else round((self.clock.seconds() - received) * 1000, 3),
                user_agent=(request.getHeader(b"user-agent") or b"").decode("latin-1"),
            )

    def count_upgrade(self) -> None:
        """A request switched protocols (101): it never finishes as an HTTP response, so log() never sees it."""
        self._pending_status[101] = self._pending_status.get(101, 0) + 1

    def count_rejection(self, status: int, error: ErrorCode) -> None:
        """A request the channel refused (413, 431, 414, 408, 400); the resources count their own errors."""
        self._pending_status[status] = self._pending_status.get(status, 0) + 1
        self.metrics.error(error.code)

    def _fold_counts(self) -> None:
        pending, self._pending_status = self._pending_status, {}
        total = 0
        for status, n in pending.items():
            self._requests.labels(self.service_name, str(status)).inc(n)
            total += n
        if total:
            self.metrics.messages_in.inc(total)
            self.metrics.messages_out.inc(total)
        if self._pending_bytes:
            self.metrics.bytes_out.inc(self._pending_bytes)
            self._pending_bytes = 0
        if self.bytes_in:
            self.metrics.bytes_in.inc(self.bytes_in)
            self.bytes_in = 0


def _peer(request: http.Request) -> str:
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    return str(host) if host is not None else str(address)
