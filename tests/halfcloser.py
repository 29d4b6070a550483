"""A client that sends, then closes its write side (what nc -q does), and reads until the server closes."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer


@implementer(IHalfCloseableProtocol)
class HalfCloser(Protocol):
    """Keeps all it reads; C{closed} fires with why the connection ended.

    That is C{ConnectionDone} when the server closed cleanly, anything else
    when it aborted. With C{read=False} it reads nothing until
    L{start_reading}.
    """

    def __init__(self, read: bool = True) -> None:
        self.read = read
        self.received = bytearray()
        self.closed: Deferred[BaseException] = Deferred()

    def connectionMade(self) -> None:
        if not self.read:
            self.transport.pauseProducing()

    def start_reading(self) -> None:
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        # the server closed; our write side is closed already, so this ends the connection
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed.callback(reason.value)  # the exception: a Failure would errback


async def half_close(testcase: TestCase, port: int, data: bytes, read: bool = True) -> HalfCloser:
    """Connect to 127.0.0.1:C{port}, send C{data}, close the write side (shutdown(SHUT_WR) once sent)."""
    client = HalfCloser(read)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)

    async def cleanup() -> None:
        if client.transport.connected:
            client.transport.abortConnection()
        await client.closed

    testcase.addCleanup(lambda: Deferred.fromCoroutine(cleanup()))
    client.transport.write(data)
    client.transport.loseWriteConnection()
    return client
