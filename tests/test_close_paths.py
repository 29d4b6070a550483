"""Every graceful close ends: after the last drain, and within [daemon] close_timeout when the peer never reads.

Real sockets on loopback against the real service tree. The server's send
buffer is made small, so a client that stops reading soon has the server's
Outbound paused (output waiting in Twisted's buffer and in the Outbound,
under hub.max_pending). Then the server closes gracefully (a quit, an idle
timeout), and either the client never reads (the close must be aborted after
close_timeout and counted), or it reads everything (the close must then
complete at once, with a clean end of stream).
"""

from __future__ import annotations

import ast
import os
import socket
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from myservices.echo import EchoConfig, EchoFactory
from myservices.listeners import ConnectionTrackingFactory, TrackedProtocol
from myservices.metrics import Metrics
from myservices.outbound import Outbound
from myservices.tree import ServiceTree
from tests.pbclient import pb_connect
from tests.support import FAST_ACCOUNTS, load, port_of, start_tree
from tests.test_framed import frames, request

SMALL_BUFFER = 4096
DEADLINE = 10  # seconds before a wait fails the test: far above every expected close


def config(url: str, services: str, close_timeout: float, idle_timeout: float = 0, section: str = "") -> str:
    sections = "".join(
        f'[services.{name}]\nendpoint = "tcp:0:interface=127.0.0.1"\nidle_timeout = {idle_timeout}\n{section}\n'
        for name in services.split()
    )
    return f"""
[daemon]
shutdown_timeout = 2
close_timeout = {close_timeout}
[database]
url = "{url}"
[hub]
max_pending = "4 MiB"
{FAST_ACCOUNTS}
{sections}
"""


class Stalled(Protocol):
    """A client that reads nothing until L{start_reading}; C{closed} fires with why the connection ended."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: Deferred[BaseException] = Deferred()

    def connectionMade(self) -> None:
        self.transport.pauseProducing()

    def start_reading(self) -> None:
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed.callback(reason.value)


def signal_first_call(testcase: TestCase, cls: type, name: str) -> Deferred[Any]:
    """Patch C{cls.name} to tell, once, that it was called: fires with (instance, reactor time)."""
    called: Deferred[Any] = Deferred()
    original = getattr(cls, name)

    def patched(self: Any, *args: Any) -> Any:
        result = original(self, *args)
        if not called.called:
            called.callback((self, reactor.seconds()))
        return result

    testcase.patch(cls, name, patched)
    return called


def next_connection(testcase: TestCase, factory: ConnectionTrackingFactory) -> Deferred[TrackedProtocol]:
    """Fires with the server side of the next connection, its send buffer made small."""
    opened: Deferred[TrackedProtocol] = Deferred()
    original = factory.connection_opened

    def hook(proto: Any) -> None:
        original(proto)
        proto.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        if not opened.called:
            opened.callback(proto)

    testcase.patch(factory, "connection_opened", hook)
    return opened


def read_back_in_single_writes(server: TrackedProtocol) -> None:
    """Once the close has begun with the output paused: make the drain end the way a close used to hang.

    Twisted's write threshold becomes one byte, so each write the Outbound
    hands over on a resume pauses it again: the last one leaves it paused
    with nothing queued, and the final drain resumes it with nothing to
    write. A normal send buffer again keeps the read quick.
    """
    server.transport.bufferSize = 1
    server.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1024 * 1024)


def all_closed(testcase: TestCase, factory: ConnectionTrackingFactory) -> Deferred[float]:
    """Fires with the reactor time when C{factory} has forgotten its last connection."""
    gone: Deferred[float] = Deferred()
    original = factory.connection_closed

    def hook(proto: Any) -> None:
        original(proto)
        if not factory.connections and not gone.called:
            gone.callback(reactor.seconds())

    testcase.patch(factory, "connection_closed", hook)
    return gone.addTimeout(DEADLINE, reactor)


class CloseTestsMixin:
    timeout = 30

    async def start(
        self, services: str, close_timeout: float, idle_timeout: float = 0, section: str = ""
    ) -> ServiceTree:
        url = f"sqlite:///{os.path.abspath(self.mktemp())}.sqlite3"  # type: ignore[attr-defined]
        text = config(url, services, close_timeout, idle_timeout, section)
        return await start_tree(self, load(self, text))  # type: ignore[arg-type]

    def closed_count(self, tree: ServiceTree, service: str, reason: str) -> float:
        value = tree.metrics.registry.get_sample_value(
            "myservices_connections_closed_by_server_total", {"service": service, "reason": reason}
        )
        return value or 0

    async def stalled(self, tree: ServiceTree, name: str, data: bytes) -> tuple[Stalled, TrackedProtocol]:
        """Connect a client that does not read, send C{data}, and wait until the server's output is paused."""
        paused = signal_first_call(self, Outbound, "pauseProducing")  # type: ignore[arg-type]
        server = next_connection(self, tree.listeners[name].factory)  # type: ignore[arg-type, attr-defined]
        client = Stalled()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port_of(tree, name)), client)

        async def cleanup() -> None:
            if client.transport.connected:
                client.transport.abortConnection()
            await client.closed

        self.addCleanup(lambda: Deferred.fromCoroutine(cleanup()))  # type: ignore[attr-defined]
        proto = await server
        client.transport.write(data)
        await paused.addTimeout(DEADLINE, reactor)
        return client, proto

    async def aborted_after_close_timeout(
        self, tree: ServiceTree, name: str, client: Stalled, started: Deferred[Any], close_timeout: float
    ) -> None:
        """The server began a graceful close the client never lets finish: it must abort it after close_timeout."""
        gone = all_closed(self, tree.listeners[name].factory)  # type: ignore[arg-type, attr-defined]
        _, start = await started.addTimeout(DEADLINE, reactor)
        end = await gone
        self.assertGreaterEqual(end - start, close_timeout * 0.9)  # type: ignore[attr-defined]
        self.assertEqual(self.closed_count(tree, name, "close_timeout"), 1)  # type: ignore[attr-defined]
        client.start_reading()
        self.assertNotIsInstance(await client.closed, ConnectionDone)  # type: ignore[attr-defined]

    async def closes_cleanly_once_read(
        self, tree: ServiceTree, name: str, client: Stalled, started: Deferred[Any]
    ) -> bytes:
        """The client reads everything after the graceful close began: it gets all of it, then a clean EOF."""
        server, _ = await started.addTimeout(DEADLINE, reactor)
        gone = all_closed(self, tree.listeners[name].factory)  # type: ignore[arg-type, attr-defined]
        read_back_in_single_writes(server)
        client.start_reading()
        reason = await client.closed.addTimeout(DEADLINE, reactor)
        self.assertIsInstance(reason, ConnectionDone)  # type: ignore[attr-defined]
        await gone
        self.assertEqual(self.closed_count(tree, name, "close_timeout"), 0)  # type: ignore[attr-defined]
        return bytes(client.received)


HELP_FLOOD = b"/help\n" * 400  # about 450 KB of replies


class ChatCloseTests(CloseTestsMixin, TestCase):
    async def test_quit_by_a_client_that_never_reads_is_aborted_after_close_timeout(self) -> None:
        tree = await self.start("chat", close_timeout=0.5)
        client, _ = await self.stalled(tree, "chat", HELP_FLOOD)
        started = signal_first_call(self, TrackedProtocol, "close_gracefully")
        client.transport.write(b"/quit\n")
        await self.aborted_after_close_timeout(tree, "chat", client, started, 0.5)

    async def test_idle_timeout_of_a_client_that_never_reads_is_aborted_after_close_timeout(self) -> None:
        tree = await self.start("chat", close_timeout=0.5, idle_timeout=0.5)
        started = signal_first_call(self, TrackedProtocol, "close_gracefully")
        client, _ = await self.stalled(tree, "chat", HELP_FLOOD)
        await self.aborted_after_close_timeout(tree, "chat", client, started, 0.5)
        self.assertEqual(self.closed_count(tree, "chat", "idle_timeout"), 1)

    async def test_quit_completes_once_a_paused_client_reads(self) -> None:
        """The Outbound is paused when /quit closes: after the last drain, the connection must still close."""
        tree = await self.start("chat", close_timeout=60)
        client, _ = await self.stalled(tree, "chat", HELP_FLOOD)
        started = signal_first_call(self, TrackedProtocol, "close_gracefully")
        client.transport.write(b"/quit\n")
        got = await self.closes_cleanly_once_read(tree, "chat", client, started)
        self.assertEqual(got.count(b"END help\r\n"), 400)
        self.assertTrue(got.endswith(b"BYE goodbye\r\n"), got[-100:])


# one request, so none waits unread when the server closes (closing a socket with unread input sends a reset);
# its reply alone fills Twisted's buffer, which pauses the Outbound
ECHO_FLOOD = request("echo", 1, {"data": "x" * 400_000})


class FramedCloseTests(CloseTestsMixin, TestCase):
    async def test_idle_timeout_of_a_client_that_never_reads_is_aborted_after_close_timeout(self) -> None:
        tree = await self.start("framed", close_timeout=0.5, idle_timeout=0.5)
        started = signal_first_call(self, TrackedProtocol, "close_gracefully")
        client, _ = await self.stalled(tree, "framed", ECHO_FLOOD)
        await self.aborted_after_close_timeout(tree, "framed", client, started, 0.5)
        self.assertEqual(self.closed_count(tree, "framed", "idle_timeout"), 1)

    async def test_idle_timeout_completes_once_a_paused_client_reads(self) -> None:
        tree = await self.start("framed", close_timeout=60, idle_timeout=0.5)
        started = signal_first_call(self, TrackedProtocol, "close_gracefully")
        client, _ = await self.stalled(tree, "framed", ECHO_FLOOD)
        got = frames(await self.closes_cleanly_once_read(tree, "framed", client, started))
        self.assertEqual(len(got), 2)
        self.assertEqual(got[0][1]["result"], {"data": "x" * 400_000})
        self.assertEqual(got[1][1]["data"]["error"]["code"], "TIMEOUT")  # then the closing push


class PBCloseTests(CloseTestsMixin, TestCase):
    async def start_pb(self, close_timeout: float) -> ServiceTree:
        return await self.start("pb", close_timeout, idle_timeout=0.5, section='max_message_size = "1 MiB"')

    async def stalled_pb(self, tree: ServiceTree) -> tuple[Any, Deferred[Any]]:
        """A logged-in PB client that stopped reading while a large answer was on its way."""
        factory: Any = tree.listeners["pb"].factory  # type: ignore[attr-defined]
        await factory.services.accounts.register("alice", "correct horse")
        paused = signal_first_call(self, Outbound, "pauseProducing")
        next_connection(self, factory)  # for its small send buffer
        client = await pb_connect(self, port_of(tree, "pb"))
        avatar = await client.login("alice", "correct horse")
        client.broker.transport.pauseProducing()
        # one call, so none waits unread when the server closes (that would make the close a reset)
        call = avatar.callRemote("echo", "x" * 400_000)
        await paused.addTimeout(DEADLINE, reactor)
        return client, call

    async def test_idle_timeout_of_a_client_that_never_reads_is_aborted_after_close_timeout(self) -> None:
        tree = await self.start_pb(close_timeout=0.5)
        started = signal_first_call(self, TrackedProtocol, "close_gracefully")
        client, call = await self.stalled_pb(tree)
        call.addErrback(lambda f: None)  # the abort fails it
        gone = all_closed(self, tree.listeners["pb"].factory)  # type: ignore[arg-type, attr-defined]
        _, start = await started.addTimeout(DEADLINE, reactor)
        self.assertGreaterEqual((await gone) - start, 0.45)
        self.assertEqual(self.closed_count(tree, "pb", "idle_timeout"), 1)
        self.assertEqual(self.closed_count(tree, "pb", "close_timeout"), 1)

    async def test_idle_timeout_completes_once_a_paused_client_reads(self) -> None:
        tree = await self.start_pb(close_timeout=60)
        started = signal_first_call(self, TrackedProtocol, "close_gracefully")
        client, call = await self.stalled_pb(tree)
        server, _ = await started.addTimeout(DEADLINE, reactor)
        gone = all_closed(self, tree.listeners["pb"].factory)  # type: ignore[arg-type, attr-defined]
        read_back_in_single_writes(server)
        client.broker.transport.resumeProducing()
        self.assertEqual(await call, {"data": "x" * 400_000})
        await client.closed.addTimeout(DEADLINE, reactor)
        await gone
        self.assertEqual(self.closed_count(tree, "pb", "close_timeout"), 0)


class CloseGracefullyUnitTests(TestCase):
    """TrackedProtocol.close_gracefully on a memory transport and a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics()
        cfg = EchoConfig(endpoint="tcp:0", idle_timeout=100)
        self.factory = EchoFactory("echo", cfg, self.metrics.for_service("echo"), self.clock)
        self.factory.close_timeout = 3
        self.proto = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.aborted: list[bool] = []
        self.transport.abortConnection = lambda: (self.aborted.append(True), self.proto.connectionLost(None))

    def closed(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "myservices_connections_closed_by_server_total", {"service": "echo", "reason": reason}
        )
        return value or 0

    def test_a_close_that_does_not_complete_is_aborted_after_close_timeout_and_counted(self) -> None:
        self.proto.close_gracefully()
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the idle timer is replaced by the close timer
        self.clock.advance(2.9)
        self.assertEqual(self.aborted, [])
        self.clock.advance(0.2)
        self.assertEqual(self.aborted, [True])
        self.assertEqual(self.closed("close_timeout"), 1)
        self.assertEqual(self.factory.connections, set())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_close_that_completes_cancels_the_timer(self) -> None:
        self.proto.close_gracefully()
        self.proto.close_gracefully()  # a second close path: still one timer
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.proto.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.closed("close_timeout"), 0)

    def test_shutting_down_is_bounded_too(self) -> None:
        self.proto.shutting_down()
        self.clock.advance(3)
        self.assertEqual(self.aborted, [True])

    def test_a_paused_read_throttle_lets_the_close_complete_after_the_drain(self) -> None:
        self.proto.throttle.pauseProducing()  # the echo filled the transport's buffer
        self.proto.close_gracefully()
        self.proto.throttle.resumeProducing()  # drained: Twisted resumes the producer and waits for it
        self.assertIsNone(self.transport.producer)


# where a graceful close may call loseConnection itself, and why
ALLOWED_LOSE_CONNECTION = {
    ("listeners.py", "TrackedProtocol.lose_connection"): "the one bounded close (close_gracefully arms the timer)",
    ("web/channel.py", "LimitedHTTPChannel.lose_connection"): "HTTPChannel's own close, inside close_gracefully",
    ("web/channel.py", "LimitedHTTPChannel._close_if_done"): "LimitedHTTPChannel.loseConnection is close_gracefully",
    ("web/channel.py", "LimitedHTTPChannel.shutting_down"): "LimitedHTTPChannel.loseConnection is close_gracefully",
    ("web/request.py", "LimitedRequest.processingFailed"): "LimitedHTTPChannel.loseConnection is close_gracefully",
    ("listeners.py", "_Refusal.connectionMade"): "a refused connection: one short line, never tracked",
    ("echo.py", "_ReadThrottle.stopProducing"): "Twisted calls it once the connection is gone",
    ("framed/client.py", "FramedClient.close"): "the client side",
    ("web/channel.py", "LimitedHTTPChannel.reject"): "LimitedHTTPChannel.loseConnection is close_gracefully",
    ("workers/link.py", "LinkProtocol.close"): "the supervisor's link to its own worker, a peer that reads",
    ("outbound.py", "release_if_closing"): "a transport already closing: TLS sends what it held back first",
}


class NoUnboundedCloseTests(TestCase):
    def test_protocols_close_gracefully_only_through_close_gracefully(self) -> None:
        """A direct transport.loseConnection() would escape close_timeout: a peer that never reads keeps it forever."""
        package = Path(__file__).resolve().parent.parent / "myservices"
        found = []
        for path in sorted(package.rglob("*.py")):
            tree = ast.parse(path.read_text())
            for scope, call in _calls(tree, ""):
                if isinstance(call.func, ast.Attribute) and call.func.attr == "loseConnection":
                    found.append((path.relative_to(package).as_posix(), scope))
        self.assertEqual([site for site in found if site not in ALLOWED_LOSE_CONNECTION], [])


def _calls(node: ast.AST, scope: str) -> Any:
    """(Class.function, call) for every call under C{node}."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _calls(child, f"{scope}.{child.name}" if scope else child.name)
        else:
            if isinstance(child, ast.Call):
                yield scope, child
            yield from _calls(child, scope)
