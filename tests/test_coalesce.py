"""Coalesced writes (myservices.coalesce) and our ports (myservices.ports): every transport contract.

Unit tests drive a L{WriteCoalescer} on a C{Clock}; the rest run real
connections over loopback through L{listen_endpoint}, with a server protocol
the test writes through directly.
"""

from __future__ import annotations

import shutil
import socket
import struct
import tempfile
from pathlib import Path
from typing import Any, cast

from twisted.internet import reactor, tcp
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol, IPullProducer, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from myservices.coalesce import CoalescingTCPServer, WriteCoalescer, coalescing_supported
from myservices.config import ConfigError
from myservices.ports import DEFAULT_BACKLOG, ListeningReactor, ListenOptions, TCPPort, listen_endpoint
from myservices.workers.sockets import stream_plan
from tests.support import connect, load, port_of, start_tree
from tests.test_tree import write_self_signed_certificate


class _Queued:
    def __init__(self) -> None:
        self.sent = 0

    def send_queued(self) -> None:
        self.sent += 1


class WriteCoalescerUnitTests(TestCase):
    def test_one_flush_per_turn_however_many_writes(self) -> None:
        clock = Clock()
        coalescer = WriteCoalescer(clock)
        a, b = _Queued(), _Queued()
        coalescer.add(a)  # type: ignore[arg-type]
        coalescer.add(b)  # type: ignore[arg-type]
        coalescer.add(a)  # type: ignore[arg-type]
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertEqual(clock.getDelayedCalls()[0].getTime(), 0)  # callLater(0): the end of this turn
        clock.advance(0)
        self.assertEqual((a.sent, b.sent), (1, 1))
        self.assertEqual(clock.getDelayedCalls(), [])
        coalescer.add(b)  # type: ignore[arg-type]  # the next turn schedules again
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(0)
        self.assertEqual((a.sent, b.sent), (1, 2))

    def test_a_lost_transport_leaves_no_reference_and_no_timer(self) -> None:
        clock = Clock()
        coalescer = WriteCoalescer(clock)
        a = _Queued()
        coalescer.add(a)  # type: ignore[arg-type]
        coalescer.discard(a)  # type: ignore[arg-type]
        self.assertEqual(coalescer.queued, 0)
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(0)
        self.assertEqual(a.sent, 0)


@implementer(IHalfCloseableProtocol)
class Peer(Protocol):
    """Either end: keeps what it reads; C{closed} fires with why the connection ended."""

    def __init__(self, read: bool = True, half_open: bool = False) -> None:
        self.read = read
        self.half_open = half_open
        self.received = bytearray()
        self.closed: Deferred[BaseException] = Deferred()
        self.read_closed: Deferred[None] = Deferred()
        self._want: tuple[int, Deferred[bytes]] | None = None

    def connectionMade(self) -> None:
        if self.factory is not None:  # the server's: the test gets it once connected
            self.factory.accepted.put(self)
        if not self.read:
            self.transport.pauseProducing()

    def start_reading(self) -> None:
        self.transport.resumeProducing()

    def receive(self, n: int) -> Deferred[bytes]:
        """Fires once C{n} bytes in all have been read."""
        d: Deferred[bytes] = Deferred()
        self._want = (n, d)
        self._check()
        return d

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._check()

    def _check(self) -> None:
        if self._want is not None and len(self.received) >= self._want[0]:
            (_, d), self._want = self._want, None
            d.callback(bytes(self.received))

    def readConnectionLost(self) -> None:
        self.read_closed.callback(None)
        if not self.half_open:  # the peer closed: close too (half_open: keep sending)
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._want is not None:
            (_, d), self._want = self._want, None
            d.errback(reason)
        self.closed.callback(reason.value)


class _ServerFactory(Factory):
    def __init__(self) -> None:
        self.accepted: DeferredQueue[Peer] = DeferredQueue()

    def buildProtocol(self, addr: Any) -> Peer:
        peer = Peer()
        peer.factory = self
        return peer


def _payload(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


class CoalescedConnectionTests(TestCase):
    """Real connections over loopback; the server side is written to by the test."""

    timeout = 30

    async def listen(self, description: str = "tcp:0:interface=127.0.0.1", coalesce: bool = True) -> Any:
        self.coalescer = WriteCoalescer(reactor)
        self.factory = _ServerFactory()
        options = ListenOptions(self.coalescer if coalesce else None)
        port = await listen_endpoint(reactor, description, self.factory, options)
        self.addCleanup(port.stopListening)
        self.port = port
        return port

    async def connect(self, read: bool = True, rcvbuf: int = 0, half_open: bool = False) -> tuple[Peer, Peer]:
        """A client and the server's protocol for it; both aborted at cleanup if still open."""
        port = self.port if hasattr(self, "port") else await self.listen()
        client = Peer(read, half_open)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        await connectProtocol(endpoint, client)
        if rcvbuf:
            client.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        server = await self.factory.accepted.get()
        for peer in (client, server):
            self.addCleanup(self._abort, peer)
        return client, server

    async def _abort(self, peer: Peer) -> None:
        if not peer.closed.called:
            peer.transport.abortConnection()
        await peer.closed

    async def test_small_writes_wait_for_the_end_of_the_turn_without_registering_for_writability(self) -> None:
        client, server = await self.connect()
        self.assertIsInstance(server.transport, CoalescingTCPServer)
        server.transport.write(b"a")
        server.transport.writeSequence([b"b", b"c"])
        self.assertNotIn(server.transport, reactor.getWriters())  # no epoll_ctl for a reply
        self.assertEqual(self.coalescer.queued, 1)
        self.assertEqual(await client.receive(3), b"abc")
        self.assertNotIn(server.transport, reactor.getWriters())

    async def test_order_is_kept_across_many_writes_in_one_turn_and_across_turns(self) -> None:
        client, server = await self.connect()
        expected = bytearray()
        for turn in range(20):
            for i in range(200):
                chunk = f"{turn}.{i};".encode()
                expected += chunk
                if i % 2:
                    server.transport.write(chunk)
                else:
                    server.transport.writeSequence([chunk[:2], chunk[2:]])
            await deferLater(reactor, 0, lambda: None)  # the next turn
        self.assertEqual(await client.receive(len(expected)), bytes(expected))

    async def test_a_write_larger_than_the_socket_buffers_registers_for_writability_and_completes(self) -> None:
        await self.partial_send(_payload(4 * 1024 * 1024), [], 64 * 1024)  # sends of SEND_LIMIT: doWrite's

    async def test_a_single_write_the_kernel_takes_part_of_registers_for_writability_and_completes(self) -> None:
        # below SEND_LIMIT, one chunk: the direct send, whose rest goes to Twisted's path
        await self.partial_send(_payload(100 * 1024), [b"and more"], 4096)

    async def partial_send(self, payload: bytes, more: list[bytes], buffers: int) -> None:
        client, server = await self.connect(read=False, rcvbuf=buffers)
        server.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffers)
        server.transport.write(payload)
        await deferLater(reactor, 0, lambda: None)  # the end of the turn: a partial send
        self.assertIn(server.transport, reactor.getWriters())
        self.assertEqual(self.coalescer.queued, 0)
        for chunk in more:
            server.transport.write(chunk)  # registered: no queueing, Twisted's path sends it after the rest
            self.assertEqual(self.coalescer.queued, 0)
        payload += b"".join(more)
        client.start_reading()
        self.assertEqual(await client.receive(len(payload)), payload)
        await deferLater(reactor, 0, lambda: None)
        self.assertNotIn(server.transport, reactor.getWriters())  # drained: unregistered again

    async def test_a_streaming_producer_is_paused_when_the_buffer_is_full_and_resumed_when_drained(self) -> None:
        client, server = await self.connect(read=False, rcvbuf=64 * 1024)
        server.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        events: list[str] = []
        resumed: Deferred[None] = Deferred()

        @implementer(IPushProducer)
        class Producer:
            def pauseProducing(self) -> None:
                events.append("pause")

            def resumeProducing(self) -> None:
                events.append("resume")
                resumed.callback(None)

            def stopProducing(self) -> None:
                events.append("stop")

        server.transport.registerProducer(Producer(), True)
        chunk = _payload(16 * 1024)
        total = 0
        while "pause" not in events:
            server.transport.write(chunk)
            total += len(chunk)
            await deferLater(reactor, 0, lambda: None)
        self.assertEqual(events, ["pause"])
        client.start_reading()
        await resumed
        self.assertEqual(events, ["pause", "resume"])
        self.assertEqual(await client.receive(total), chunk * (total // len(chunk)))
        server.transport.unregisterProducer()

    async def test_a_pull_producer_is_asked_for_more_after_each_send(self) -> None:
        client, server = await self.connect()
        chunks = [_payload(1000 + i) for i in range(50)]
        remaining = list(chunks)
        transport = server.transport

        @implementer(IPullProducer)
        class Producer:
            def resumeProducing(self) -> None:
                if remaining:
                    transport.write(remaining.pop(0))
                else:
                    transport.unregisterProducer()

            def stopProducing(self) -> None:
                pass

        transport.registerProducer(Producer(), False)
        expected = b"".join(chunks)
        self.assertEqual(await client.receive(len(expected)), expected)

    async def test_lose_connection_sends_everything_pending_then_closes(self) -> None:
        client, server = await self.connect(read=False, rcvbuf=64 * 1024)
        payload = _payload(2 * 1024 * 1024)
        server.transport.write(b"first")
        server.transport.write(payload)
        server.transport.loseConnection()
        client.start_reading()
        self.assertIsInstance(await client.closed, ConnectionDone)
        self.assertEqual(bytes(client.received), b"first" + payload)
        self.assertIsInstance(await server.closed, ConnectionDone)
        self.assertEqual(self.coalescer.queued, 0)

    async def test_lose_connection_waits_for_what_a_producer_writes_when_the_drain_resumes_it(self) -> None:
        """The drain after loseConnection resumes a paused producer, which writes its last data then.

        That write comes after the reactor unregistered the connection for writability, and leaves the
        producer registered and paused: the coalescer must hand it back to Twisted's path, which sends
        it, resumes the producer once more and closes.
        """
        client, server = await self.connect(read=False, rcvbuf=64 * 1024)
        server.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        transport = server.transport
        paused: Deferred[None] = Deferred()

        @implementer(IPushProducer)
        class LastWords:
            def pauseProducing(self) -> None:
                if not paused.called:
                    paused.callback(None)

            written = False

            def resumeProducing(self) -> None:
                if self.written:  # the drain after the last words: done
                    transport.unregisterProducer()
                    return
                self.written = True
                transport.write(b"last words")  # pauses it again: the buffer is over bufferSize

            def stopProducing(self) -> None:
                pass

        transport.registerProducer(LastWords(), True)
        chunk = _payload(64 * 1024)
        sent = 0
        while not paused.called:
            transport.write(chunk)
            sent += len(chunk)
            await deferLater(reactor, 0, lambda: None)
        transport.loseConnection()
        transport.bufferSize = 1  # each write pauses the producer: it stays registered, paused
        client.start_reading()
        self.assertIsInstance(await client.closed.addTimeout(10, reactor), ConnectionDone)
        self.assertEqual(bytes(client.received), chunk * (sent // len(chunk)) + b"last words")

    async def test_abort_connection_drops_pending_data_and_closes_at_once(self) -> None:
        client, server = await self.connect()
        server.transport.write(_payload(1024 * 1024))
        server.transport.abortConnection()
        self.assertIsInstance(await server.closed, ConnectionAborted)
        self.assertEqual(self.coalescer.queued, 0)  # the lost transport left the queue
        self.assertIsInstance(await client.closed, ConnectionLost)  # a reset, not a clean close
        self.assertEqual(bytes(client.received), b"")

    async def test_half_close_sends_pending_data_then_shuts_down_the_write_side_only(self) -> None:
        client, server = await self.connect(half_open=True)
        server.transport.write(b"last words")
        server.transport.loseWriteConnection()
        await client.read_closed
        self.assertEqual(bytes(client.received), b"last words")
        client.transport.write(b"still heard")  # the other direction stays open
        self.assertEqual(await server.receive(11), b"still heard")
        client.transport.loseConnection()
        await server.closed

    async def test_a_peer_reset_while_queued_loses_the_connection(self) -> None:
        port = await self.listen()
        raw = socket.create_connection(("127.0.0.1", port.getHost().port))  # outside the reactor
        server = await self.factory.accepted.get()
        self.addCleanup(self._abort, server)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()  # an RST
        for _ in range(50):  # the first send after the reset fails (or the reactor sees it first)
            server.transport.write(b"x" * 1000)
            await deferLater(reactor, 0, lambda: None)
            if server.closed.called:
                break
        self.assertIsInstance(await server.closed, ConnectionLost)
        self.assertEqual(self.coalescer.queued, 0)

    async def test_tls_on_top_round_trips_a_large_payload(self) -> None:
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        key, cert = write_self_signed_certificate(Path(self.mktemp()).resolve())
        port = await self.listen(f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
        self.assertIsInstance(port, TCPPort)
        options = optionsForClientTLS("127.0.0.1", trustRoot=Certificate.loadPEM(cert.read_bytes()))
        client = Peer()
        await connectProtocol(SSL4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, options), client)
        server = await self.factory.accepted.get()
        payload = _payload(3 * 1024 * 1024)
        client.transport.write(payload)
        self.assertEqual(await server.receive(len(payload)), payload)
        server.transport.write(payload)
        server.transport.write(b"end")
        self.assertEqual(await client.receive(len(payload) + 3), payload + b"end")
        server.transport.loseConnection()
        self.assertIsInstance(await client.closed, ConnectionDone)
        await server.closed

    async def test_switched_off_the_transports_are_twisteds(self) -> None:
        await self.listen(coalesce=False)
        client, server = await self.connect()
        self.assertIs(type(server.transport), tcp.Server)
        server.transport.write(b"stock")
        self.assertIn(server.transport, reactor.getWriters())  # Twisted's way: a writable event sends
        self.assertEqual(await client.receive(5), b"stock")


class AdoptedSocketTests(TestCase):
    """A listening socket bound elsewhere (systemd:, a worker's inherited socket) is adopted by our ports."""

    async def test_an_adopted_tcp_socket_coalesces_too(self) -> None:
        sock = socket.socket()
        self.addCleanup(sock.close)  # the port holds its own copy
        sock.bind(("127.0.0.1", 0))
        sock.listen(5)
        sock.setblocking(False)
        coalescer = WriteCoalescer(reactor)
        factory = _ServerFactory()
        listener = ListeningReactor(reactor, "systemd:domain=INET:index=0", ListenOptions(coalescer))
        port = listener.adoptStreamPort(sock.fileno(), socket.AF_INET, factory)
        self.addCleanup(port.stopListening)
        self.assertIsInstance(port, TCPPort)
        client = Peer()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", sock.getsockname()[1]), client)
        server = await factory.accepted.get()
        self.assertIsInstance(server.transport, CoalescingTCPServer)
        server.transport.write(b"adopted")
        self.assertEqual(coalescer.queued, 1)
        self.assertEqual(await client.receive(7), b"adopted")
        client.transport.loseConnection()
        await server.closed


class BacklogTests(TestCase):
    async def listen(self, description: str) -> Any:
        port = await listen_endpoint(reactor, description, Factory.forProtocol(Protocol), ListenOptions(None, 777))
        self.addCleanup(port.stopListening)
        return port

    async def test_the_default_backlog_applies_when_the_endpoint_names_none(self) -> None:
        port = await self.listen("tcp:0:interface=127.0.0.1")
        self.assertEqual(port.backlog, 777)
        self.assertEqual(DEFAULT_BACKLOG, 1024)

    async def test_an_endpoint_backlog_wins(self) -> None:
        port = await self.listen("tcp:0:interface=127.0.0.1:backlog=50")
        self.assertEqual(port.backlog, 50)

    async def test_unix_endpoints_get_it_too(self) -> None:
        directory = tempfile.mkdtemp(prefix="coalesce")  # a short path: AF_UNIX allows 107 bytes
        self.addCleanup(shutil.rmtree, directory)
        port = await self.listen(f"unix:{directory}/s")
        self.assertEqual(port.backlog, 777)

    def test_workers_sockets_get_it_unless_the_endpoint_names_one(self) -> None:
        self.assertEqual(stream_plan("tcp:0", 2048).backlog, 2048)
        self.assertEqual(stream_plan("tcp:0:backlog=64", 2048).backlog, 64)
        self.assertEqual(stream_plan("tcp:0").backlog, DEFAULT_BACKLOG)


TWO_SERVICES = """
    [services.echo]
    endpoint = "tcp:0:interface=127.0.0.1"
    [services.chat]
    endpoint = "tcp:0:interface=127.0.0.1:backlog=64"
"""


class DaemonSettingsTests(TestCase):
    """[daemon] write_coalescing and listen_backlog reach every stream listener of the tree."""

    async def test_by_default_every_listener_coalesces_through_one_coalescer_with_a_backlog_of_1024(self) -> None:
        tree = await start_tree(self, load(self, TWO_SERVICES))
        echo, chat = tree.listeners["echo"].port, tree.listeners["chat"].port
        self.assertIsInstance(echo, TCPPort)
        self.assertIs(echo.coalescer, chat.coalescer)  # type: ignore[union-attr]  # one flush per turn
        self.assertEqual((echo.backlog, chat.backlog), (1024, 64))  # type: ignore[union-attr]
        client = await connect(self, port_of(tree, "echo"))
        client.transport.write(b"ping")
        self.assertEqual(await client.receive(4), b"ping")

    async def test_switched_off_and_another_backlog(self) -> None:
        config = load(self, "[daemon]\nwrite_coalescing = false\nlisten_backlog = 300\n" + TWO_SERVICES)
        tree = await start_tree(self, config)
        echo = tree.listeners["echo"].port
        self.assertIs(type(echo), tcp.Port)
        self.assertEqual(echo.backlog, 300)  # type: ignore[union-attr]
        client = await connect(self, port_of(tree, "echo"))
        client.transport.write(b"ping")
        self.assertEqual(await client.receive(4), b"ping")

    def test_a_backlog_out_of_range_is_refused(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            load(self, "[daemon]\nlisten_backlog = 0\n" + TWO_SERVICES)
        self.assertIn("daemon.listen_backlog", str(caught.exception))


class SupportTests(TestCase):
    """The coalescer builds on Twisted internals; a Twisted without them gets stock transports."""

    def test_this_twisted_is_supported(self) -> None:
        self.assertIsNone(coalescing_supported(reactor))

    def test_a_reactor_without_disconnect_selectable_is_not(self) -> None:
        self.assertEqual(coalescing_supported(object()), "reactor._disconnectSelectable")


class _Sender:
    """Stands in for a queued transport: counts its sends, and may fail as a buggy connectionLost would."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.sends = 0

    def send_queued(self) -> None:
        self.sends += 1
        if self.fail:
            raise RuntimeError("a bug in a protocol's connectionLost")


class FlushFailureTests(TestCase):
    def test_one_failing_connection_does_not_stop_the_others_sending(self) -> None:
        clock = Clock()
        coalescer = WriteCoalescer(clock)
        first, second = _Sender(fail=True), _Sender(fail=False)
        coalescer.add(cast(Any, first))
        coalescer.add(cast(Any, second))
        clock.advance(0)
        self.assertEqual((first.sends, second.sends), (1, 1))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(coalescer.queued, 0)
