"""Our listening ports: Twisted's TCP and unix ports with coalesced writes and a sensible backlog.

Endpoint strings keep Twisted's syntax and parsers: L{listen_endpoint} hands
C{serverFromString} a stand-in reactor (L{ListeningReactor}) whose
C{listenTCP}, C{listenSSL}, C{listenUNIX} and C{adoptStreamPort} build our
ports on the real reactor, with a TLS endpoint's factory wrapped in
C{TLSMemoryBIOFactory} exactly as C{reactor.listenSSL} wraps it. Any other
endpoint kind (a plugin's) gets the real reactor's ports, unchanged.

Twisted listens with a backlog of 50: a burst of new connections beyond
it waits for SYN retransmissions (seconds each). Ours is C{ListenOptions.backlog}
unless the endpoint string names one (``tcp:8000:backlog=4096``); the kernel
caps it at ``net.core.somaxconn``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from twisted.internet import tcp, unix
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from myservices.coalesce import CoalescingTCPServer, CoalescingUNIXServer, WriteCoalescer
from myservices.endpoints import split_description

DEFAULT_BACKLOG = 1024


@dataclass(frozen=True)
class ListenOptions:
    """How stream listeners listen: the write coalescer (None: Twisted's own transports) and the default backlog."""

    coalescer: WriteCoalescer | None
    backlog: int = DEFAULT_BACKLOG


class TCPPort(tcp.Port):
    """A TCP port whose connections coalesce their writes."""

    transport = CoalescingTCPServer
    coalescer: WriteCoalescer  # set by whoever builds the port, before it listens


class UNIXPort(unix.Port):
    """A unix socket port whose connections coalesce their writes."""

    transport = CoalescingUNIXServer
    coalescer: WriteCoalescer


class SharedUNIXPort(UNIXPort):
    """A unix port adopted from the supervisor: its path outlives one worker's stop; the supervisor removes it."""

    def connectionLost(self, reason: Failure) -> None:
        tcp.Port.connectionLost(self, reason)


class _StockSharedUNIXPort(unix.Port):
    """L{SharedUNIXPort} with Twisted's own transports."""

    def connectionLost(self, reason: Failure) -> None:
        tcp.Port.connectionLost(self, reason)


class ListeningReactor:
    """Stands in for the reactor while Twisted's endpoint for one description listens.

    It builds our ports (on C{reactor}) where the endpoint would call
    C{listenTCP}, C{listenSSL}, C{listenUNIX} or C{adoptStreamPort}, with the
    default backlog unless the description names one; everything else is the
    real reactor's.
    """

    def __init__(self, reactor: Any, description: str, options: ListenOptions) -> None:
        self._reactor = reactor
        self._options = options
        self._backlog_given = "backlog" in split_description(description)[1]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def _backlog(self, backlog: int) -> int:
        return backlog if self._backlog_given else self._options.backlog

    def listenTCP(self, port: int, factory: IProtocolFactory, backlog: int = 50, interface: str = "") -> IListeningPort:
        cls = tcp.Port if self._options.coalescer is None else TCPPort
        return _start(cls(port, factory, self._backlog(backlog), interface, self._reactor), self._options)

    def listenSSL(
        self, port: int, factory: IProtocolFactory, contextFactory: Any, backlog: int = 50, interface: str = ""
    ) -> IListeningPort:
        # as reactor.listenSSL does: TLS in memory over a TCP port
        p = self.listenTCP(port, TLSMemoryBIOFactory(contextFactory, False, factory), backlog, interface)
        p._type = "TLS"  # type: ignore[attr-defined]  # Twisted's log prefix, as listenSSL sets it
        return p

    def listenUNIX(
        self, address: bytes, factory: IProtocolFactory, backlog: int = 50, mode: int = 0o666, wantPID: int = 0
    ) -> IListeningPort:
        cls = unix.Port if self._options.coalescer is None else UNIXPort
        return _start(cls(address, factory, self._backlog(backlog), mode, self._reactor, wantPID), self._options)

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: int, factory: IProtocolFactory) -> IListeningPort:
        return adopt_port(self._reactor, fileDescriptor, addressFamily, factory, self._options)


def listen_endpoint(reactor: Any, description: str, factory: IProtocolFactory, options: ListenOptions) -> Deferred[Any]:
    """Listen on the endpoint string C{description} with our ports; fires with the port.

    Raises what C{serverFromString} raises (a systemd: endpoint whose socket
    was not passed raises KeyError or IndexError).
    """
    endpoint = serverFromString(ListeningReactor(reactor, description, options), description)
    return endpoint.listen(factory)


def adopt_port(
    reactor: Any, fd: int, family: int, factory: IProtocolFactory, options: ListenOptions, shared_path: bool = False
) -> IListeningPort:
    """Listen on a listening socket bound elsewhere (systemd, the supervisor); C{fd} stays the caller's to close.

    C{shared_path}: a unix socket whose path the port must not remove when it stops.
    """
    stock = options.coalescer is None
    cls: Any
    if family == socket.AF_UNIX:
        if shared_path:
            cls = _StockSharedUNIXPort if stock else SharedUNIXPort
        else:
            cls = unix.Port if stock else UNIXPort
        return _start(cls._fromListeningDescriptor(reactor, fd, factory), options)
    cls = tcp.Port if stock else TCPPort
    return _start(cls._fromListeningDescriptor(reactor, fd, family, factory), options)


def _start(port: Any, options: ListenOptions) -> IListeningPort:
    if options.coalescer is not None:
        port.coalescer = options.coalescer
    port.startListening()
    return port
