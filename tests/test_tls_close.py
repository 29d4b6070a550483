"""A close the server starts completes at once over TLS too, not after close_timeout.

TLS sends its close_notify only once the connection has no producer
registered, and closes once the peer's answer is read: a protocol that keeps
its output producer registered, or stops reading, would hold every closed
connection (and its max_connections slot) until close_timeout aborts it. Here
close_timeout is far longer than the test may take, so such a close fails it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from myservices.framed.client import connect as framed_connect
from myservices.listeners import TrackedProtocol
from myservices.outbound import Outbound
from myservices.tree import ServiceTree
from tests.support import Collector, LineClient, load, port_of, start_tree
from tests.test_close_paths import all_closed, signal_first_call
from tests.test_tree import write_self_signed_certificate


class Reason(LineClient):
    """A line client that keeps why its connection ended."""

    reason: Failure | None = None

    def connectionLost(self, reason: Any = None) -> None:
        self.reason = reason
        super().connectionLost(reason)


class TlsCloseTests(TestCase):
    timeout = 15  # close_timeout is 40: a close that waits for it fails the test

    async def start(self, *services: str) -> ServiceTree:
        directory = Path(self.mktemp()).resolve()
        key, cert = write_self_signed_certificate(directory)
        self.trust_dir = directory / "trust"
        self.trust_dir.mkdir()
        shutil.copy(cert, self.trust_dir / "cert.pem")
        self.trust = Certificate.loadPEM(cert.read_bytes())
        endpoint = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        sections = "".join(f'[services.{name}]\nendpoint = "{endpoint}"\n' for name in services)
        url = f"sqlite:///{os.path.abspath(self.mktemp())}.sqlite3"
        config = (
            f'[daemon]\nclose_timeout = 40\nshutdown_timeout = 40\n[database]\nurl = "{url}"\n'
            f'[hub]\nmax_pending = "4 MiB"\n{sections}'
        )
        self.tree = await start_tree(self, load(self, config))
        return self.tree

    async def connect(self, service: str, client: Any) -> Any:
        options = optionsForClientTLS("127.0.0.1", trustRoot=self.trust)
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port_of(self.tree, service), options)
        await connectProtocol(endpoint, client)
        self.addCleanup(lambda: client.transport.abortConnection() if client.transport.connected else None)
        return client

    def assert_no_close_timeout(self, service: str) -> None:
        value = self.tree.metrics.registry.get_sample_value(
            "myservices_connections_closed_by_server_total", {"service": service, "reason": "close_timeout"}
        )
        self.assertEqual(value or 0, 0)

    async def chat_client(self, nick: str) -> Reason:
        client = await self.connect("chat", Reason())
        await client.read_until("WELCOME")
        self.assertEqual((await client.command(f"/nick {nick}"))[-1], f"OK nick {nick}")
        return client

    async def test_chat_quit(self) -> None:
        await self.start("chat")
        gone = all_closed(self, self.tree.listeners["chat"].factory)  # type: ignore[attr-defined]
        client = await self.chat_client("alice")
        client.send("/quit")
        await client.closed
        await gone
        self.assertIsInstance(client.reason.value, ConnectionDone)  # type: ignore[union-attr]  # a clean close
        self.assert_no_close_timeout("chat")

    async def test_chat_disconnect_while_the_server_holds_back_its_input(self) -> None:
        await self.start("chat")
        gone = all_closed(self, self.tree.listeners["chat"].factory)  # type: ignore[attr-defined]
        client = await self.chat_client("mallory")
        [server] = self.tree.listeners["chat"].factory.connections  # type: ignore[attr-defined]
        server.transport.pauseProducing()  # reading stopped (as when replies back up): the close must read on
        self.assertTrue(await self.tree.hub.disconnect("mallory", "spam"))  # type: ignore[union-attr]
        self.assertEqual((await client.read_until("ERR"))[-1], "ERR DISCONNECTED spam")
        await client.closed
        await gone
        self.assertEqual(client.unread, [])  # the error was the last line
        self.assert_no_close_timeout("chat")

    async def test_framed_disconnect(self) -> None:
        await self.start("framed")
        gone = all_closed(self, self.tree.listeners["framed"].factory)  # type: ignore[attr-defined]
        endpoint = f"tls:127.0.0.1:{port_of(self.tree, 'framed')}:trustRoots={self.trust_dir}"
        client = await framed_connect(reactor, endpoint)
        self.addCleanup(lambda: client.transport.abortConnection() if client.transport.connected else None)
        await client.call("hub.nick", nick="mallory")
        self.assertTrue(await self.tree.hub.disconnect("mallory", "spam"))  # type: ignore[union-attr]
        await client.closed
        await gone
        self.assertEqual(client.closing_error["code"], "DISCONNECTED")  # type: ignore[index]
        self.assert_no_close_timeout("framed")

    async def test_echo_at_shutdown(self) -> None:
        await self.start("echo")
        client = await self.connect("echo", Collector())
        client.transport.write(b"ping")
        self.assertEqual(await client.receive(4), b"ping")
        await self.tree.stopService()  # says goodbye to every connection: gracefully, not after shutdown_timeout
        await client.closed
        self.assert_no_close_timeout("echo")

    async def test_chat_quit_by_a_slow_reader_gets_everything_then_bye(self) -> None:
        await self.start("chat")
        gone = all_closed(self, self.tree.listeners["chat"].factory)  # type: ignore[attr-defined]
        client: Any = await self.chat_client("alice")
        paused = signal_first_call(self, Outbound, "pauseProducing")
        closing = signal_first_call(self, TrackedProtocol, "close_gracefully")  # where it is defined
        client.transport.pauseProducing()  # a client that does not read for a while
        client.transport.write(b"/help\n" * 400 + b"/quit\n")
        await paused
        await closing  # /quit ran while the output waits in the server's queue
        # on the drain the queue goes to the TLS transport, which holds small writes back for a turn: the
        # close_notify must not overtake them
        client.transport.resumeProducing()
        await client.closed
        await gone
        self.assertEqual(client.unread.count("END help"), 400)
        self.assertEqual(client.unread[-1], "BYE goodbye")
        self.assert_no_close_timeout("chat")

    async def test_http_rejected_request(self) -> None:
        await self.start("http")
        gone = all_closed(self, self.tree.listeners["http"].factory)  # type: ignore[attr-defined]
        client = await self.connect("http", Collector())
        client.transport.write(b"GET /api/counter HTTP/1.1\r\n\r\n")  # no Host: 400, and reading stops
        await client.closed
        await gone
        self.assertIn(b"400 Bad Request", client.data)
        self.assert_no_close_timeout("http")
