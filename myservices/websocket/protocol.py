"""One WebSocket connection and its factory: autobahn's RFC 6455 engine plus our limits and bookkeeping.

autobahn parses frames, validates UTF-8, answers pings, enforces the frame and
message size limits (1009) and bounds permessage-deflate. This module adds
what a daemon needs around it: routes by path, the Origin check (403), a
bound on the opening handshake, connection tracking and limits, a bounded
outbound queue (slow consumers are closed with 4008), an idle timeout, and a
clock that tests can replace.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from myservices.errors import (
    DATABASE_UNAVAILABLE, ENGINE_UNAVAILABLE, INTERNAL, NOT_FOUND, SHUTTING_DOWN, SLOW_CONSUMER, TIMEOUT, ErrorCode,
)
from myservices.flow import IdleTimer, ReadGate
from myservices.halfclose import HalfCloseableProtocol
from myservices.listeners import ConnectionTrackingFactory
from myservices.metrics import Metrics, RequestCounts
from myservices.outbound import Outbound
from myservices.websocket.origin import origin_allowed

# close codes the server sends (docs/protocols.md lists them with autobahn's own: 1002, 1007, 1009)
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # the server is shutting down
CLOSE_UNSUPPORTED_DATA = 1003  # a binary message where text (JSON) is expected
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN_LATER = 1013  # a shared resource (Redis, the database) is unavailable now
CLOSE_IDLE = 4001  # no message within idle_timeout
CLOSE_SLOW_CONSUMER = 4008  # the client did not read; its unread output passed the hub's max_pending

_CLOSE_CODES = {SLOW_CONSUMER.code: CLOSE_SLOW_CONSUMER, INTERNAL.code: CLOSE_INTERNAL,
                SHUTTING_DOWN.code: CLOSE_GOING_AWAY, TIMEOUT.code: CLOSE_IDLE,
                ENGINE_UNAVAILABLE.code: CLOSE_TRY_AGAIN_LATER, DATABASE_UNAVAILABLE.code: CLOSE_TRY_AGAIN_LATER}


def close_code(error: ErrorCode) -> int:
    """The close code for a connection the server closes because of C{error}."""
    return _CLOSE_CODES.get(error.code, CLOSE_POLICY)


def close_reason(error: ErrorCode, detail: str | None = None) -> str:
    """"CODE: detail", cut to the 123 bytes a close frame has room for."""
    reason = f"{error.code}: {detail or error.message}".encode()
    return reason[:123].decode("utf-8", "ignore")


_log = Logger()


class Route(Protocol):
    """What serves one path: created per connection once its handshake is accepted."""

    max_pending: int  # unread output bytes before the client is closed as a slow consumer

    @property
    def busy(self) -> bool:
        """A message received is not answered yet."""

    def opened(self) -> None: ...

    def message(self, payload: bytes, is_binary: bool) -> None: ...

    def closed(self) -> None: ...


RouteFactory = Callable[["WebSocketConnection"], Route]


class _ClockTimer:
    """autobahn schedules its timers (handshake, ping, close) through the factory's C{_batched_timer};
    this one uses the injected clock, so tests can drive them with C{Clock}."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> IDelayedCall:
        return self._clock.callLater(delay, fn, *args, **kwargs)


class WebSocketConnection(HalfCloseableProtocol, WebSocketServerProtocol):  # type: ignore[misc]  # autobahn's own bases disagree (peer, _transport_details)
    """A WebSocket connection: the handshake checks, then one route's handler gets the messages.

    A client that closes its side of the TCP connection without a close frame
    still gets the answers to the messages it sent in full; then the server
    closes the TCP connection (no close frame: the client could not answer it).
    """

    factory: WebSocketFactory
    # not named "log": autobahn's own (txaio) logger is self.log, which drops debug events cheaply
    route: Route | None = None
    cookies = ""
    outbound: Outbound | None = None
    _idle: IdleTimer | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._gate = ReadGate(self.transport)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.stop_timers()
        super().connectionLost(reason)

    # --- the opening handshake ------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closing_gracefully:
            return  # after the closing handshake (or a refused opening one): only TLS's close_notify is awaited
        if self.state == WebSocketProtocol.STATE_CONNECTING:
            # autobahn buffers the handshake until its blank line, without a bound
            limit = self.factory.max_handshake_size
            if len(self.data) + len(data) > limit:
                self.factory.metrics.error("TOO_LARGE")
                self.failHandshake(f"opening handshake larger than {limit} bytes", 431)
                return
        super().dataReceived(data)

    def onConnect(self, request: ConnectionRequest) -> None:
        f = self.factory
        make_route = f.routes.get(request.path)
        if make_route is None:
            f.metrics.error(NOT_FOUND.code)
            raise ConnectionDeny(404, f"no WebSocket route {request.path[:100]} (try {', '.join(f.routes)})")
        if not origin_allowed(request.origin, request.host, f.allowed_origins):
            f.metrics.refused("origin")
            _log.info(
                "{service}: refused origin {origin} (allowed_origins)", service=f.service_name, origin=request.origin
            )
            raise ConnectionDeny(403, "origin not allowed")
        self.cookies = request.headers.get("cookie", "")  # a login token set by the HTTP service's /api/login
        self.route = make_route(self)

    def onOpen(self) -> None:
        f = self.factory
        assert self.route is not None
        self.outbound = Outbound(
            self.transport, self.route.max_pending, self._slow_consumer, self._drained, self.factory.metrics
        )
        self._idle = IdleTimer(f.clock, lambda: self.factory.idle_timeout, self._idle_timeout)
        self._idle.start()
        self.route.opened()

    # --- messages -------------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._idle is not None:
            self._idle.touch()
        self.factory.messages_in += 1
        self.factory.bytes_in += len(payload)
        if self.route is not None and self.state == WebSocketProtocol.STATE_OPEN:
            self.route.message(payload, isBinary)

    def send(self, payload: bytes, binary: bool = False) -> None:
        """Send one message (through the bounded outbound queue)."""
        self.factory.messages_out += 1
        self.sendMessage(payload, binary)

    def send_prepared(self, prepared: Any) -> None:
        """Send a message framed once for many connections (L{WebSocketFactory.prepare})."""
        self.factory.messages_out += 1
        self.sendPreparedMessage(prepared)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        out = self.outbound
        if out is None:  # the handshake, before the connection is open
            super().sendData(data, sync, chopsize)
        elif out.overflowed:
            # only the close frame follows an overflow; it may never be read, the close timeout ends it
            self.transport.write(data)
        else:
            out.write(data)

    def unregisterProducer(self) -> None:
        # autobahn calls this whenever it drops a connection, registered or not
        if self.outbound is not None:
            self.outbound.unregister()

    @property
    def output_paused(self) -> bool:
        """The client is not reading: what we send now waits in the bounded queue."""
        return self.outbound is not None and self.outbound.paused

    def pause_reading(self, why: str) -> None:
        """Stop reading from the client until every reason given here is withdrawn by L{resume_reading}."""
        self._gate.hold(why)

    def resume_reading(self, why: str) -> None:
        if self.transport.connected:
            self._gate.release(why)

    def _drained(self) -> None:
        self.resume_reading("output")

    # --- closing --------------------------------------------------------------

    def close_with(self, error: ErrorCode, detail: str | None = None, code: int | None = None) -> None:
        """Close with a code from L{close_code} and the reason "ERROR_CODE: detail"."""
        if self.state in (WebSocketProtocol.STATE_CLOSING, WebSocketProtocol.STATE_CLOSED):
            return
        if self.state != WebSocketProtocol.STATE_OPEN:
            self.close_gracefully()
            return
        # sendCloseFrame, not sendClose: that one only lets applications send 1000 and 3000-4999
        reason = close_reason(error, detail).encode()
        self.sendCloseFrame(code=code or close_code(error), reasonUtf8=reason, isReply=False)

    def _slow_consumer(self) -> None:
        _log.info("{service}: closing slow consumer {peer}", service=self.factory.service_name, peer=self.peer, code="SLOW_CONSUMER")
        if self.route is not None:
            route, self.route = self.route, None
            route.closed()  # no more hub events for it
        limit = self.outbound.max_pending if self.outbound else self.factory.max_pending
        self.close_with(SLOW_CONSUMER, f"more than {limit} bytes of unread output")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.stop_timers()
        if self.route is not None:
            route, self.route = self.route, None
            route.closed()

    def onAutoPingTimeout(self) -> None:
        self.factory.metrics.closed("ping_timeout")
        super().onAutoPingTimeout()

    def _max_message_size_exceeded(self, msg_size: int, max_msg_size: int, reason: str) -> None:
        self.factory.metrics.error("TOO_LARGE")
        self.factory.metrics.closed("too_large")
        super()._max_message_size_exceeded(msg_size, max_msg_size, reason)

    def shutting_down(self) -> None:
        """The daemon stops: close with 1001 (clients should reconnect later)."""
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.close_with(SHUTTING_DOWN)
        elif self.state == WebSocketProtocol.STATE_CONNECTING:
            self.close_gracefully()

    def _closeConnection(self, abort: bool = False) -> None:
        # autobahn's own drops (after the closing handshake, a failed opening handshake) end here:
        # bounded like every other graceful close
        if abort:
            self.transport.abortConnection()
        else:
            self.close_gracefully()

    # --- idle timeout ----------------------------------------------------------

    def stop_timers(self) -> None:
        if self._idle is not None:
            self._idle.stop()

    def answered(self) -> bool:
        return self.route is None or not self.route.busy

    def _idle_timeout(self) -> None:
        self.factory.metrics.closed("idle_timeout")
        self.close_with(TIMEOUT, f"no message for {self.factory.idle_timeout:g} seconds")


class WebSocketFactory(RequestCounts, ConnectionTrackingFactory, WebSocketServerFactory):
    """Configuration and routes for L{WebSocketConnection}s; counts connections like every stream service.

    Connections mounted in the HTTP site (under /ws) are built by this factory
    too, so they share its limits, metrics and shutdown.
    """

    protocol = WebSocketConnection
    live_settings = ("max_connections", "idle_timeout", "allowed_origins")
    refusal_message = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 1\r\n"
        b"Connection: close\r\n\r\nBUSY too many connections, try again later\r\n"
    )

    def __init__(
        self,
        service_name: str,
        routes: Mapping[str, RouteFactory],
        *,
        max_connections: int,
        max_message_size: int,
        max_frame_size: int,
        max_handshake_size: int,
        handshake_timeout: float,
        ping_interval: float,
        ping_timeout: float,
        idle_timeout: float,
        allowed_origins: tuple[str, ...],
        compression: bool,
        max_pending: int,
        metrics: Metrics,
        clock: IReactorTime,
    ) -> None:
        WebSocketServerFactory.__init__(self, server="myservices", reactor=clock)
        ConnectionTrackingFactory.__init__(self, service_name, max_connections, metrics.for_service(service_name), clock)
        self._batched_timer = _ClockTimer(clock)
        self.routes = dict(routes)
        self.max_handshake_size = max_handshake_size
        self.idle_timeout = idle_timeout
        self.allowed_origins = allowed_origins
        self.max_pending = max_pending
        self.setProtocolOptions(
            webStatus=False,  # no HTML status page for plain GETs
            maxFramePayloadSize=max_frame_size,
            maxMessagePayloadSize=max_message_size,
            openHandshakeTimeout=handshake_timeout,
            closeHandshakeTimeout=1.0,
            autoPingInterval=ping_interval,
            autoPingTimeout=ping_timeout,
            autoPingSize=12,
            perMessageCompressionAccept=self._accept_compression if compression else (lambda offers: None),
            failByDrop=False,  # fail with a close frame that says why, then drop
            allowNullOrigin=True,  # origins are checked in onConnect (403), "null" included
        )
        self.start_counting(metrics, self.metrics)

    def _accept_compression(self, offers: list[Any]) -> PerMessageDeflateOfferAccept | None:
        for offer in offers:
            if isinstance(offer, PerMessageDeflateOffer):
                return PerMessageDeflateOfferAccept(offer)
        return None

    def buildProtocol(self, addr: IAddress | None) -> Any:
        return ConnectionTrackingFactory.buildProtocol(self, addr)

    @property
    def full(self) -> bool:
        return len(self.connections) >= self.max_connections

    def prepare(self, payload: bytes, binary: bool = False) -> Any:
        """A message framed once, to send to many connections with L{WebSocketConnection.send_prepared}."""
        return self.prepareMessage(payload, binary)
