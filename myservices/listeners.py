"""Listening services and the connection bookkeeping every stream service shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IListeningPort, IReactorTime
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from myservices.coalesce import WriteCoalescer
from myservices.endpoints import missing_inherited_socket
from myservices.errors import BUSY
from myservices.metrics import ServiceMetrics
from myservices.outbound import Outbound
from myservices.ports import ListenOptions, listen_endpoint
from myservices.startup import StartupError
from myservices.workers.sockets import Inherited, adopt_datagram, adopt_stream


_log = Logger()


class ListenError(StartupError):
    """A service could not bind its endpoint; startup is aborted."""


def format_address(address: IAddress) -> str:
    """A bound address as a person writes it: ``127.0.0.1:1234``, ``[::1]:1234``, ``/run/x.sock``."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = getattr(address, "name", None)
    if name is not None:
        return name.decode() if isinstance(name, bytes) else str(name)
    return str(address)


def resume_reading_to_close(transport: Any) -> None:
    """Read on while a close is under way: TLS closes once the peer answers our close_notify, which must be
    read even if the protocol had stopped reading (TCP stops reading at loseConnection anyway). Protocols
    ignore their input once C{closing_gracefully}."""
    if not transport.disconnecting:
        transport.resumeProducing()


class TrackedProtocol(Protocol):
    """Registers itself with its L{ConnectionTrackingFactory} for limits, metrics and shutdown.

    A mixin: put it first in the bases; it passes C{connectionMade} and
    C{connectionLost} on to the next class. Protocols close gracefully only
    through L{close_gracefully}, which bounds the close.
    """

    factory: ConnectionTrackingFactory
    # a stream transport (TCP or TLS): ITCPTransport, IPushProducer and IConsumer at once, which
    # twisted's annotation (Optional[ITransport]) does not say; set before connectionMade
    transport: Any
    closing_gracefully = False  # close_gracefully was called: the output is flushing, then the close
    outbound: Outbound | None = None  # the bounded output of a protocol that has one, registered as producer
    _close_timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.factory.connection_opened(self)
        super().connectionMade()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        self._close_timer = None
        self.factory.connection_closed(self)
        super().connectionLost(reason)

    def stop_timers(self) -> None:
        """Stop the protocol's idle (and similar) timers: once closing, the close is timed here."""

    def close_gracefully(self) -> None:
        """Close once the output written so far is sent; abort if the peer has not read it within close_timeout.

        A peer that never reads keeps the kernel's send buffer full, so
        C{loseConnection} alone would never complete and the connection would
        hold its C{max_connections} slot until the daemon stops.
        """
        if self.closing_gracefully or not self.transport.connected:
            return
        self.closing_gracefully = True
        self.stop_timers()
        # armed first: loseConnection may end the connection (and cancel it) at once
        self._close_timer = self.factory.clock.callLater(self.factory.close_timeout, self._close_timed_out)
        self.lose_connection()

    def lose_connection(self) -> None:
        """The close itself, once bounded by L{close_gracefully}; a protocol with a close of its own overrides it."""
        if self.outbound is not None:
            self.outbound.release()  # a paused one lets go after its last drain
        resume_reading_to_close(self.transport)
        self.transport.loseConnection()

    def _close_timed_out(self) -> None:
        self._close_timer = None
        factory = self.factory
        factory.metrics.closed("close_timeout")
        _log.info(
            "{service}: aborting {peer}: its output was not read within close_timeout={timeout}s",
            service=factory.service_name, peer=str(self.transport.getPeer()), timeout=factory.close_timeout,
        )
        self.transport.abortConnection()

    def shutting_down(self) -> None:
        """The server is stopping: say goodbye if the protocol can, then close.

        Overrides may finish work in flight first; connections still open
        after the shutdown timeout are aborted.
        """
        self.close_gracefully()


class _Refusal(Protocol):
    """Sent to a connection over the limit: one short line, then close."""

    transport: Any  # as TrackedProtocol's

    def __init__(self, message: bytes) -> None:
        self.message = message

    def connectionMade(self) -> None:
        self.transport.write(self.message)
        self.transport.loseConnection()


class ConnectionTrackingFactory(Factory[Protocol]):
    """Base factory for stream services: enforces max_connections and closes everything on stop.

    Subclasses set C{protocol} to a L{TrackedProtocol} subclass and
    C{refusal_message} to what a refused client reads.
    """

    noisy = False
    refusal_message = f"{BUSY.code} {BUSY.message}\r\n".encode()
    # config keys a reload (SIGHUP) may change while running: attributes of the same name, read at
    # use or when a connection opens; any other change needs a restart
    live_settings: tuple[str, ...] = ("max_connections",)
    # seconds a graceful close may take ([daemon] close_timeout, set by the service tree)
    close_timeout = 30.0

    def __init__(self, service_name: str, max_connections: int, metrics: ServiceMetrics, clock: IReactorTime):
        self.service_name = service_name
        self.max_connections = max_connections
        self.metrics = metrics
        self.clock = clock
        self.connections: set[TrackedProtocol] = set()
        self._drained: list[Deferred[None]] = []
        self._refused_since_log = 0

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        if len(self.connections) >= self.max_connections:
            self.metrics.refused("max_connections")
            # one log line per burst, not one per refused connection
            if self._refused_since_log == 0:
                _log.warn(
                    "{service}: refusing connections over max_connections={limit}",
                    service=self.service_name,
                    limit=self.max_connections,
                )
            self._refused_since_log += 1
            return _Refusal(self.refusal_message)
        return super().buildProtocol(addr)

    def configure(self, cfg: Any) -> None:
        """Take the C{live_settings} from C{cfg}: at construction, and again on reload."""
        for key in self.live_settings:
            setattr(self, key, getattr(cfg, key))

    def reconfigure(self, cfg: Any, changed: list[str]) -> list[str]:
        """Apply the C{changed} keys of C{cfg} that are live; return those that need a restart."""
        self.configure(cfg)
        return [key for key in changed if key not in self.live_settings]

    def connection_opened(self, proto: TrackedProtocol) -> None:
        self.connections.add(proto)
        self.metrics.connections.inc()
        self.metrics.connections_open.inc()

    def connection_closed(self, proto: TrackedProtocol) -> None:
        if proto not in self.connections:
            return
        self.connections.discard(proto)
        self.metrics.connections_open.dec()
        if len(self.connections) < self.max_connections:
            self._refused_since_log = 0
        if not self.connections:
            waiters, self._drained = self._drained, []
            for d in waiters:
                d.callback(None)

    def close_connections(self, timeout: float) -> Deferred[None]:
        """Close every connection; abort those still open after C{timeout} seconds."""
        if not self.connections:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        for proto in list(self.connections):
            proto.shutting_down()
        # a peer that never reads keeps a closing connection's buffer full forever
        timer = self.clock.callLater(timeout, self._abort_all)

        def cancel_timer(result: None) -> None:
            if timer.active():
                timer.cancel()
            return result

        return d.addBoth(cancel_timer)

    def _abort_all(self) -> None:
        for proto in list(self.connections):
            self.metrics.closed("shutdown_timeout")
            proto.transport.abortConnection()


class ListenerService(Service):
    """Base of the listening services: binds in C{privilegedStartService} and keeps the port.

    Like C{strports.service}, a failed bind raises there, which aborts twistd's
    start-up (a bare C{StreamServerEndpointService} would only log it). Unlike
    it, the bound port is kept, so the actual address can be logged and read by
    readiness checks and tests.
    """

    log = Logger()

    def __init__(self, name: str, description: str) -> None:
        self.setName(name)
        self.description = description
        self.port: IListeningPort | None = None
        self._binding = False
        self._waiters: list[Deferred[IListeningPort]] = []
        self._inherited: tuple[Inherited | None] | None = None  # None: bind; else adopt it (once)

    def inherit(self, inherited: Inherited | None) -> None:
        """Listen on a socket the supervisor bound (a worker's; None: it passed none) instead of binding."""
        self._inherited = (inherited,)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._start_listening()

    def startService(self) -> None:
        super().startService()
        if not self._binding:  # started without twistd's privileged phase (embedding, tests)
            self._start_listening()

    def _start_listening(self) -> None:
        self._binding = True
        self._listen()

    def _listen(self) -> None:
        """Bind; call L{_bound} with the port, or raise what L{_failed} returns."""
        raise NotImplementedError

    def _adopt(self, adopt: Callable[[Inherited], IListeningPort]) -> None:
        """Listen on the inherited socket with C{adopt}; its descriptor is used once."""
        (inherited,), self._inherited = self._inherited or (None,), (None,)
        if inherited is None:
            raise self._failed(
                "the supervisor passed no socket for it (enabled after the daemon started?); restart the daemon"
            )
        try:
            port = adopt(inherited)
        except Exception as e:
            raise self._failed(str(e)) from e
        self._bound(port)

    def _bound(self, port: IListeningPort) -> None:
        self.port = port
        self.log.info(
            "{service} listening on {endpoint} (bound to {address})",
            service=self.name, endpoint=self.description, address=format_address(port.getHost()),
        )
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(port)

    def _failed(self, reason: str) -> ListenError:
        self.log.critical(
            "services.{service}: cannot listen on {endpoint}: {reason}",
            service=self.name, endpoint=self.description, reason=reason,
        )
        error = ListenError(f"services.{self.name}: cannot listen on {self.description}: {reason}")
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(error)
        return error

    def when_listening(self) -> Deferred[IListeningPort]:
        """Fires with the listening port once bound."""
        if self.port is not None:
            return succeed(self.port)
        d: Deferred[IListeningPort] = Deferred()
        self._waiters.append(d)
        return d

    @property
    def address(self) -> IAddress | None:
        """The bound address, or None when not listening."""
        return self.port.getHost() if self.port is not None else None

    def reconfigure(self, cfg: Any, changed: list[str]) -> list[str]:
        """Apply what of C{cfg} can change while running; return the C{changed} keys that need a restart."""
        return list(changed)

    async def _stop_listening(self) -> None:
        self._binding = False
        if self.port is not None:
            port, self.port = self.port, None
            stopped = port.stopListening()  # a Deferred, or None when it stopped at once
            if stopped is not None:
                await stopped


class StreamListenerService(ListenerService):
    """Listens on a Twisted endpoint string through our ports (L{myservices.ports}); closes its connections on stop.

    C{listen_options}: set by the tree from C{[daemon]}; unset, writes are coalesced with the default backlog.
    """

    def __init__(
        self,
        name: str,
        description: str,
        factory: ConnectionTrackingFactory,
        reactor: Any,
        shutdown_timeout: float,
    ) -> None:
        super().__init__(name, description)
        self.factory = factory
        self._reactor = reactor
        self.shutdown_timeout = shutdown_timeout
        self._listening: Deferred[None] | None = None
        self.listen_options: ListenOptions | None = None

    def reconfigure(self, cfg: Any, changed: list[str]) -> list[str]:
        return self.factory.reconfigure(cfg, [key for key in changed if key != "endpoint"]) + (
            ["endpoint"] if "endpoint" in changed else []
        )

    def _listen(self) -> None:
        options = self.listen_options or ListenOptions(WriteCoalescer(self._reactor))
        if self._inherited is not None:
            self._adopt(lambda inherited: adopt_stream(self._reactor, inherited, self.factory, options))
            return
        try:
            listening = listen_endpoint(self._reactor, self.description, self.factory, options)
        except (IndexError, KeyError):
            # only systemd: endpoints look sockets up at this point
            raise self._failed(missing_inherited_socket(self.description)) from None
        except Exception as e:
            raise self._failed(str(e)) from e
        failures: list[ListenError] = []
        self._listening = listening
        self._listening.addCallbacks(self._bound, lambda f: failures.append(self._failed(f.getErrorMessage())))
        # TCP, UNIX and SSL endpoints bind synchronously: a failure is known now
        if failures:
            raise failures[0]

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._listening is not None and self.port is None:
            self._listening.cancel()
        self._listening = None
        await self._stop_listening()
        await self.factory.close_connections(self.shutdown_timeout)


class UdpListenerService(ListenerService):
    """Listens on a UDP port (Twisted has no UDP endpoint strings)."""

    def __init__(
        self,
        name: str,
        description: str,
        port: int,
        interface: str,
        protocol: DatagramProtocol,
        max_packet_size: int,
        reactor: Any,
    ) -> None:
        super().__init__(name, description)
        self._port_number = port
        self._interface = interface
        self.protocol = protocol
        self._max_packet_size = max_packet_size
        self._reactor = reactor

    def _listen(self) -> None:
        if self._inherited is not None:
            self._adopt(lambda inherited: adopt_datagram(self._reactor, inherited, self.protocol, self._max_packet_size))
            return
        try:
            port = self._reactor.listenUDP(
                self._port_number, self.protocol, interface=self._interface, maxPacketSize=self._max_packet_size
            )
        except Exception as e:
            raise self._failed(str(e)) from e
        self._bound(port)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop_listening())
