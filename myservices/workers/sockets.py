"""The listening sockets of a daemon with workers: bound once by the supervisor, adopted by every worker.

TCP listeners (``tcp:``, ``tcp6:``, ``ssl:``) and UDP listeners get one socket
per worker, all bound to the same address with ``SO_REUSEPORT``: the kernel
spreads connections and datagrams over them. The supervisor binds them and
keeps its copies, so a port of 0 is chosen once for every worker, the port
stays bound while a worker restarts, and what arrives for a dead worker waits
in its socket's queue for the replacement. ``unix:`` sockets cannot be shared
that way, and ``systemd:`` sockets exist already: the supervisor holds one and
every worker accepts from it (one queue).

The endpoint strings are read by Twisted's own parsers: a stand-in reactor
records what an endpoint's C{listen} would bind (L{stream_plan}).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.abstract import isIPv6Address
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.python.lockfile import FilesystemLock

from myservices.endpoints import UdpEndpoint, split_description
from myservices.ports import DEFAULT_BACKLOG, ListenOptions, adopt_port

STREAM = "stream"
DATAGRAM = "datagram"
# a port of 0: free ports tried before giving up (another process may take one between probe and bind)
_PORT_ATTEMPTS = 20


@dataclass(frozen=True)
class Inherited:
    """One listening socket as a worker receives it: its descriptor and what it is."""

    fd: int
    family: int
    type: str  # STREAM or DATAGRAM
    endpoint: str  # the endpoint string the supervisor bound
    tls: bool = False  # ssl: the worker wraps its factory in TLS

    def to_json(self) -> dict[str, Any]:
        return {"fd": self.fd, "family": int(self.family), "type": self.type, "endpoint": self.endpoint, "tls": self.tls}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Inherited:
        return cls(
            fd=int(value["fd"]), family=int(value["family"]), type=str(value["type"]),
            endpoint=str(value["endpoint"]), tls=bool(value["tls"]),
        )


@dataclass(frozen=True)
class StreamPlan:
    """What a stream endpoint string binds: a TCP address, a unix path, or a descriptor systemd passed."""

    kind: str  # "tcp", "unix" or "adopted"
    family: int
    port: int = 0
    interface: str = ""
    backlog: int = 50
    address: str = ""
    mode: int = 0o666
    want_pid: bool = False
    fd: int = -1
    context_factory: Any = None  # ssl: the TLS context factory Twisted built from the options


class _Recorder:
    """Stands in for the reactor: records what an endpoint's listen() asks of it, binds nothing."""

    def __init__(self) -> None:
        self.plan: StreamPlan | None = None

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> None:
        family = socket.AF_INET6 if isIPv6Address(interface) else socket.AF_INET
        self.plan = StreamPlan("tcp", family, port=port, interface=interface, backlog=backlog)

    def listenSSL(self, port: int, factory: Any, contextFactory: Any, backlog: int = 50, interface: str = "") -> None:
        family = socket.AF_INET6 if isIPv6Address(interface) else socket.AF_INET
        self.plan = StreamPlan(
            "tcp", family, port=port, interface=interface, backlog=backlog, context_factory=contextFactory
        )

    def listenUNIX(self, address: str, factory: Any, backlog: int = 50, mode: int = 0o666, wantPID: int = 0) -> None:
        self.plan = StreamPlan(
            "unix", socket.AF_UNIX, address=os.fsdecode(address), backlog=backlog, mode=mode, want_pid=bool(wantPID)
        )


def stream_plan(description: str, backlog: int = DEFAULT_BACKLOG) -> StreamPlan:
    """What C{description} would bind, read by Twisted's parser; raises ValueError for what cannot be shared.

    C{backlog} is the listen backlog unless the description names one.
    """
    recorder = _Recorder()
    endpoint = serverFromString(recorder, description)
    if isinstance(endpoint, AdoptedStreamServerEndpoint):
        # systemd: the socket exists; its listen() would adopt and close it
        return StreamPlan("adopted", endpoint.addressFamily, fd=endpoint.fileno)
    failures: list[Failure] = []
    endpoint.listen(Factory.forProtocol(Protocol)).addErrback(failures.append)
    if failures or recorder.plan is None:
        reason = failures[0].getErrorMessage() if failures else "not a TCP, TLS, unix or systemd endpoint"
        raise ValueError(f"cannot be shared by workers: {reason}")
    if "backlog" not in split_description(description)[1]:
        return dataclasses.replace(recorder.plan, backlog=backlog)
    return recorder.plan


class _Group:
    """The sockets of one listener: one per worker (SO_REUSEPORT), or one that every worker shares."""

    def __init__(
        self, sockets: list[socket.socket], type: str, endpoint: str, tls: bool = False,
        cleanup: Callable[[], None] | None = None,
    ) -> None:
        self.sockets = sockets
        self.type = type
        self.endpoint = endpoint
        self.tls = tls
        self._cleanup = cleanup

    def socket_for(self, index: int) -> socket.socket:
        return self.sockets[index] if len(self.sockets) > 1 else self.sockets[0]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        if self._cleanup is not None:
            self._cleanup()
            self._cleanup = None


class SharedSockets:
    """Every listening socket of a daemon with C{count} workers, held by the supervisor."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._groups: dict[str, _Group] = {}

    def bind_stream(self, name: str, description: str, backlog: int = DEFAULT_BACKLOG) -> None:
        """Bind service C{name}'s stream endpoint (C{backlog} unless it names one); raises OSError or ValueError."""
        plan = stream_plan(description, backlog)
        if plan.kind == "tcp":
            sockets = _bind_reuseport(plan.family, socket.SOCK_STREAM, plan.interface, plan.port, self.count, plan.backlog)
            group = _Group(sockets, STREAM, description, tls=plan.context_factory is not None)
        elif plan.kind == "unix":
            sock, cleanup = _bind_unix(plan)
            group = _Group([sock], STREAM, description, cleanup=cleanup)
        else:
            sock = socket.socket(fileno=plan.fd)
            sock.setblocking(False)
            group = _Group([sock], STREAM, description)
        self._groups[name] = group

    def bind_datagram(self, name: str, endpoint: UdpEndpoint, description: str) -> None:
        """Bind service C{name}'s UDP endpoint, one socket per worker; raises OSError."""
        sockets = _bind_reuseport(endpoint.family, socket.SOCK_DGRAM, endpoint.interface, endpoint.port, self.count, 0)
        self._groups[name] = _Group(sockets, DATAGRAM, description)

    def address(self, name: str) -> str:
        """The bound address of service C{name}, as a person writes it."""
        return format_socket_address(self._groups[name].sockets[0])

    @property
    def names(self) -> list[str]:
        return list(self._groups)

    def for_worker(self, index: int, first_fd: int) -> tuple[dict[int, int], dict[str, Inherited]]:
        """Worker C{index}'s sockets: (its descriptor -> the supervisor's, and what each descriptor is)."""
        child_fds: dict[int, int] = {}
        inherited: dict[str, Inherited] = {}
        for fd, (name, group) in enumerate(self._groups.items(), start=first_fd):
            sock = group.socket_for(index)
            child_fds[fd] = sock.fileno()
            inherited[name] = Inherited(fd, sock.family, group.type, group.endpoint, group.tls)
        return child_fds, inherited

    def close(self) -> None:
        """Close the supervisor's copies (a worker's copy stays open until it stops listening)."""
        groups, self._groups = self._groups, {}
        for group in groups.values():
            group.close()


def format_socket_address(sock: socket.socket) -> str:
    address = sock.getsockname()
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return os.fsdecode(address) if address else "(unnamed)"


def _socket_address(family: int, type: int, interface: str, port: int) -> Any:
    if family == socket.AF_INET6:
        # numeric only, as Twisted does; this keeps a scope (fe80::1%eth0)
        return socket.getaddrinfo(interface or "::", port, family, type, 0, socket.AI_NUMERICHOST)[0][4]
    return (interface, port)


def _free_port(family: int, type: int, interface: str) -> int:
    # bound without SO_REUSEPORT: a port nobody holds, not one another process shares out
    with socket.socket(family, type) as probe:
        probe.bind(_socket_address(family, type, interface, 0))
        port: int = probe.getsockname()[1]
        return port


def _bind_reuseport(family: int, type: int, interface: str, port: int, count: int, backlog: int) -> list[socket.socket]:
    """C{count} non-blocking sockets bound to one address with SO_REUSEPORT (listening, for streams)."""
    for _ in range(_PORT_ATTEMPTS):
        chosen = port or _free_port(family, type, interface)
        sockets: list[socket.socket] = []
        try:
            for _ in range(count):
                sock = socket.socket(family, type)
                sockets.append(sock)
                if type == socket.SOCK_STREAM:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted's listenTCP does
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(_socket_address(family, type, interface, chosen))
                if type == socket.SOCK_STREAM:
                    sock.listen(backlog)
                sock.setblocking(False)
            return sockets
        except OSError as e:
            for sock in sockets:
                sock.close()
            if port or e.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRINUSE, f"no free port found in {_PORT_ATTEMPTS} attempts")


def _bind_unix(plan: StreamPlan) -> tuple[socket.socket, Callable[[], None]]:
    """One listening unix socket, bound as Twisted's listenUNIX binds (mode, lockfile); and how to remove it."""
    path = plan.address
    in_filesystem = not path.startswith("\0")
    lock = FilesystemLock(path + ".lock") if plan.want_pid else None
    if lock is not None:
        if not lock.lock():
            raise OSError(errno.EADDRINUSE, f"cannot acquire the lock {path}.lock")
        if not lock.clean and _is_socket(path):
            os.remove(path)  # left over by a daemon that crashed
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        if in_filesystem:
            os.chmod(path, plan.mode)
        sock.listen(plan.backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        if lock is not None:
            lock.unlock()
        raise

    def cleanup() -> None:
        if in_filesystem and _is_socket(path):
            os.unlink(path)
        if lock is not None:
            lock.unlock()

    return sock, cleanup


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def adopt_stream(reactor: Any, inherited: Inherited, factory: Factory[Any], options: ListenOptions) -> IListeningPort:
    """Listen with C{factory} on an inherited stream socket, through our ports (the descriptor is closed: the port
    holds a copy). A unix socket's path is left to the supervisor."""
    if inherited.type != STREAM:
        os.close(inherited.fd)
        raise ValueError(f"the supervisor passed a {inherited.type} socket for a stream service")
    try:
        if inherited.tls:
            factory = TLSMemoryBIOFactory(stream_plan(inherited.endpoint).context_factory, False, factory)
        return adopt_port(reactor, inherited.fd, inherited.family, factory, options, shared_path=True)
    finally:
        os.close(inherited.fd)


def adopt_datagram(reactor: Any, inherited: Inherited, protocol: DatagramProtocol, max_packet_size: int) -> IListeningPort:
    """Listen with C{protocol} on an inherited UDP socket (the descriptor is closed: the port holds a copy)."""
    try:
        if inherited.type != DATAGRAM:
            raise ValueError(f"the supervisor passed a {inherited.type} socket for a UDP service")
        return reactor.adoptDatagramPort(inherited.fd, inherited.family, protocol, max_packet_size)
    finally:
        os.close(inherited.fd)
