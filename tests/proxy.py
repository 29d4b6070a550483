"""A TCP proxy the tests can cut and restore, to take a real database away and give it back."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase


class _Side(Protocol):
    def __init__(self, proxy: CuttableProxy) -> None:
        self.proxy = proxy
        self.peer: _Side | None = None
        self.pending: list[bytes] = []
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.proxy.sides.add(self)

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.pending.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.proxy.sides.discard(self)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()
        self.closed.callback(None)


class _Front(_Side):
    def connectionMade(self) -> None:
        super().connectionMade()
        if self.proxy.down:
            self.transport.abortConnection()
            return
        back = _Side(self.proxy)
        back.peer = self
        d = connectProtocol(TCP4ClientEndpoint(reactor, self.proxy.host, self.proxy.port), back)

        def joined(_: object) -> None:
            if self.proxy.down:  # cut while connecting
                back.transport.abortConnection()
                return
            self.peer = back
            for data in self.pending:
                back.transport.write(data)
            self.pending = []

        d.addCallbacks(joined, lambda _: self.transport.abortConnection())


class CuttableProxy:
    """Listens on an ephemeral loopback port and forwards to C{host:port} until cut."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.down = False
        self.sides: set[_Side] = set()
        self.listening: Any = None

    async def start(self, testcase: TestCase) -> int:
        factory = Factory.forProtocol(lambda: _Front(self))
        self.listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        testcase.addCleanup(self.stop)
        return self.listening.getHost().port

    def cut(self) -> Deferred[list[None]]:
        """Drop every connection and refuse new ones; fires when all are gone."""
        self.down = True
        return self._abort_all()

    def restore(self) -> None:
        self.down = False

    def _abort_all(self) -> Deferred[list[None]]:
        sides = list(self.sides)
        for side in sides:
            side.transport.abortConnection()
        return gatherResults([side.closed for side in sides])

    async def stop(self) -> None:
        await self.listening.stopListening()
        await self._abort_all()
