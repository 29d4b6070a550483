"""The PB service: a Perspective Broker over a twisted.cred portal, with limits for untrusted clients.

Twisted's L{pb.Broker} does the wire protocol. L{PBConnection} adds what a
public daemon needs around it: a byte limit per message, one login per
connection within a deadline, a request rate, at most C{max_in_flight} calls
at once (then the connection is not read), a bounded output queue (a client
that stops reading is dropped as a slow consumer), and one place where every
call's failure becomes a L{RequestFailed} with a shared error code, so no
traceback ever reaches a client.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from twisted.application.service import IService
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import pb
from twisted.spread.jelly import InsecureJelly, SecurityOptions

from myservices.settings import DURATION, SIZE, KiB, MiB, StreamServiceConfig, setting
from myservices.errors import (
    BAD_ARGUMENTS,
    RATE_LIMITED,
    SHUTTING_DOWN,
    SLOW_CONSUMER,
    UNKNOWN_COMMAND,
    ErrorCode,
    RequestError,
)
from myservices.flow import IdleTimer, ReadGate
from myservices.halfclose import HalfCloseableProtocol
from myservices.handlers.commands import SharedServices
from myservices.handlers.pipeline import call, classify
from myservices.handlers.router import Command
from myservices.listeners import ConnectionTrackingFactory, StreamListenerService
from myservices.metrics import Metrics, RequestCounts
from myservices.outbound import Outbound
from myservices.pb.banana import encode as banana_encode
from myservices.pb.calls import bind_call, jelly_security
from myservices.pb.errors import RequestFailed
from myservices.login_limits import peer_host
from myservices.pb.login import GatewayRoot, make_portal
from myservices.ratelimit import TokenBucket
from myservices.context import BuildContext

_log = Logger()


@dataclass(frozen=True, kw_only=True)
class PBConfig(StreamServiceConfig):
    """[services.pb]"""

    allow_anonymous: bool = setting(
        False, doc="let clients log in without an account (loginAnonymous); they get read-only methods"
    )
    login_timeout: float = setting(
        30.0, kind=DURATION, min=0, max=3600, doc="seconds a connection may take to log in (0: no limit)"
    )
    max_message_size: int = setting(
        256 * KiB, kind=SIZE, min=1 * KiB, max=64 * MiB,
        doc="largest PB message (one call or answer, as encoded) a client may send; more closes the connection",
    )
    max_in_flight: int = setting(
        32, min=1, max=10_000, doc="calls of one connection handled at once; later ones wait unread (backpressure)"
    )
    request_rate: float = setting(
        500.0, min=0.01, max=1e9, doc="calls per second a connection may make; more get RATE_LIMITED"
    )
    request_burst: int = setting(1000, min=1, max=1_000_000_000, doc="calls a connection may make at once")
    max_unanswered: int = setting(
        100, min=1, max=100_000,
        doc="room events a listener may leave unanswered; past it the listener is dropped (it left the room)",
    )


class PBConnection(HalfCloseableProtocol, pb.Broker):
    """One PB connection: Twisted's broker with limits, flow control and error translation."""

    factory: PBFactory  # type: ignore[assignment]  # twisted.spread leaves Broker.factory unannotated (None)
    outbound: Outbound  # set in connectionMade

    def __init__(self, isClient: bool = False, security: SecurityOptions | None = None) -> None:
        pb.Broker.__init__(self, isClient, security if security is not None else jelly_security())

    def connectionMade(self) -> None:
        f = self.factory
        # before the broker's first write (the dialect offer)
        self.outbound = Outbound(self.transport, f.max_pending, self._slow_consumer, self._drained, f.metrics)
        self.bucket = TokenBucket(f.request_rate, f.request_burst, f.clock)
        self.in_flight = 0
        self.logged_in = False
        self.stopping = False
        self.closing = False
        self._gate = ReadGate(self.transport)
        self._message_bytes = 0  # received since the last complete message
        self._answer_required = True
        self._in_message = False  # inside proto_message: a close waits until the broker answered
        self._close_after_message = False
        self._timers: dict[str, IDelayedCall] = {}
        if f.login_timeout:
            self._timers["login"] = f.clock.callLater(f.login_timeout, self._login_timeout)
        self._idle = IdleTimer(
            f.clock, lambda: self.factory.idle_timeout,
            lambda: self._drop("idle_timeout", f"no input for {self.factory.idle_timeout:g} seconds"),
        )
        self._idle.start()
        super().connectionMade()

    @property
    def address(self) -> str | None:
        """The client's IP address (failed logins are limited per address)."""
        return peer_host(self.transport.getPeer()) if self.transport is not None else None

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closing = True
        self.stop_timers()
        super().connectionLost(reason)

    def stop_timers(self) -> None:
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        self._idle.stop()

    @property
    def peer(self) -> str:
        return str(self.transport.getPeer())

    # --- input -----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closing or self.closing_gracefully:
            return
        self._idle.touch()
        self.factory.bytes_in += len(data)
        # banana only limits single strings and lists (640 KiB each); this bounds a whole message
        self._message_bytes += len(data)
        if self._message_bytes > self.factory.max_message_size:
            self._drop("too_large", f"a message over max_message_size={self.factory.max_message_size} bytes")
            return
        try:
            super().dataReceived(data)
        except Exception as e:
            # a malformed stream (bad prefix, unknown type byte, ...): nothing after it can be trusted
            self._drop("bad_stream", f"malformed PB data: {str(e)[:200]}")

    def proto_message(self, requestID: int, objectID: Any, message: Any, answerRequired: int, netArgs: Any, netKw: Any) -> None:
        # a call sent without wanting an answer has nobody to take its failure: see call()
        self._answer_required = bool(answerRequired)
        self._in_message = True
        try:
            super().proto_message(requestID, objectID, message, answerRequired, netArgs, netKw)
        finally:
            self._in_message = False
        if self._close_after_message:
            # a call that made us close (malformed arguments) is answered first: the broker wrote it by now
            self._close_after_message = False
            self.close_gracefully()

    def expressionReceived(self, sexp: Any) -> None:
        if self.closing:
            return  # the rest of a chunk that made us close
        self._message_bytes = 0
        self.factory.messages_in += 1
        try:
            super().expressionReceived(sexp)
        except Exception as e:
            # a well-formed stream with a malformed PB message (wrong arity, unknown object, ...)
            self._drop("bad_message", f"malformed PB message: {str(e)[:200]}")

    def _drop(self, reason: str, detail: str) -> None:
        if self.closing:
            return
        self.closing = True
        _log.info("pb: closing {peer}: {detail}", peer=self.peer, detail=detail)
        self.factory.metrics.closed(reason)
        if self._in_message:
            self._close_after_message = True
        else:
            self.close_gracefully()

    # --- output ------------------------------------------------------------------

    def sendEncoded(self, obj: Any) -> None:
        # through the bounded queue, so a client that does not read cannot grow server memory
        data = banana_encode(self, obj)
        self.factory.messages_out += 1
        self.outbound.write(data)

    def _slow_consumer(self) -> None:
        _log.info("pb: dropping slow consumer {peer}", peer=self.peer, code="SLOW_CONSUMER")
        self.close(SLOW_CONSUMER)

    def close(self, error: ErrorCode) -> None:
        """Disconnect now (PB has no goodbye message; pending calls fail with PBConnectionLost)."""
        self.closing = True
        self.transport.abortConnection()

    # --- calls -------------------------------------------------------------------

    def call(self, label: str, command: Command, target: Any, args: Any, kw: Any) -> Any:
        """Run one remote call: unserialize, check, rate-limit, run C{command.handler(target, ...)}.

        Returns the result, or a Deferred of it; a failure is always a
        Deferred failing with a L{RequestFailed}. (The broker answers a plain
        result at once: a synchronous command costs no Deferred.) C{args} and
        C{kw} are still serialized (unserializing may fail, too).
        """
        result = self._call(label, command, target, args, kw)
        if not self._answer_required and type(result) is not dict and isinstance(result, Deferred):
            # the broker drops the result of such a call; its failure is counted, not left unhandled
            result.addErrback(lambda _: None)
        return result

    def _call(self, label: str, command: Command, target: Any, args: Any, kw: Any) -> Any:
        if self.outbound.paused:
            # the client is not reading its answers: take no more calls until it does (see _drained)
            self._pause_reading()
        if self.stopping:
            return self._error(command, RequestError(SHUTTING_DOWN, "the server is shutting down; not started"))
        if not self.bucket.allow():
            return self._error(
                command, RequestError(RATE_LIMITED, f"at most {self.factory.request_rate:g} calls per second")
            )
        try:
            args, kw = self.unserialize(args), self.unserialize(kw)
        except InsecureJelly as e:
            # a type outside the allowed set: refused by the jelly security options, the client's error
            return self._error(command, RequestError(BAD_ARGUMENTS, f"{label}: a type that is not allowed: {str(e)[:100]}"))
        except RecursionError:
            return self._error(command, RequestError(BAD_ARGUMENTS, f"{label}: arguments are nested too deeply"))
        except Exception as e:
            # malformed jelly: the stream parsed but its content cannot be trusted; this call and the connection end
            self._drop("bad_message", f"malformed PB arguments: {str(e)[:200]}")
            return self._error(command, RequestError(BAD_ARGUMENTS, f"{label}: malformed arguments"))
        try:
            kwargs = bind_call(command, label, args, kw)
        except RequestError as e:
            return self._error(command, e)
        d = call(command, target, kwargs)
        if type(d) is dict or not isinstance(d, Deferred):  # the dict test first: Deferred is an ABC
            self.factory.count_ok(command.name)
            return d
        d.addCallbacks(self._ok, self._failed_f, (command,), errbackArgs=(command,))
        if d.called:
            return d
        self._started()
        # the broker writes the answer from its callbacks on what this returns: the call counts as finished
        # only after that, so a close that waits for the calls in flight (half-close, shutdown) comes after it
        answer: Deferred[Any] = Deferred()
        d.addBoth(self._answer_then_finish, answer)
        return answer

    def _answer_then_finish(self, result: Any, answer: Deferred[Any]) -> None:
        if isinstance(result, Failure):
            answer.errback(result)
        else:
            answer.callback(result)
        self._finished()

    def unknown(self, label: str, known: Iterable[str]) -> Deferred[Any]:
        """The failure for a call to a method this object does not have."""
        listed = ", ".join(sorted(known))
        return self.refuse("unknown", RequestError(UNKNOWN_COMMAND, f'no method "{label[:64]}" here (methods: {listed})'))

    def refuse(self, label: str, error: RequestError) -> Deferred[Any]:
        """A call answered with C{error} without running anything."""
        self.factory.count(label, error.error.code)
        self.factory.metrics.error(error.error.code)
        d: Deferred[Any] = fail(RequestFailed.from_request_error(error))
        if not self._answer_required:
            d.addErrback(lambda _: None)
        return d

    def _ok(self, result: Any, command: Command) -> Any:
        self.factory.count(command.name, "ok")
        return result

    def _failed_f(self, failure: Failure, command: Command) -> Deferred[Any]:
        return self._error(command, classify(failure, self.factory.service_name, command.name))

    def _error(self, command: Command, e: RequestError) -> Deferred[Any]:
        self.factory.count(command.name, e.error.code)
        self.factory.metrics.error(e.error.code)
        return fail(RequestFailed.from_request_error(e))

    def _started(self) -> None:
        self.in_flight += 1
        if self.in_flight >= self.factory.max_in_flight:
            self._pause_reading()

    def _finished(self) -> None:
        self.in_flight -= 1
        if self.stopping:
            if not self.in_flight:
                self.close_gracefully()
        elif self.in_flight < self.factory.max_in_flight and not self.outbound.paused:
            self._resume_reading()
        self.close_if_answered()

    def answered(self) -> bool:
        return not self.in_flight  # the client closed its side: close once this is true

    def _drained(self) -> None:
        if not self.stopping and self.in_flight < self.factory.max_in_flight:
            self._resume_reading()

    def _pause_reading(self) -> None:
        self._gate.hold("busy")

    def _resume_reading(self) -> None:
        if not self.closing:
            self._gate.release("busy")

    # --- login and timers ----------------------------------------------------------------

    def login_done(self) -> None:
        self.logged_in = True
        timer = self._timers.pop("login", None)
        if timer is not None and timer.active():
            timer.cancel()

    def _login_timeout(self) -> None:
        self._timers.pop("login", None)
        self._drop("login_timeout", f"not logged in after {self.factory.login_timeout:g} seconds")


    def shutting_down(self) -> None:
        """Finish the calls in flight (new ones get SHUTTING_DOWN), then disconnect."""
        self.stopping = True
        self._pause_reading()
        if not self.in_flight:
            self.close_gracefully()


class PBFactory(RequestCounts, ConnectionTrackingFactory, pb.PBServerFactory):
    """Configuration, the cred portal and the shared services for L{PBConnection}s."""

    protocol = PBConnection
    live_settings = (
        "max_connections", "idle_timeout", "login_timeout", "max_message_size", "max_in_flight",
        "request_rate", "request_burst", "max_unanswered",
    )
    # a refused client cannot be told in PB terms before the dialect exchange
    refusal_message = b""
    # live settings: set by configure()
    idle_timeout: float
    login_timeout: float
    max_message_size: int
    max_in_flight: int
    request_rate: float
    request_burst: int
    max_unanswered: int

    def __init__(
        self,
        name: str,
        cfg: PBConfig,
        services: SharedServices,
        metrics: Metrics,
        clock: IReactorTime,
        max_pending: int,
        portal: Portal | None = None,
    ) -> None:
        ConnectionTrackingFactory.__init__(self, name, cfg.max_connections, metrics.for_service(name), clock)
        self.services = services
        self.portal = portal if portal is not None else make_portal(services.accounts, cfg.allow_anonymous, services.logins)
        self.allow_anonymous = cfg.allow_anonymous
        self.root = GatewayRoot()
        self.unsafeTracebacks = False  # never: a client must not read server internals
        self.security = jelly_security()
        self.configure(cfg)
        self.max_pending = max_pending
        self.start_counting(metrics, self.metrics)


def build(name: str, cfg: PBConfig, ctx: BuildContext) -> IService:
    """The PB listener for C{[services.NAME]}."""
    services = ctx.shared
    factory = PBFactory(name, cfg, services, ctx.metrics, ctx.reactor, ctx.config.hub.max_pending)
    return StreamListenerService(name, cfg.endpoint, factory, ctx.reactor, ctx.config.daemon.shutdown_timeout)

