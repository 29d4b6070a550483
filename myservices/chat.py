"""The TCP line chat front end of the hub: telnet and nc friendly, UTF-8, one command per line.

The protocol is documented in docs/protocols.md. Every server line is
``KEYWORD arguments...``; an explicit command ends with exactly one final
line, ``OK``, ``END`` or ``ERR CODE message``. Events (MSG, JOIN, PART, NICK)
can arrive at any time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.application.service import IService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from myservices.settings import SIZE, MiB, StreamServiceConfig, setting
from myservices.errors import (
    BAD_ENCODING,
    INTERNAL,
    LINE_TOO_LONG,
    SLOW_CONSUMER,
    UNKNOWN_COMMAND,
    ErrorCode,
    RequestError,
)
from myservices.chat_commands import ChatCommands, redacted
from myservices.chat_lines import encode_event
from myservices.halfclose import HalfCloseableProtocol
from myservices.handlers.pipeline import classify
from myservices.handlers.values import client_error
from myservices.hub import Event, Hub, Session, Subscriber
from myservices.hub.config import AnonymousMode, anonymous_setting
from myservices.logins import Logins
from myservices.listeners import ConnectionTrackingFactory, StreamListenerService
from myservices.metrics import ServiceMetrics
from myservices.outbound import Outbound
from myservices.replies import OrderedReplies
from myservices.context import BuildContext


@dataclass(frozen=True, kw_only=True)
class ChatConfig(StreamServiceConfig):
    """[services.chat]"""

    idle_timeout: float = setting(
        3600.0, kind="duration", min=0, max=86400,
        doc="seconds without input before a connection is closed (0: never)",
    )
    max_line_length: int = setting(
        4096, kind=SIZE, min=64, max=1 * MiB,
        doc="longest line a client may send; a longer one is discarded with ERR LINE_TOO_LONG",
    )
    max_in_flight: int = setting(
        32, min=1, max=10000,
        doc="publishing lines (text, /msg, /pub) of one connection running at once, answered in order; "
        "while that many run, the connection is not read",
    )
    anonymous: AnonymousMode = anonymous_setting()


WIRE_FORMAT = "line"


def _terminated(data: bytes) -> bytes:
    return data + b"\n" if data and not data.endswith(b"\n") else data


def _publishes(line: str) -> bool:
    """Whether C{line} only publishes (text, //text, /msg, /pub): such lines may run while earlier ones do."""
    return not line.startswith("/") or line.startswith("//") or line[:5].lower() in ("/msg ", "/pub ")


Outcome = str | RequestError | None  # a command's final line, its error, or nothing to say


class ChatProtocol(HalfCloseableProtocol, LineReceiver, TimeoutMixin, ChatCommands):
    """One chat connection: parses lines into hub calls and renders hub events as lines.

    A client that closes its side gets every line it sent answered, in order,
    then the server closes.
    """

    delimiter = b"\n"  # a trailing \r is stripped, so \r\n and \n both work
    factory: ChatFactory
    outbound: Outbound  # set in connectionMade
    log = Logger()

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:  # noqa: N802 (TimeoutMixin's)
        """TimeoutMixin schedules through this: on the factory's clock."""
        return self.factory.clock.callLater(period, func)

    @property
    def MAX_LENGTH(self) -> int:  # type: ignore[override]  # noqa: N802 (LineReceiver's name)
        # read from the factory each time, so a reload (SIGHUP) applies to open connections too
        return self.factory.max_line_length

    def connectionMade(self) -> None:
        super().connectionMade()
        factory = self.factory
        self.hub: Hub = factory.hub
        self.metrics = factory.metrics
        self.current: str | None = None
        self._discarding = False
        self._rest = b""
        self.outbound = Outbound(self.transport, self.hub.config.max_pending, self._slow_consumer, metrics=self.metrics)
        self.session: Session | None = None
        # publishing lines run at once, answered in order; any other command runs alone, after them
        self.replies: OrderedReplies[Outcome] = OrderedReplies(self._emit, self._resume)
        self._alone = False  # a command that runs alone is running
        self._waiting: str | None = None  # a command read while publishing lines ran: it runs after them
        self.setTimeout(factory.idle_timeout or None)
        self.pauseProducing()  # no command before the session exists
        Deferred.fromCoroutine(self._open()).addErrback(self._not_opened)

    async def _open(self) -> None:
        self.session = await self.hub.open_session(Subscriber(self.deliver, self.close), self.factory.anonymous)
        if not self.transport.connected:
            self.hub.close_session_later(self.session)
            return
        self.send_line(f"WELCOME {self.session.nick} myservices chat; /help lists the commands")
        self._resume()

    def _not_opened(self, failure: Failure) -> None:
        # the shared rule: the hub's own answers (ENGINE_UNAVAILABLE while Redis is away) keep their
        # codes; anything else is a bug, logged once with its traceback. The client is told before the
        # close (close() aborts, for slow consumers, and would drop the line)
        error = classify(failure, "chat", "connect")
        self.send_line(f"ERR {error.error.code} {error.detail}")
        self.close_gracefully()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.setTimeout(None)
        if self.session is not None:
            self.hub.close_session_later(self.session)
        super().connectionLost(reason)

    # --- the hub's Subscriber interface ------------------------------------------

    def deliver(self, event: Event) -> None:
        self.outbound.write(event.encoded(WIRE_FORMAT, encode_event))

    def close(self, error: ErrorCode) -> None:
        line = f"ERR {error.code} {error.message}\r\n".encode()
        if error.code == SLOW_CONSUMER.code:
            self.transport.write(line)
            self.transport.abortConnection()  # it reads nothing: its error line would never be read either
            return
        if self.closing_gracefully:
            return
        # the last line the client reads, after what is queued for it: nothing later (its own PART, the
        # answers of lines in flight) is sent, and no line it sends is run (TLS reads on until close_notify)
        self.outbound.write(line)
        self.outbound.seal()
        self.close_gracefully()

    def _slow_consumer(self) -> None:
        self.log.info("chat: dropping slow consumer {peer}", peer=self.transport.getPeer(), code="SLOW_CONSUMER")
        self.close(SLOW_CONSUMER)

    def timeoutConnection(self) -> None:
        self.metrics.closed("idle_timeout")
        self.send_line("BYE idle timeout")
        self.close_gracefully()

    def shutting_down(self) -> None:
        self.send_line("BYE server shutting down")
        super().shutting_down()

    # --- output ---------------------------------------------------------------

    def send_line(self, line: str) -> None:
        self.outbound.write(line.encode("utf-8") + b"\r\n")

    def send_error(self, error: ErrorCode, detail: str | None = None) -> None:
        self.metrics.error(error.code)
        self.send_line(f"ERR {error.code} {detail or error.message}")

    # --- input ----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closing_gracefully:
            return  # what TLS still delivers while the close waits for the peer's close_notify
        if self._discarding:
            end = data.find(b"\n")
            if end < 0:
                return  # still inside the over-long line
            self._discarding = False
            data = data[end + 1 :]
        self.metrics.bytes_in.inc(len(data))
        super().dataReceived(data)
        while self._rest and not self.paused:
            rest, self._rest = self._rest, b""
            super().dataReceived(rest)

    def lineLengthExceeded(self, line: bytes) -> None:
        # LineReceiver hands over everything buffered: the long line and maybe more lines after it
        detail = f"lines are limited to {self.MAX_LENGTH} bytes; the line was discarded"
        self.replies.add(succeed(RequestError(LINE_TOO_LONG, detail)))  # after the replies to earlier lines
        end = line.find(b"\n")
        if end < 0:
            self._discarding = True
        else:
            self._rest = line[end + 1 :]

    def lineReceived(self, raw: bytes) -> None:
        if self.closing_gracefully:
            return  # /quit, or closed by the server: nothing after it runs
        self.resetTimeout()
        self.metrics.messages_in.inc()
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.replies.add(succeed(RequestError(BAD_ENCODING)))  # after the replies to earlier lines
            return
        if not line.strip():
            return
        if _publishes(line):
            self.replies.add(Deferred.fromCoroutine(self._outcome(line)))
            if len(self.replies) >= self.factory.max_in_flight:
                self.pauseProducing()  # read again once one is answered
        elif self.replies:
            self._waiting = line  # after the publishing lines before it
            self.pauseProducing()
        else:
            self._run_alone(line)

    def _run_alone(self, line: str) -> None:
        self._alone = True
        d = Deferred.fromCoroutine(self._outcome(line))
        if not d.called:
            self.pauseProducing()  # later lines wait until this one is answered
        d.addCallback(self._answered_alone)

    def _answered_alone(self, outcome: Outcome) -> None:
        self._alone = False
        self._emit(outcome)
        self._resume()

    def _emit(self, outcome: Outcome) -> None:
        if isinstance(outcome, RequestError):
            self.send_error(outcome.error, outcome.detail)
        elif outcome is not None:
            self.send_line(outcome)

    def _resume(self) -> None:
        """Read again if nothing holds reading back (a command running alone, one waiting, too many running)."""
        if self.transport is None or not self.transport.connected or self.session is None or self._alone:
            return
        if self.transport.disconnecting or self.closing_gracefully or self.outbound.overflowed:
            return  # /quit, shutdown, a slow consumer dropped: no line after it runs
        if self._waiting is not None:
            if not self.replies:
                line, self._waiting = self._waiting, None
                self._run_alone(line)  # which reads again once it is answered
            return
        if len(self.replies) >= self.factory.max_in_flight:
            return
        if self.paused:
            self.resumeProducing()
        self.close_if_answered()

    # --- the client closed its side (HalfCloseableProtocol) ----------------------

    def input_ended(self) -> None:
        # a last line without its newline is a line too (what `printf '/join x' | nc -q1` means);
        # the rest of an over-long line stays discarded
        if self._discarding:
            return
        if self._rest:  # lines after an over-long one, waiting for a command in flight
            self._rest = _terminated(self._rest)
            return
        LineReceiver.dataReceived(self, _terminated(self.clearLineBuffer()))

    def answered(self) -> bool:
        # paused: a command is in flight, later lines wait for it; _busyReceiving: lines of this read
        # are still being handled (whoever drives LineReceiver asks again when it is done)
        return not self.paused and not self._alone and not self.replies and not self._busyReceiving

    def stop_timers(self) -> None:
        self.setTimeout(None)

    async def _outcome(self, line: str) -> Outcome:
        """Run one line; what to answer once every line before it is answered (never raises)."""
        try:
            if line.startswith("//"):
                await self._say(line[1:])
                return None
            if line.startswith("/"):
                name, _, args = line[1:].partition(" ")
                handler = getattr(self, f"do_{name.lower()}", None) if name.isalpha() else None
                if handler is None:
                    raise RequestError(UNKNOWN_COMMAND, f"unknown command /{name}; /help lists the commands")
                result: str | None = await handler(args.strip())
                return result
            await self._say(line)
            return None
        except Exception as e:
            error = client_error(e)
            if error is None:
                self.log.failure("chat: command {line!r} failed", line=redacted(line)[:100], code="INTERNAL")
                error = RequestError(INTERNAL)
            return error


class ChatFactory(ConnectionTrackingFactory):
    """Configuration and the shared hub for L{ChatProtocol} connections."""

    protocol = ChatProtocol
    # live settings: set by configure()
    idle_timeout: float
    max_line_length: int
    max_in_flight: int
    anonymous: str
    live_settings = ("max_connections", "idle_timeout", "max_line_length", "max_in_flight", "anonymous")

    def __init__(
        self, name: str, cfg: ChatConfig, hub: Hub, metrics: ServiceMetrics, clock: IReactorTime,
        logins: Logins | None = None,
    ) -> None:
        super().__init__(name, cfg.max_connections, metrics, clock)
        self.hub = hub
        self.logins = logins
        self.configure(cfg)


def build(name: str, cfg: ChatConfig, ctx: BuildContext) -> IService:
    """The chat listener for C{[services.NAME]}."""
    factory = ChatFactory(name, cfg, ctx.hub, ctx.metrics.for_service(name), ctx.reactor, ctx.logins)
    return StreamListenerService(name, cfg.endpoint, factory, ctx.reactor, ctx.config.daemon.shutdown_timeout)
