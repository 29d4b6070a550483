"""TCP echo: unit tests with a Clock and StringTransport, integration tests over loopback."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from myservices.echo import EchoConfig, EchoFactory
from myservices.metrics import Metrics
from tests.support import connect, load, port_of, start_tree


def server_side_of(factory: EchoFactory, client: Protocol) -> Protocol:
    """The server's protocol for C{client}'s connection, with a C{closed} Deferred attached."""
    (proto,) = [p for p in factory.connections if p.transport.getPeer().port == client.transport.getHost().port]
    proto.closed = Deferred()
    lost = proto.connectionLost

    def connection_lost(reason: object = None) -> None:
        lost(reason)
        proto.closed.callback(None)

    proto.connectionLost = connection_lost
    return proto


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class EchoUnitTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics()
        cfg = EchoConfig(endpoint="tcp:0", idle_timeout=10, max_connections=5)
        self.factory = EchoFactory("echo", cfg, self.metrics.for_service("echo"), self.clock)

    def connect(self) -> tuple[object, StringTransport]:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def test_echoes_bytes_unchanged(self) -> None:
        proto, transport = self.connect()
        proto.dataReceived(b"hello\x00\xff")
        proto.dataReceived(b" world")
        self.assertEqual(transport.value(), b"hello\x00\xff world")
        self.assertEqual(sample(self.metrics, "myservices_received_bytes_total", service="echo"), 13)

    def test_idle_connection_is_aborted_and_counted(self) -> None:
        proto, transport = self.connect()
        self.clock.advance(9)
        proto.dataReceived(b"x")  # activity restarts the timer
        self.clock.advance(9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1.5)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(
            sample(self.metrics, "myservices_connections_closed_by_server_total", service="echo", reason="idle_timeout"),
            1,
        )

    def test_connection_lost_cancels_the_idle_timer(self) -> None:
        proto, transport = self.connect()
        proto.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_zero_idle_timeout_means_never(self) -> None:
        cfg = EchoConfig(endpoint="tcp:0", idle_timeout=0)
        factory = EchoFactory("echo", cfg, self.metrics.for_service("echo"), self.clock)
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        proto.connectionLost(None)

    def test_full_write_buffer_pauses_reading(self) -> None:
        proto, transport = self.connect()
        self.assertIs(transport.producer, proto.throttle)
        self.assertTrue(transport.streaming)
        proto.throttle.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        self.assertTrue(proto.throttle.paused)
        proto.throttle.resumeProducing()
        self.assertEqual(transport.producerState, "producing")

    def test_close_connections_aborts_those_that_do_not_close(self) -> None:
        proto, transport = self.connect()
        d = self.factory.close_connections(timeout=2)
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(d)
        aborted = []
        transport.abortConnection = lambda: (aborted.append(True), proto.connectionLost(None))
        self.clock.advance(2)
        self.assertEqual(aborted, [True])
        self.successResultOf(d)
        self.assertEqual(self.clock.getDelayedCalls(), [])


ECHO_CONFIG = """
    [daemon]
    shutdown_timeout = 2
    [services.echo]
    endpoint = "tcp:0:interface=127.0.0.1"
    max_connections = 2
    idle_timeout = 60
"""


class EchoIntegrationTests(TestCase):
    async def test_echo_over_loopback(self) -> None:
        tree = await start_tree(self, load(self, ECHO_CONFIG))
        client = await connect(self, port_of(tree, "echo"))
        client.transport.write(b"hi")
        self.assertEqual(await client.receive(2), b"hi")
        payload = bytes(range(256)) * 4096  # 1 MiB in several reads
        client.transport.write(payload)
        self.assertEqual((await client.receive(2 + len(payload)))[2:], payload)

    async def test_over_max_connections_is_refused_with_a_message(self) -> None:
        tree = await start_tree(self, load(self, ECHO_CONFIG))
        port = port_of(tree, "echo")
        first = await connect(self, port)
        await connect(self, port)
        first.transport.write(b"x")
        await first.receive(1)  # both accepted connections are registered by now
        third = await connect(self, port)
        await third.closed
        self.assertEqual(third.data, b"BUSY too many connections, try again later\r\n")
        refused = sample(tree.metrics, "myservices_connections_refused_total", service="echo", reason="max_connections")
        self.assertEqual(refused, 1)
        # a freed slot is usable again
        server_side_closed = server_side_of(tree.listeners["echo"].factory, first).closed
        first.transport.loseConnection()
        await server_side_closed
        fourth = await connect(self, port)
        fourth.transport.write(b"again")
        self.assertEqual(await fourth.receive(5), b"again")

    async def test_stop_closes_open_connections(self) -> None:
        tree = await start_tree(self, load(self, ECHO_CONFIG))
        client = await connect(self, port_of(tree, "echo"))
        client.transport.write(b"x")
        await client.receive(1)
        await tree.stopService()
        await client.closed
        self.assertEqual(tree.listeners["echo"].factory.connections, set())

    async def test_a_client_that_never_reads_cannot_grow_server_memory(self) -> None:
        """Send up to 200 MB without reading: the server must stop reading long before."""
        tree = await start_tree(self, load(self, ECHO_CONFIG))
        factory = tree.listeners["echo"].factory
        flooder = Flooder(limit=200 * 1024 * 1024, server=factory)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port_of(tree, "echo")), flooder)
        self.addCleanup(flooder.transport.abortConnection)
        blocked = await flooder.blocked  # the client cannot send more while the server is not reading
        self.assertTrue(blocked, "the server read all 200 MB from a peer that does not read")
        self.assertLess(flooder.sent, 20 * 1024 * 1024)
        (server,) = factory.connections
        self.assertTrue(server.throttle.paused)
        self.assertLessEqual(sample(tree.metrics, "myservices_received_bytes_total", service="echo"), flooder.sent)

        # once the client reads, everything comes back in order and reading resumes
        echoed = await flooder.read_all()
        self.assertEqual(echoed, (bytes(range(256)) * (flooder.sent // 256 + 1))[: flooder.sent])
        self.assertFalse(server.throttle.paused)
        self.assertGreaterEqual(sample(tree.metrics, "myservices_backpressure_pauses_total", service="echo"), 1)


@implementer(IPushProducer)
class Flooder(Protocol):
    """Writes a byte pattern as fast as its transport takes it and reads nothing until told to.

    Registered as its own transport's producer, it is paused whenever the
    kernel stops taking its data. C{blocked} fires True at the first such pause
    while the server has stopped reading, or False if all C{limit} bytes went.
    """

    PATTERN = bytes(range(256)) * 257

    def __init__(self, limit: int, server: EchoFactory) -> None:
        self.limit = limit
        self.server = server
        self.sent = 0
        self.paused = False
        self.stopped = False
        self.blocked: Deferred[bool] = Deferred()
        self.received = bytearray()
        self._reading: Deferred[bytes] | None = None

    def connectionMade(self) -> None:
        self.transport.pauseProducing()  # do not read
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and not self.stopped and self.sent < self.limit:
            offset = self.sent % 256  # continue the pattern where the last write ended
            chunk = self.PATTERN[offset : offset + 65536]
            self.sent += len(chunk)
            self.transport.write(chunk)
        if self.sent >= self.limit and not self.stopped:
            self.stopped = True
            self.blocked.callback(False)

    def pauseProducing(self) -> None:
        self.paused = True
        if self.stopped:
            return
        if any(p.throttle.paused for p in self.server.connections):
            self._block()
            return
        # the kernel stopped taking data before the server stopped reading: the server may stop reading while
        # this side stays paused (its buffer not drained enough to resume it), so its pause settles it too
        for p in self.server.connections:
            throttle = p.throttle
            if getattr(throttle, "watched_by_flooder", False):
                continue
            throttle.watched_by_flooder = True
            pause = throttle.pauseProducing

            def paused_too(pause: Any = pause) -> None:
                pause()
                if self.paused and not self.stopped:
                    self._block()

            throttle.pauseProducing = paused_too

    def _block(self) -> None:
        self.stopped = True
        self.blocked.callback(True)

    def stopProducing(self) -> None:
        self.stopped = True

    def read_all(self) -> Deferred[bytes]:
        self._reading = Deferred()
        self.transport.resumeProducing()
        return self._reading

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self._reading is not None and len(self.received) >= self.sent:
            d, self._reading = self._reading, None
            d.callback(bytes(self.received))
