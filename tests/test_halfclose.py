"""Clients that send, then close their write side (shutdown(SHUT_WR), what nc -q does), get every reply.

Each service runs in a real service tree from a real config; the client is a
Twisted protocol on loopback that half-closes with loseWriteConnection and
reads until the server closes.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from myservices.chat import ChatConfig, ChatFactory
from myservices.echo import EchoConfig, EchoFactory, _ReadThrottle
from myservices.framed.catalog import PUSHES
from myservices.hub import HubConfig
from myservices.metrics import Metrics
from myservices.outbound import Outbound
from myservices.tree import ServiceTree
from tests.halfcloser import HalfCloser, half_close
from tests.pbclient import pb_connect
from tests.support import FAST_ACCOUNTS, framed_client, load, memory_hub, port_of, start_tree
from tests.test_framed import frames, request
from tests.wsclient import ws_connect


def config(url: str, services: str, extra: str = "") -> str:
    sections = "".join(
        f'[services.{name}]\nendpoint = "tcp:0:interface=127.0.0.1"\n' + ("websocket = true\n" if name == "http" else "")
        for name in services.split()
    )
    return f"""
[daemon]
shutdown_timeout = 2
[database]
url = "{url}"
[hub]
publish_rate = 100000.0
publish_burst = 100000
{FAST_ACCOUNTS}
{extra}
{sections}
"""


class HalfCloseTestsMixin:
    timeout = 30

    def sqlite(self) -> str:
        return f"sqlite:///{os.path.abspath(self.mktemp())}.sqlite3"  # type: ignore[attr-defined]

    async def start(self, services: str, extra: str = "") -> ServiceTree:
        return await start_tree(self, load(self, config(self.sqlite(), services, extra)))  # type: ignore[arg-type]

    async def finished(self, tree: ServiceTree, name: str, client: HalfCloser) -> bytes:
        """Wait until the server has closed cleanly and forgotten the connection; what the client read."""
        self.assertIsInstance(await client.closed, ConnectionDone)  # type: ignore[attr-defined]
        # the server forgot the connection when it closed its socket, before the client saw the close
        self.assertEqual(tree.listeners[name].factory.connections, set())  # type: ignore[attr-defined]
        return bytes(client.received)


class EchoHalfCloseTests(HalfCloseTestsMixin, TestCase):
    async def test_small_writes_come_back_every_time(self) -> None:
        """printf hi | nc -q1: the echo arrives, then the server closes; twenty times."""
        tree = await self.start("echo")
        port = port_of(tree, "echo")
        for i in range(20):
            client = await half_close(self, port, f"hi {i}\n".encode())
            self.assertEqual(await self.finished(tree, "echo", client), f"hi {i}\n".encode())

    async def test_a_client_that_reads_late_gets_everything_through_backpressure(self) -> None:
        """16 MiB, more than the socket buffers hold: the server stops reading until the client reads.

        The server's user-space buffer fills only once its send buffer (autotuned up to tcp_wmem's
        maximum, 4 MiB on Linux by default) and the client's receive buffer are full: the server
        sends at the end of every turn, so the payload must be larger than those.
        """
        paused: Deferred[None] = Deferred()
        pause = _ReadThrottle.pauseProducing

        def pause_and_tell(throttle: _ReadThrottle) -> None:
            pause(throttle)
            if not paused.called:
                paused.callback(None)

        self.patch(_ReadThrottle, "pauseProducing", pause_and_tell)  # type: ignore[attr-defined]
        tree = await self.start("echo")
        payload = os.urandom(16 * 1024 * 1024)
        client = await half_close(self, port_of(tree, "echo"), payload, read=False)
        await paused
        client.start_reading()
        self.assertEqual(await self.finished(tree, "echo", client), payload)


class EchoHalfCloseUnitTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        cfg = EchoConfig(endpoint="tcp:0", idle_timeout=10)
        self.metrics = Metrics()
        self.factory = EchoFactory("echo", cfg, self.metrics.for_service("echo"), self.clock)
        self.factory.close_timeout = 7
        self.proto = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def test_end_of_input_closes_after_the_echo(self) -> None:
        self.proto.dataReceived(b"hi")
        self.proto.readConnectionLost()
        self.assertEqual(self.transport.value(), b"hi")
        self.assertTrue(self.transport.disconnecting)

    def test_a_client_that_does_not_read_its_replies_is_aborted_after_close_timeout(self) -> None:
        self.proto.dataReceived(b"hi")
        self.clock.advance(5)
        self.proto.readConnectionLost()
        self.proto.readConnectionLost()  # reported again when reading resumes: no second timer
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the idle timer is replaced
        aborted = []
        self.transport.abortConnection = lambda: (aborted.append(True), self.proto.connectionLost(None))
        self.clock.advance(6.9)
        self.assertEqual(aborted, [])
        self.clock.advance(0.2)
        self.assertEqual(aborted, [True])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.factory.connections, set())
        closed = self.metrics.registry.get_sample_value(
            "myservices_connections_closed_by_server_total", {"service": "echo", "reason": "close_timeout"}
        )
        self.assertEqual(closed, 1)

    def test_connection_lost_cancels_the_wait(self) -> None:
        self.proto.readConnectionLost()
        self.proto.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopping_the_server_aborts_a_closing_connection_whose_client_does_not_read(self) -> None:
        self.proto.dataReceived(b"hi")
        self.proto.readConnectionLost()
        self.transport.abortConnection = lambda: self.proto.connectionLost(None)
        d = self.factory.close_connections(timeout=2)
        self.assertNoResult(d)
        self.clock.advance(2)
        self.successResultOf(d)
        self.assertEqual(self.factory.connections, set())
        self.assertEqual(self.clock.getDelayedCalls(), [])


def lines(data: bytes) -> list[str]:
    assert data.endswith(b"\r\n"), data[-100:]
    return data.decode().split("\r\n")[:-1]


class ChatHalfCloseTests(HalfCloseTestsMixin, TestCase):
    async def test_every_line_is_answered_in_order_then_the_server_closes(self) -> None:
        """Commands that wait on the database, plain text, and a last line without its newline."""
        tree = await self.start("chat")
        script = b"/nick alice\n/join lobby\r\n/msg lobby hello\nplain text\n/history lobby\n/who"
        client = await half_close(self, port_of(tree, "chat"), script)
        got = lines(await self.finished(tree, "chat", client))
        self.assertRegex(got[0], r"^WELCOME guest\d+ ")
        guest = got[0].split()[1]
        history = [line for line in got if line.startswith("HISTORY")]
        self.assertEqual([h.split(" ", 4)[4] for h in history], ["alice hello", "alice plain text"])
        self.assertEqual(
            [line for line in got[1:] if not line.startswith("HISTORY")],
            [
                f"NICK {guest} alice", "OK nick alice",
                "JOIN lobby alice", "OK join lobby",
                "MSG lobby 1 alice hello", "OK msg lobby 1",
                "MSG lobby 2 alice plain text",
                "END history lobby",
                "WHO lobby alice", "END who lobby",
            ],
        )
        self.assertEqual(tree.hub.sessions, {})  # the nick and the membership are gone

    async def test_a_single_line_without_newline(self) -> None:
        """printf '/join x' | nc -q1"""
        tree = await self.start("chat")
        client = await half_close(self, port_of(tree, "chat"), b"/join x")
        got = lines(await self.finished(tree, "chat", client))
        self.assertEqual(got[1:], [f"JOIN x {got[0].split()[1]}", "OK join x"])

    async def test_an_over_long_last_line_is_refused_then_the_server_closes(self) -> None:
        tree = await self.start("chat")
        client = await half_close(self, port_of(tree, "chat"), b"/nick bob\n" + b"x" * 5000)
        got = lines(await self.finished(tree, "chat", client))
        self.assertEqual(got[2:], ["OK nick bob", "ERR LINE_TOO_LONG lines are limited to 4096 bytes; the line was discarded"])


def replies(data: bytes) -> dict[int, dict[str, Any]]:
    """The framed replies in C{data} by request id (pushes left out)."""
    return {body["id"]: body for _, body in frames(data) if body["id"]}


class FramedHalfCloseTests(HalfCloseTestsMixin, TestCase):
    async def start_framed(self) -> tuple[ServiceTree, int]:
        tree = await self.start("framed", "[kv]\nmax_value_size = 1048576")
        port = port_of(tree, "framed")
        setup = await framed_client(self, port)
        await setup.call("register", username="alice", password="correct horse")
        await setup.call("login", username="alice", password="correct horse")
        # a reply larger than the transport's buffer, for later
        await setup.call("kv.set", key="big", value="b" * 300_000)
        await setup.close()
        return tree, port

    async def test_every_request_is_answered_then_the_server_closes(self) -> None:
        """Pipelined requests, some waiting on the database, others on barriers, then the half-close."""
        tree, port = await self.start_framed()
        script = b"".join([
            request("login", 1, {"username": "alice", "password": "correct horse"}),  # barrier, scrypt
            request("kv.set", 2, {"key": "k", "value": [1, "two"]}),  # database
            request("register", 3, {"username": "bob", "password": "correct horse"}),  # database, scrypt
            request("counter.increment", 4),  # database
            request("hub.join", 5, {"room": "lobby"}),  # barrier, history from the database
            request("hub.publish", 6, {"room": "lobby", "text": "hi"}),
            request("kv.get", 7, {"key": "big"}),  # database, a reply over the transport's buffer
            request("ping", 8),
        ])
        client = await half_close(self, port, script)
        data = await self.finished(tree, "framed", client)
        got = replies(data)
        self.assertEqual(sorted(got), list(range(1, 9)))
        self.assertEqual([i for i, body in got.items() if not body["ok"]], [])
        self.assertEqual(got[2]["result"], {"key": "k", "created": True})
        self.assertEqual(got[3]["result"], {"username": "bob"})
        self.assertEqual(got[7]["result"]["value"], "b" * 300_000)
        pushes = [body["push"] for _, body in frames(data) if not body["id"]]
        self.assertEqual(pushes, ["nick", "presence", "message"])  # login takes the nick

    async def test_a_large_reply_written_after_the_half_close_still_closes(self) -> None:
        """The reply fills the transport's buffer after the client is done: the close must not wait forever."""
        tree, port = await self.start_framed()
        script = request("login", 1, {"username": "alice", "password": "correct horse"}) + request(
            "kv.get", 2, {"key": "big"}
        ) + request("ping", 3)
        client = await half_close(self, port, script)
        got = replies(await self.finished(tree, "framed", client))
        self.assertEqual(sorted(got), [1, 2, 3])
        self.assertEqual(got[2]["result"]["value"], "b" * 300_000)

    async def test_a_partial_frame_at_the_end_is_answered_with_a_closing_push(self) -> None:
        tree = await self.start("framed")
        port = port_of(tree, "framed")
        whole = request("echo", 2, {"data": "x"})
        for cut in (5, 12, len(whole) - 1):  # inside the header, the header alone, inside the body
            client = await half_close(self, port, request("ping", 1) + whole[:cut])
            got = frames(await self.finished(tree, "framed", client))
            self.assertEqual([(command, body["id"]) for command, body in got], [(1, 1), (PUSHES["closing"], 0)])
            self.assertEqual(got[1][1]["data"]["error"]["code"], "BAD_REQUEST")


class WebSocketHalfCloseTests(HalfCloseTestsMixin, TestCase):
    async def test_chat_requests_are_answered_then_the_server_closes(self) -> None:
        tree = await self.start("websocket")
        client = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        await client.event("welcome")
        for i, (op, args) in enumerate(
            [("nick", {"nick": "ann"}), ("join", {"room": "lobby"}), ("publish", {"room": "lobby", "text": "hi"}),
             ("history", {"room": "lobby"}), ("ping", {})],
            start=1,
        ):
            client.send_json({"type": op, "id": i, **args})
        client.transport.loseWriteConnection()
        code, _ = await client.closed
        self.assertEqual(code, 1006)  # the server closes TCP without a close frame: the client could not answer
        got = {m["id"]: m for _, _, m in client.unread if isinstance(m, dict) and m.get("type") in ("reply", "error")}
        self.assertEqual(sorted(got), [1, 2, 3, 4, 5])
        self.assertEqual({m["type"] for m in got.values()}, {"reply"})
        self.assertEqual([m["text"] for m in got[4]["result"]["messages"]], ["hi"])
        self.assertEqual(tree.listeners["websocket"].factory.connections, set())

    async def test_echo_through_the_http_mount(self) -> None:
        """/ws on the HTTP port hands the connection over: the WebSocket protocol sees the half-close too."""
        tree = await self.start("websocket http")
        for i in range(5):
            client = await ws_connect(self, port_of(tree, "http"), "/ws/echo")
            messages = [b"x", os.urandom(1000), f"last {i}".encode()]
            for payload in messages:
                client.sendMessage(payload, isBinary=True)
            client.transport.loseWriteConnection()
            await client.closed
            self.assertEqual([payload for payload, _, _ in client.unread], messages)
        self.assertEqual(tree.listeners["websocket"].factory.connections, set())


class PBHalfCloseTests(HalfCloseTestsMixin, TestCase):
    async def start_pb(self) -> tuple[ServiceTree, int]:
        tree = await self.start("pb")
        await tree.listeners["pb"].factory.services.accounts.register("alice", "correct horse")
        return tree, port_of(tree, "pb")

    async def test_calls_sent_before_the_half_close_are_answered(self) -> None:
        """Twisted's PB client: calls that wait on the database, then loseWriteConnection."""
        tree, port = await self.start_pb()
        client = await pb_connect(self, port)
        avatar = await client.login("alice", "correct horse")
        calls = [
            avatar.callRemote("kv_set", "k", {"v": [1, 2]}),  # database
            avatar.callRemote("counter_increment"),  # database
            avatar.callRemote("echo", "x" * 100_000),  # an answer over the transport's buffer
            avatar.callRemote("ping"),
        ]
        client.broker.transport.loseWriteConnection()
        kv, counter, echo, ping = [await d for d in calls]
        self.assertEqual(kv, {"key": "k", "created": True})
        self.assertEqual(counter, {"value": 1})
        self.assertEqual(echo, {"data": "x" * 100_000})
        self.assertTrue(ping["pong"])
        await client.closed
        self.assertEqual(tree.listeners["pb"].factory.connections, set())

    async def test_a_login_in_flight_at_the_half_close_is_answered(self) -> None:
        tree, port = await self.start_pb()
        client = await pb_connect(self, port)
        login = client.login("alice", "correct horse")  # scrypt in the thread pool
        client.broker.transport.loseWriteConnection()
        avatar = await login
        self.assertIsNotNone(avatar)
        await client.closed
        self.assertEqual(tree.listeners["pb"].factory.connections, set())


class OutboundLoseConnectionTests(TestCase):
    """Outbound after loseConnection: a paused streaming producer cannot hold the close up."""

    def setUp(self) -> None:
        self.transport = StringTransport()
        self.overflows: list[bool] = []
        self.out = Outbound(self.transport, 100, lambda: self.overflows.append(True))

    def test_paused_with_nothing_queued_releases_the_transport_when_it_drains(self) -> None:
        self.out.pauseProducing()  # the last write filled the transport's buffer
        self.transport.loseConnection()
        self.assertTrue(self.transport.disconnecting)
        self.out.write(b"late answer")  # still taken, and bounded, until the queue is handed over
        self.assertIs(self.transport.producer, self.out)
        self.out.resumeProducing()  # drained: Twisted resumes the producer and waits for it
        self.assertIsNone(self.transport.producer)  # unregistered, so the close can complete
        self.assertEqual(self.transport.value(), b"late answer")
        self.out.write(b"event after the last reply")
        self.assertEqual(self.transport.value(), b"late answer")

    def test_writes_right_after_lose_connection_still_go_out(self) -> None:
        self.transport.loseConnection()
        self.out.write(b"answer")
        self.assertEqual(self.transport.value(), b"answer")
        self.assertIs(self.transport.producer, self.out)

    def test_the_bound_holds_while_closing(self) -> None:
        self.out.pauseProducing()
        self.transport.loseConnection()
        self.out.write(b"x" * 101)
        self.assertEqual(self.overflows, [True])


class ChatHalfCloseUnitTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics()
        hub = memory_hub(HubConfig(), self.clock, metrics=self.metrics)
        cfg = ChatConfig(endpoint="tcp:0", idle_timeout=30)
        self.factory = ChatFactory("chat", cfg, hub, self.metrics.for_service("chat"), self.clock)
        self.factory.close_timeout = 20
        self.proto = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def test_the_close_timeout_ends_a_half_closed_connection_once(self) -> None:
        self.proto.dataReceived(b"/nick ann\n/who")
        self.clock.advance(10)
        self.proto.readConnectionLost()
        self.assertEqual(  # the last line, without its newline, is answered too
            self.transport.value().decode().splitlines()[-2:],
            ["OK nick ann", "ERR BAD_ARGUMENTS usage: /who ROOM (you are in no room)"],
        )
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the line idle timer is replaced
        aborted = []
        self.transport.abortConnection = lambda: (aborted.append(True), self.proto.connectionLost(None))
        self.clock.advance(19.9)
        self.assertEqual(aborted, [])
        self.clock.advance(0.2)
        self.assertEqual(aborted, [True])
        closed = self.metrics.registry.get_sample_value(
            "myservices_connections_closed_by_server_total", {"service": "chat", "reason": "close_timeout"}
        )
        self.assertEqual(closed, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
