"""The framed JSON service: a 12-byte header and a JSON body per frame, requests routed by command id.

The wire format and every command are documented in docs/protocols.md. The
protocol object only moves frames: it decodes them, checks the request
envelope, and hands the arguments to the command handlers in
L{myservices.handlers.commands}, which call the shared hub, accounts,
key-value store and counter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from myservices.settings import SIZE, MiB, StreamServiceConfig, setting
from myservices.errors import (
    BAD_ARGUMENTS,
    BAD_ENCODING,
    BAD_REQUEST,
    BUSY,
    INTERNAL,
    RATE_LIMITED,
    SHUTTING_DOWN,
    SLOW_CONSUMER,
    TIMEOUT,
    UNAUTHENTICATED,
    UNKNOWN_COMMAND,
    ErrorCode,
    RequestError,
    error_json,
)
from myservices.framed.catalog import COMMAND_NAMES, COMMANDS, PUSHES
from myservices.framed.wire import MAX_ID, Frame, FrameDecoder, FrameError, encode_json, encode_reply
from myservices.flow import IdleTimer, ReadGate
from myservices.halfclose import HalfCloseableProtocol
from myservices.handlers import values
from myservices.handlers.commands import CommandState, SharedServices, router
from myservices.handlers.pipeline import call, classify, event_body
from myservices.handlers.router import Command, Router
from myservices.hub import Event, Subscriber
from myservices.hub.config import AnonymousMode, anonymous_setting
from myservices.login_limits import peer_host
from myservices.listeners import ConnectionTrackingFactory, StreamListenerService
from myservices.metrics import Metrics, RequestCounts
from myservices.outbound import Outbound
from myservices.ratelimit import TokenBucket
from myservices.context import BuildContext


@dataclass(frozen=True, kw_only=True)
class FramedConfig(StreamServiceConfig):
    """[services.framed]"""

    idle_timeout: float = setting(
        300.0, kind="duration", min=0, max=86400,
        doc="seconds without a request before the connection is closed; clients send ping to stay (0: never)",
    )
    max_body_size: int = setting(
        1 * MiB, kind=SIZE, min=64, max=64 * MiB,
        doc="largest frame body a client may send; a header declaring more gets TOO_LARGE and the connection closes",
    )
    max_in_flight: int = setting(
        32, min=1, max=10_000,
        doc="requests of one connection handled at once; later ones wait unread (TCP backpressure)",
    )
    request_rate: float = setting(
        500.0, min=0.01, max=1e9, doc="requests per second a connection may make; more get RATE_LIMITED"
    )
    request_burst: int = setting(1000, min=1, max=1_000_000_000, doc="requests a connection may make at once")
    anonymous: AnonymousMode = anonymous_setting()


WIRE_FORMAT = "framed"


def _push(name: str, data: dict[str, Any]) -> bytes:
    return encode_json(PUSHES[name], {"id": 0, "push": name, "data": data})


def encode_event(event: Event) -> bytes:
    """The push frame for a hub event; cached per event, so a room costs one encoding."""
    return _push(*event_body(event))


def closing_push(error: ErrorCode, detail: str | None = None) -> bytes:
    """The push that tells a client why the server is closing its connection."""
    return _push("closing", {"error": error_json(error, detail)})


class FramedProtocol(HalfCloseableProtocol):
    """One framed connection: decodes frames, checks each request's envelope, runs it, writes the reply.

    Requests are started in the order they arrive and may finish in any
    order (replies carry the request's id). At most C{max_in_flight} run at
    once, and none start after a barrier command (login, join, ...) until it
    is answered; meanwhile, and while the client does not read its replies,
    the connection is not read either, so a flood of requests waits in the
    client's socket, not in server memory.
    """

    factory: FramedFactory
    outbound: Outbound  # set in connectionMade
    log = Logger()

    def connectionMade(self) -> None:
        super().connectionMade()
        f = self.factory
        self.decoder = FrameDecoder(f.max_body_size)
        self.outbound = Outbound(self.transport, f.max_pending, self._slow_consumer, self._go_on, f.metrics)
        address = peer_host(self.transport.getPeer())
        self.state = CommandState(f.services, Subscriber(self.deliver, self.close), address, f.anonymous)
        self.bucket = TokenBucket(f.request_rate, f.request_burst, f.clock)
        self.in_flight: set[int] = set()
        self.barrier = False
        self.closing = False  # no more requests are read: a broken stream, or closed by the server
        self.stopping = False  # the server is shutting down: answer what is in flight, then close
        self._gate = ReadGate(self.transport)
        self._processing = False
        self._idle = IdleTimer(f.clock, lambda: self.factory.idle_timeout, self.timeoutConnection)
        self._idle.start()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._idle.stop()
        self.closing = True
        self.state.close()
        super().connectionLost(reason)

    # --- input ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closing_gracefully:
            return  # nothing after the close is read (TLS delivers data until the peer answers close_notify)
        self.factory.bytes_in += len(data)
        self.decoder.feed(data)
        self._process()

    def _go_on(self) -> None:
        if self.transport.connected and not self.closing:
            self._process()

    def _process(self) -> None:
        """Start buffered requests until none is left or one of the limits holds the rest back."""
        if self._processing:
            return  # a reply written from inside the loop below; the loop goes on by itself
        self._processing = True
        taken = 0
        try:
            while not self.closing:
                if not self.stopping and (
                    self.barrier or len(self.in_flight) >= self.factory.max_in_flight or self.outbound.paused
                ):
                    self._pause_reading()
                    return
                try:
                    frame = self.decoder.next_frame()
                except FrameError as e:
                    self._broken_stream(e)
                    return
                if frame is None:
                    if not self.stopping:
                        self._resume_reading()
                    return
                taken += 1
                try:
                    self._request(frame)
                except Exception:
                    # a bug must cost this request, not the connection or the reactor
                    self.log.failure("framed: handling a frame failed", code="INTERNAL")
                    self._reply_error(frame.command, 0, INTERNAL)
        finally:
            self._processing = False
            if taken:
                self._idle.touch()  # once per batch of requests: they arrived together

    def _pause_reading(self) -> None:
        self._gate.hold("busy")

    def _resume_reading(self) -> None:
        self._gate.release("busy")

    def _broken_stream(self, e: FrameError) -> None:
        # the next header cannot be found reliably: answer once, then close
        self.closing = True
        self._reply_error(e.command, 0, e.error, e.detail)
        self.factory.metrics.closed(e.error.code.lower())
        self.close_gracefully()

    def _request(self, frame: Frame) -> None:
        self.factory.messages_in += 1
        command_id = frame.command
        try:
            text = frame.body.decode("utf-8")
        except UnicodeDecodeError:
            self._reply_error(command_id, 0, BAD_ENCODING, "the body is not valid UTF-8")
            return
        try:
            body = values.loads(text)
        except values.InvalidJSON as e:
            self._reply_error(command_id, 0, BAD_REQUEST, f"the body is not valid JSON: {e}")
            return
        except values.InvalidValue as e:
            request_id = values.peek_id(text)
            if type(request_id) is not int or not 0 < request_id <= MAX_ID:
                request_id = 0
            self._reply_error(command_id, request_id, BAD_ARGUMENTS, f"a value JSON cannot carry: {e}")
            return
        if not isinstance(body, dict):
            self._reply_error(command_id, 0, BAD_REQUEST, "the body must be a JSON object")
            return
        request_id = body.get("id")
        if type(request_id) is not int or not 0 < request_id <= MAX_ID:
            self._reply_error(command_id, 0, BAD_REQUEST, f'"id" must be an integer from 1 to {MAX_ID}')
            return
        if request_id in self.in_flight:
            # a reply with this id would be taken for the earlier request's
            self._reply_error(command_id, 0, BAD_REQUEST, f"id {request_id} is in use by a request in flight")
            return
        args = body.get("args")
        if args is None:
            args, members = {}, 1
        else:
            members = 2
        if len(body) != members or type(args) is not dict:
            self._reply_error(
                command_id, request_id, BAD_REQUEST,
                'a request is an object with "id" and, optionally, "args" (an object)',
            )
            return
        if self.stopping:
            self._reply_error(command_id, request_id, SHUTTING_DOWN, "the server is shutting down; not started")
            return
        command = self.factory.commands.get(command_id)
        if command is None:
            self._reply_error(command_id, request_id, UNKNOWN_COMMAND, f"no command with id {command_id}")
            return
        if command.login and self.state.account is None:
            self._reply_error(command_id, request_id, UNAUTHENTICATED, f"{command.name} needs a login")
            return
        if not self.bucket.allow():
            self._reply_error(
                command_id, request_id, RATE_LIMITED, f"at most {self.factory.request_rate:g} requests per second"
            )
            return
        try:
            kwargs = command.bind(args)
        except RequestError as e:
            self._reply_error(command_id, request_id, e.error, e.detail)
            return
        result = call(command, self.state, kwargs)
        # most results are dicts: that test is much cheaper than isinstance with Deferred (an ABC)
        if type(result) is not dict and isinstance(result, Deferred):
            self._await(result, command, command_id, request_id)
        else:
            self._reply(result, command, command_id, request_id)  # a synchronous handler: no Deferred at all

    def _await(self, d: Deferred[Any], command: Command, command_id: int, request_id: int) -> None:
        args = (command, command_id, request_id)
        if d.called:
            # finished without waiting (a loaded room, an error found early)
            d.addCallbacks(self._reply, self._failed_f, args, errbackArgs=args)
            return
        self.in_flight.add(request_id)
        if command.barrier:
            self.barrier = True
        d.addCallbacks(self._reply, self._failed_f, args, errbackArgs=args)
        d.addBoth(self._finished, command, request_id)

    def _finished(self, _: object, command: Command, request_id: int) -> None:
        self.in_flight.discard(request_id)
        if command.barrier:
            self.barrier = False
        if self.stopping and not self.in_flight:
            self.close_gracefully()
        elif self.transport.connected and not self.closing:
            self._process()
        self.close_if_answered()

    # --- output --------------------------------------------------------------

    def _reply(self, result: Any, command: Command, command_id: int, request_id: int) -> None:
        try:
            frame = encode_reply(command_id, request_id, result)
        except (TypeError, ValueError, RecursionError):
            self.log.failure("framed: {command} returned a result that is not JSON", command=command.name, code="INTERNAL")
            self._reply_error(command_id, request_id, INTERNAL)
            return
        factory = self.factory
        factory.count_ok(command.name)
        factory.messages_out += 1
        self.outbound.write(frame)

    def _failed_f(self, failure: Failure, command: Command, command_id: int, request_id: int) -> None:
        error = classify(failure, self.factory.service_name, command.name)
        self._reply_error(command_id, request_id, error.error, error.detail, error.retry_after)

    def _reply_error(
        self, command_id: int, request_id: int, error: ErrorCode, detail: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.factory.count(COMMAND_NAMES.get(command_id, "unknown"), error.code)
        self.factory.metrics.error(error.code)
        self.factory.messages_out += 1
        body = {"id": request_id, "ok": False, "error": error_json(error, detail, retry_after)}
        self.outbound.write(encode_json(command_id, body))

    # --- the hub's Subscriber interface, and closing ------------------------------------------

    def deliver(self, event: Event) -> None:
        self.outbound.write(event.encoded(WIRE_FORMAT, encode_event))

    def close(self, error: ErrorCode) -> None:
        if error.code == SLOW_CONSUMER.code:
            self.closing = True
            self.transport.write(closing_push(error))
            self.transport.abortConnection()  # it reads nothing: the push would never be read either
            return
        if self.closing_gracefully:
            return
        self.closing = True
        # the last push the client reads, after what is queued for it; nothing is read any more (TLS reads
        # on until close_notify) and later events or replies are not sent
        self.outbound.write(closing_push(error))
        self.outbound.seal()
        self.close_gracefully()

    def _slow_consumer(self) -> None:
        self.log.info("framed: dropping slow consumer {peer}", peer=str(self.transport.getPeer()), code="SLOW_CONSUMER")
        self.close(SLOW_CONSUMER)

    def stop_timers(self) -> None:
        self._idle.stop()

    def timeoutConnection(self) -> None:
        self.closing = True
        self.factory.metrics.closed("idle_timeout")
        idle = self.factory.idle_timeout
        self.outbound.write(closing_push(TIMEOUT, f"no request for {idle:g} seconds; send ping to stay connected"))
        self.close_gracefully()

    def answered(self) -> bool:
        return not self.in_flight  # the client closed its side: close once this is true

    def close_after_replies(self) -> None:
        if self.decoder.incomplete and not self.closing:
            self.factory.metrics.error(BAD_REQUEST.code)
            self.outbound.write(closing_push(BAD_REQUEST, "the input ended inside a frame; that frame was discarded"))
        super().close_after_replies()

    def shutting_down(self) -> None:
        """Tell the client, answer buffered requests with SHUTTING_DOWN, finish those in flight, close."""
        self.stopping = True
        self._idle.stop()
        self.outbound.write(_push("shutdown", {"message": "the server is shutting down", "retry": True}))
        self._process()
        self._pause_reading()
        if not self.in_flight:
            self.close_gracefully()


class FramedFactory(RequestCounts, ConnectionTrackingFactory):
    """Configuration, the command router and the shared services for L{FramedProtocol} connections."""

    protocol = FramedProtocol
    # read when a connection opens (max_body_size, request_rate, request_burst) or at each use
    anonymous: str
    live_settings = (
        "max_connections", "idle_timeout", "max_body_size", "max_in_flight", "request_rate", "request_burst", "anonymous",
    )
    refusal_message = closing_push(BUSY)
    # live settings: set by configure()
    idle_timeout: float
    max_body_size: int
    max_in_flight: int
    request_rate: float
    request_burst: int

    def __init__(
        self,
        name: str,
        cfg: FramedConfig,
        services: SharedServices,
        metrics: Metrics,
        clock: IReactorTime,
        max_pending: int,
        router: Router = router,
        command_ids: Mapping[str, int] = COMMANDS,
    ) -> None:
        super().__init__(name, cfg.max_connections, metrics.for_service(name), clock)
        self.services = services
        self.command_ids = command_ids
        # the wire carries numbers: every routed command needs one
        self.commands = {command_ids[c.name]: c for c in router.commands.values()}
        self.configure(cfg)
        self.max_pending = max_pending
        self.start_counting(metrics, self.metrics)


def build(name: str, cfg: FramedConfig, ctx: BuildContext) -> IService:
    """The framed JSON listener for C{[services.NAME]}."""
    services = ctx.shared
    factory = FramedFactory(name, cfg, services, ctx.metrics, ctx.reactor, ctx.config.hub.max_pending)
    return StreamListenerService(name, cfg.endpoint, factory, ctx.reactor, ctx.config.daemon.shutdown_timeout)
