"""Write coalescing: what a connection wrote during a reactor turn leaves in one send, at the turn's end.

Twisted's C{FileDescriptor.write} buffers the data and registers the socket
for writability; the reactor sends on the next writable event and
unregisters it: two C{epoll_ctl} calls and a loop turn per reply (Twisted
issue #5303). Sending on every C{write} instead would turn a fan-out of many
writes to one socket into many sends. L{CoalescingTransport} does neither:
a C{write} buffers as Twisted's does and queues the transport with the
reactor's L{WriteCoalescer}, which sends every queued transport's buffer
once, directly, when the events of the turn have been dispatched (a
C{callLater(0)}, run before the reactor waits again). Only when the kernel
does not take everything does the transport register for writability, and
from then on Twisted's own path sends the rest.

Closing, half-closing, aborting, producers and TLS stay Twisted's code: they
register for writability themselves, and a queued transport that did so (or
is closing or aborting) is left to the reactor.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet import abstract, tcp, unix
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

_log = Logger()


def coalescing_supported(reactor: Any) -> str | None:
    """None if this Twisted has the internals L{CoalescingTransport} builds on; else what is missing.

    Written against Twisted 26.10: C{FileDescriptor}'s write buffers and the
    reactor's C{_disconnectSelectable} are private, so a release that changes
    them gets Twisted's stock transports (and a warning) rather than a
    transport that loses bytes.
    """
    probe = abstract.FileDescriptor(reactor)
    wanted: list[tuple[str, object]] = [("FileDescriptor." + name, probe) for name in ("_tempDataBuffer", "_tempDataLen", "dataBuffer", "offset")]
    wanted += [("tcp.Server.doWrite", tcp.Server), ("reactor._disconnectSelectable", reactor)]
    missing = [label for label, owner in wanted if not hasattr(owner, label.rsplit(".", 1)[1])]
    return ", ".join(missing) or None


class WriteCoalescer:
    """One per reactor: sends, once per turn, what the queued transports have buffered.

    The first transport queued in a turn schedules L{flush} with
    C{callLater(0)}, which runs after every event of the current poll has been
    dispatched. A transport that loses its connection leaves the queue at once.
    """

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor
        self._queued: dict[CoalescingTransport, None] = {}  # in order of first write
        self._call: IDelayedCall | None = None

    def add(self, transport: CoalescingTransport) -> None:
        """Send C{transport}'s buffer at the end of this turn."""
        self._queued[transport] = None
        if self._call is None:
            self._call = self._reactor.callLater(0, self.flush)

    def discard(self, transport: CoalescingTransport) -> None:
        """Forget C{transport} (its connection is lost); no timer stays behind for an empty queue."""
        self._queued.pop(transport, None)
        if not self._queued and self._call is not None:
            self._call.cancel()
            self._call = None

    @property
    def queued(self) -> int:
        """How many transports wait for the end of the turn."""
        return len(self._queued)

    def flush(self) -> None:
        """Send for every queued transport (a transport queued meanwhile waits for the next turn)."""
        self._call = None
        queued, self._queued = self._queued, {}
        for transport in queued:
            try:
                transport.send_queued()
            except Exception:
                # e.g. a protocol's connectionLost raising on a failed send: the other connections still send
                _log.failure("sending for {transport}", transport=transport)


class CoalescingTransport:
    """Mixin for a C{tcp.Server} (or subclass): C{write} queues a send at the end of the turn.

    Put it first in the bases; the accepting port carries the L{coalescer}.
    """

    coalescer: WriteCoalescer
    _queued = False  # waiting in the coalescer
    _send_directly = False  # send_queued may call socket.send itself (a plain socket: no sendmsg queue)
    _writing = False  # registered with the reactor for writability

    # FileDescriptor's, set by the transport this is mixed into
    connected: int
    disconnecting: int
    _writeDisconnected: bool
    _writeDisconnecting: bool
    _aborting: bool
    _tempDataBuffer: list[bytes]
    _tempDataLen: int
    dataBuffer: bytes
    offset: int
    TLS: bool
    reactor: Any
    socket: Any
    producer: Any
    producerPaused: bool
    streamingProducer: bool
    SEND_LIMIT: int

    def __init__(self, sock: Any, protocol: Any, client: Any, server: Any, sessionno: int, reactor: Any) -> None:
        super().__init__(sock, protocol, client, server, sessionno, reactor)  # type: ignore[call-arg]
        self.coalescer = server.coalescer

    def write(self, data: bytes) -> None:
        """Buffer C{data} as Twisted does; it is sent at the end of the turn."""
        if self.TLS:  # startTLS: the TLS layer writes through Twisted's bypass
            super().write(data)  # type: ignore[misc]
            return
        if not isinstance(data, bytes):
            raise TypeError("Data must be bytes")
        if not self.connected or self._writeDisconnected or not data:
            return
        self._tempDataBuffer.append(data)
        self._tempDataLen += len(data)
        self._maybePauseProducer()  # type: ignore[attr-defined]
        if not (self._queued or self._writing):
            self._queued = True
            self.coalescer.add(self)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        """Buffer every chunk of C{iovec} in order; sent at the end of the turn."""
        if self.TLS:
            super().writeSequence(iovec)  # type: ignore[misc]
            return
        chunks = list(iovec)
        for chunk in chunks:
            if not isinstance(chunk, bytes):
                raise TypeError("Data must be bytes")
        if not self.connected or not chunks or self._writeDisconnected:
            return
        self._tempDataBuffer.extend(chunks)
        self._tempDataLen += sum(map(len, chunks))
        self._maybePauseProducer()  # type: ignore[attr-defined]
        if not (self._queued or self._writing):
            self._queued = True
            self.coalescer.add(self)

    def startWriting(self) -> None:
        self._writing = True
        super().startWriting()  # type: ignore[misc]

    def stopWriting(self) -> None:
        self._writing = False
        super().stopWriting()  # type: ignore[misc]

    def send_queued(self) -> None:
        """The end of the turn: send what is buffered; register for writability if the kernel took less.

        A transport that registered meanwhile (C{loseConnection},
        C{loseWriteConnection}, a full socket), aborts or lost its connection
        is left to the reactor; one that is closing registers, so that
        Twisted's path sends the rest and then closes.
        """
        self._queued = False
        if self._writing or not self.connected or self._aborting:
            return
        if self.disconnecting or self._writeDisconnecting:
            # written after loseConnection (a producer resumed by the drain, say): Twisted's path
            # sends it, then closes
            self.startWriting()
            return
        if not self._tempDataLen and self.offset >= len(self.dataBuffer):
            return  # the reactor's writable event sent it all already: no empty send, no spurious resume
        if self._send_directly and self._send_one():
            return
        try:
            why = self.doWrite()  # type: ignore[attr-defined]
        except Exception as e:
            # as the reactor treats a doWrite that raises: logged, and the connection is lost
            _log.failure("sending for {transport}", Failure(), transport=self)
            why = e
        if why:
            disconnect = getattr(self.reactor, "_disconnectSelectable", None)
            if disconnect is not None:
                disconnect(self, why, False)  # what the reactor does with a failed doWrite
            else:
                self.startWriting()  # a reactor without it: its writable event sends and fails again
        elif self.connected and not self._writing and (self._tempDataLen or self.offset < len(self.dataBuffer)):
            self.startWriting()  # the kernel took less than everything: the rest on writable events

    def _send_one(self) -> bool:
        """The common case, one chunk and nothing older: one send, without doWrite's bookkeeping; True if done.

        Not with a producer doWrite would have to resume (a pull producer, a paused one): False, and
        doWrite sends (a send that fails is retried there, and fails as the reactor would see it).
        """
        if self.dataBuffer or len(self._tempDataBuffer) != 1 or self.producerPaused:
            return False
        if self.producer is not None and not self.streamingProducer:
            return False
        data = self._tempDataBuffer[0]
        if len(data) > self.SEND_LIMIT:
            return False
        try:
            sent = self.socket.send(data)
        except OSError:
            return False
        self._tempDataBuffer = []
        self._tempDataLen = 0
        if sent < len(data):
            self.dataBuffer, self.offset = data, sent
            if self.connected:
                self.startWriting()  # the kernel took less than everything: the rest on writable events
        return True

    def connectionLost(self, reason: Failure) -> None:
        if self._queued:
            self._queued = False
            self.coalescer.discard(self)
        super().connectionLost(reason)  # type: ignore[misc]


class CoalescingTCPServer(CoalescingTransport, tcp.Server):
    """A TCP connection accepted by a coalescing port."""

    _send_directly = True


class CoalescingUNIXServer(CoalescingTransport, unix.Server):
    """A unix socket connection accepted by a coalescing port."""
