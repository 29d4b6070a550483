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
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from myservices.settings import SIZE, MiB, StreamServiceConfig, setting
from myservices.errors import (
    BAD_ARGUMENTS,
    BAD_ENCODING,
    INTERNAL,
    LINE_TOO_LONG,
    NOT_IN_ROOM,
    SLOW_CONSUMER,
    UNKNOWN_COMMAND,
    ErrorCode,
    RequestError,
)
from myservices.chat_lines import HELP, encode_event, gap_line, history_line
from myservices.halfclose import HalfCloseableProtocol
from myservices.handlers.commands import SINCE
from myservices.handlers.pipeline import classify
from myservices.handlers.values import client_error
from myservices.hub import Event, Hub, Joined, Message, Session, Subscriber
from myservices.listeners import ConnectionTrackingFactory, StreamListenerService
from myservices.metrics import ServiceMetrics
from myservices.outbound import Outbound
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


WIRE_FORMAT = "line"


def _terminated(data: bytes) -> bytes:
    return data + b"\n" if data and not data.endswith(b"\n") else data


class ChatProtocol(HalfCloseableProtocol, LineReceiver, TimeoutMixin):
    """One chat connection: parses lines into hub calls and renders hub events as lines.

    A client that closes its side gets every line it sent answered, in order,
    then the server closes.
    """

    delimiter = b"\n"  # a trailing \r is stripped, so \r\n and \n both work
    factory: ChatFactory
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
        self.setTimeout(factory.idle_timeout or None)
        self.pauseProducing()  # no command before the session exists
        Deferred.fromCoroutine(self._open()).addErrback(self._not_opened)

    async def _open(self) -> None:
        self.session = await self.hub.open_session(Subscriber(self.deliver, self.close))
        if not self.transport.connected:
            self.hub.close_session_later(self.session)
            return
        self.send_line(f"WELCOME {self.session.nick} myservices chat; /help lists the commands")
        self._resume(None)

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
        self.transport.write(f"ERR {error.code} {error.message}\r\n".encode())
        self.transport.abortConnection()

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
        self.send_error(LINE_TOO_LONG, f"lines are limited to {self.MAX_LENGTH} bytes; the line was discarded")
        end = line.find(b"\n")
        if end < 0:
            self._discarding = True
        else:
            self._rest = line[end + 1 :]

    def lineReceived(self, raw: bytes) -> None:
        self.resetTimeout()
        self.metrics.messages_in.inc()
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.send_error(BAD_ENCODING)
            return
        if not line.strip():
            return
        d = Deferred.fromCoroutine(self._handle(line))
        if not d.called:
            # one command at a time: later lines wait until this one is answered
            self.pauseProducing()
            d.addBoth(self._resume)

    def _resume(self, _: object) -> None:
        if self.transport is not None and self.transport.connected:
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
        return not self.paused  # paused: a command is in flight, later lines wait for it

    def stop_timers(self) -> None:
        self.setTimeout(None)

    async def _handle(self, line: str) -> None:
        try:
            if line.startswith("//"):
                await self._say(line[1:])
            elif line.startswith("/"):
                name, _, args = line[1:].partition(" ")
                handler = getattr(self, f"do_{name.lower()}", None) if name.isalpha() else None
                if handler is None:
                    raise RequestError(UNKNOWN_COMMAND, f"unknown command /{name}; /help lists the commands")
                await handler(args.strip())
            else:
                await self._say(line)
        except Exception as e:
            error = client_error(e)
            if error is None:
                self.log.failure("chat: command {line!r} failed", line=line[:100], code="INTERNAL")
                error = RequestError(INTERNAL)
            self.send_error(error.error, error.detail)

    def _session(self) -> Session:
        # lines are read only once the session is open (see connectionMade)
        assert self.session is not None
        return self.session

    async def _say(self, text: str) -> None:
        if self.current is None:
            raise RequestError(NOT_IN_ROOM, "join a room first (/join ROOM), or use /msg ROOM TEXT")
        await self.hub.publish(self._session(), self.current, text)

    # --- commands -------------------------------------------------------------

    @staticmethod
    def _words(args: str, least: int, most: int, usage: str) -> list[str]:
        words = args.split()
        if not least <= len(words) <= most:
            raise RequestError(BAD_ARGUMENTS, f"usage: {usage}")
        return words

    def _room_arg(self, words: list[str], usage: str) -> str:
        if words:
            return self.hub.check_room(words[0])
        if self.current is None:
            raise RequestError(BAD_ARGUMENTS, f"usage: {usage} (you are in no room)")
        return self.current

    async def do_nick(self, args: str) -> None:
        (nick,) = self._words(args, 1, 1, "/nick NAME")
        await self.hub.set_nick(self._session(), nick)
        self.send_line(f"OK nick {nick}")

    @staticmethod
    def _since(words: list[str], usage: str) -> int | None:
        if len(words) < 2:
            return None
        word = words[1]
        # ASCII digits only (str.isdigit() takes "²"); the length bound keeps int() cheap
        if not (word.isascii() and word.isdigit()) or len(word) > 30:
            raise RequestError(BAD_ARGUMENTS, f"usage: {usage} (SINCE: the id of the last message you saw, 0 or more)")
        return int(SINCE.check(int(word)))

    async def do_join(self, args: str) -> None:
        words = self._words(args, 1, 2, "/join ROOM [SINCE]")
        since = self._since(words, "/join ROOM [SINCE]")
        joined = await self.hub.join(self._session(), words[0], since)
        self.current = joined.room
        self._send_joined("join", joined, since, history=True)

    def _send_joined(self, command: str, joined: Joined, since: int | None, history: bool = False) -> None:
        """HISTORY lines (with SINCE: what was missed), a GAP line if not all of it is kept, then the OK line.

        Without SINCE the reply is what it always was; with it, the OK line ends with the room's last id.
        """
        if history or since is not None:
            self._send_history(joined.room, joined.history)
        if since is None:
            self.send_line(f"OK {command} {joined.room}")
            return
        if not joined.recovered:
            self.send_line(gap_line(joined, since))
        self.send_line(f"OK {command} {joined.room} {joined.last_id}")

    async def do_part(self, args: str) -> None:
        room = self._room_arg(self._words(args, 0, 1, "/part [ROOM]"), "/part ROOM")
        session = self._session()
        await self.hub.part(session, room)
        if self.current == room:
            self.current = next(reversed(session.rooms), None)
        self.send_line(f"OK part {room}")

    async def do_msg(self, args: str) -> None:
        name, _, text = args.partition(" ")
        if not name or not text:
            raise RequestError(BAD_ARGUMENTS, "usage: /msg ROOM TEXT")
        message = await self.hub.publish(self._session(), name, text)
        self.send_line(f"OK msg {message.room} {message.id}")

    async def do_rooms(self, args: str) -> None:
        self._words(args, 0, 0, "/rooms")
        for info in await self.hub.rooms():
            self.send_line(f"ROOM {info.name} {info.members} {info.subscribers}")
        self.send_line("END rooms")

    async def do_who(self, args: str) -> None:
        room = self._room_arg(self._words(args, 0, 1, "/who [ROOM]"), "/who ROOM")
        for nick in await self.hub.who(room):
            self.send_line(f"WHO {room} {nick}")
        self.send_line(f"END who {room}")

    async def do_history(self, args: str) -> None:
        words = self._words(args, 0, 2, "/history [ROOM] [N]")
        limit = None
        if len(words) == 2 or (words and words[-1].isascii() and words[-1].isdigit()):
            n = words.pop()
            # str.isdigit() also takes "²" and "⑴", which int() refuses: only ASCII digits are a number here
            if not (n.isascii() and n.isdigit()):
                raise RequestError(BAD_ARGUMENTS, "usage: /history [ROOM] [N] (N: a number of messages)")
            limit = int(n) if len(n) <= 9 else 10**9  # more than history_size is history_size
        room = self._room_arg(words, "/history ROOM [N]")
        self._send_history(room, await self.hub.history(room, limit))
        self.send_line(f"END history {room}")

    async def do_sub(self, args: str) -> None:
        words = self._words(args, 1, 2, "/sub TOPIC [SINCE]")
        since = self._since(words, "/sub TOPIC [SINCE]")
        self._send_joined("sub", await self.hub.subscribe(self._session(), words[0], since), since)

    async def do_unsub(self, args: str) -> None:
        (name,) = self._words(args, 1, 1, "/unsub TOPIC")
        topic = self.hub.check_room(name)
        await self.hub.unsubscribe(self._session(), topic)
        self.send_line(f"OK unsub {topic}")

    async def do_pub(self, args: str) -> None:
        name, _, text = args.partition(" ")
        if not name or not text:
            raise RequestError(BAD_ARGUMENTS, "usage: /pub TOPIC TEXT")
        message = await self.hub.publish(self._session(), name, text, as_member=False)
        self.send_line(f"OK pub {message.room} {message.id}")

    async def do_help(self, args: str) -> None:
        for line in HELP:
            self.send_line(f"INFO {line}")
        self.send_line("END help")

    async def do_quit(self, args: str) -> None:
        self.send_line("BYE goodbye")
        self.close_gracefully()

    def _send_history(self, room: str, messages: list[Message]) -> None:
        for m in messages:
            self.send_line(history_line(room, m))


class ChatFactory(ConnectionTrackingFactory):
    """Configuration and the shared hub for L{ChatProtocol} connections."""

    protocol = ChatProtocol
    # live settings: set by configure()
    idle_timeout: float
    max_line_length: int
    live_settings = ("max_connections", "idle_timeout", "max_line_length")

    def __init__(self, name: str, cfg: ChatConfig, hub: Hub, metrics: ServiceMetrics, clock: IReactorTime) -> None:
        super().__init__(name, cfg.max_connections, metrics, clock)
        self.hub = hub
        self.configure(cfg)


def build(name: str, cfg: ChatConfig, ctx: BuildContext) -> IService:
    """The chat listener for C{[services.NAME]}."""
    factory = ChatFactory(name, cfg, ctx.hub, ctx.metrics.for_service(name), ctx.reactor)
    return StreamListenerService(name, cfg.endpoint, factory, ctx.reactor, ctx.config.daemon.shutdown_timeout)
