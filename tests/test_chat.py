"""The TCP line chat over loopback with real clients, on SQLite and on MariaDB."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from myservices.chat import ChatConfig, ChatFactory, ChatProtocol
from myservices.db import Txn
from myservices.errors import ERRORS, RATE_LIMITED, RequestError
from myservices.hub import HubConfig, Message, RoomInfo, Subscriber
from myservices.hub.history import save_missing_txn, write_messages_txn
from myservices.metrics import Metrics
from tests import mysql
from tests.support import chat_client, load, memory_hub, port_of, run_now, start_tree

HUB_FAST = "publish_rate = 100000.0\npublish_burst = 100000"


def chat_config(database_url: str, hub: str = HUB_FAST, chat: str = "") -> str:
    return f"""
[daemon]
shutdown_timeout = 2
[database]
url = "{database_url}"
[hub]
{hub}
[services.chat]
endpoint = "tcp:0:interface=127.0.0.1"
{chat if "max_line_length" in chat else chat + chr(10) + "max_line_length = 256"}
"""


def _gap_ids_txn(txn: Txn) -> list[int]:
    txn.execute("SELECT id FROM chat_messages WHERE room = 'gap' ORDER BY id")
    return [int(r[0]) for r in txn.fetchall()]


class ChatTestsMixin:
    """Tests that touch history run on both databases."""

    def database_url(self) -> str:
        raise NotImplementedError

    async def start(self, hub: str = HUB_FAST, chat: str = "", url: str | None = None):
        self.url = url or getattr(self, "url", None) or self.database_url()
        return await start_tree(self, load(self, chat_config(self.url, hub, chat)))

    async def test_two_users_chat_and_a_late_joiner_sees_the_history(self) -> None:
        tree = await self.start()
        port = port_of(tree, "chat")
        alice = await chat_client(self, port, "alice")
        bob = await chat_client(self, port, "bob")
        self.assertEqual(await alice.command("/join lobby"), ["JOIN lobby alice", "OK join lobby"])
        self.assertEqual(await bob.command("/join #Lobby"), ["JOIN lobby bob", "OK join lobby"])
        self.assertEqual(await alice.read_until("JOIN"), ["JOIN lobby bob"])

        alice.send("hello bob")
        self.assertEqual(await alice.read_until("MSG"), ["MSG lobby 1 alice hello bob"])
        self.assertEqual(await bob.read_until("MSG"), ["MSG lobby 1 alice hello bob"])
        self.assertEqual(await bob.command("/msg lobby hi alice"), ["MSG lobby 2 bob hi alice", "OK msg lobby 2"])
        self.assertEqual(await alice.read_until("MSG"), ["MSG lobby 2 bob hi alice"])

        carol = await chat_client(self, port, "carol")
        lines = await carol.command("/join lobby")
        self.assertEqual(lines[0], "JOIN lobby carol")
        history = [line.split(" ", 4) for line in lines[1:-1]]
        self.assertEqual([(h[0], h[1], h[2]) for h in history], [("HISTORY", "lobby", "1"), ("HISTORY", "lobby", "2")])
        self.assertEqual([h[4] for h in history], ["alice hello bob", "bob hi alice"])
        self.assertRegex(history[0][3], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertEqual(lines[-1], "OK join lobby")
        self.assertEqual(await carol.command("/who"), ["WHO lobby alice", "WHO lobby bob", "WHO lobby carol", "END who lobby"])

    async def test_many_publishing_lines_in_one_write_keep_their_order_everywhere(self) -> None:
        tree = await self.start()
        port = port_of(tree, "chat")
        alice = await chat_client(self, port, "alice")
        bob = await chat_client(self, port, "bob")
        await alice.command("/join lobby")
        await bob.command("/join lobby")
        await alice.read_until("JOIN lobby bob")
        # they run at once (their commits share transactions), and are answered in order
        alice.send(b"".join(f"/msg lobby line {i}\r\n".encode() for i in range(1, 41)) + b"/history lobby 40\r\n")
        lines = await alice.read_until("END history")
        oks = [line for line in lines if line.startswith("OK msg")]
        self.assertEqual(oks, [f"OK msg lobby {i}" for i in range(1, 41)])
        self.assertLess(lines.index("OK msg lobby 40"), lines.index(lines[-41]))  # /history after every reply
        self.assertEqual([line.split(" ", 4)[4] for line in lines[-41:-1]], [f"alice line {i}" for i in range(1, 41)])
        seen = await bob.read_until(lambda line: line.startswith("MSG lobby 40 "))
        self.assertEqual(seen, [f"MSG lobby {i} alice line {i}" for i in range(1, 41)])

    async def test_history_keeps_its_last_messages_by_count_when_ids_skip(self) -> None:
        # after Redis lost its data a room's ids skip up to id_block: the messages before the gap are still the last ones
        tree = await self.start()
        db = tree.database

        def row(i: int) -> tuple[str, int, float, str, str, int]:
            return ("gap", i, float(i), "a", f"m{i}", 0)

        await db.run(write_messages_txn, [row(1), row(2), row(3)], 3)
        await db.run(write_messages_txn, [row(1001)], 3)
        self.assertEqual(await db.run(_gap_ids_txn), [2, 3, 1001])
        self.assertEqual(await db.run(save_missing_txn, [row(1002)], 3), 1)
        self.assertEqual(await db.run(_gap_ids_txn), [3, 1001, 1002])

    async def test_history_survives_a_graceful_restart(self) -> None:
        tree = await self.start()
        alice = await chat_client(self, port_of(tree, "chat"), "alice")
        await alice.command("/join lobby")
        for i in range(5):
            await alice.command(f"/msg lobby message {i}")
        # stop at once: the history writes are still queued and must be flushed on stop
        await tree.stopService()
        await alice.closed

        tree = await self.start()
        bob = await chat_client(self, port_of(tree, "chat"), "bob")
        lines = await bob.command("/join lobby")
        self.assertEqual([line.split(" ", 5)[5] for line in lines[1:-1]], [f"message {i}" for i in range(5)])
        self.assertEqual(await bob.command("/msg lobby after restart"), ["MSG lobby 6 bob after restart", "OK msg lobby 6"])

    async def test_history_command_and_topics(self) -> None:
        tree = await self.start()
        port = port_of(tree, "chat")
        writer = await chat_client(self, port, "writer")
        reader = await chat_client(self, port)
        self.assertEqual(await reader.command("/sub news"), ["OK sub news"])
        self.assertEqual(await writer.command("/pub news one"), ["OK pub news 1"])
        self.assertEqual(await reader.read_until("MSG"), ["MSG news 1 writer one"])
        await writer.command("/pub news two")
        lines = await writer.command("/history news 1")
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[0].startswith("HISTORY news 2 ") and lines[0].endswith(" writer two"), lines)
        self.assertEqual(lines[1], "END history news")
        self.assertEqual(await writer.command("/rooms"), ["ROOM news 0 1", "END rooms"])
        self.assertEqual(await reader.command("/unsub news"), ["MSG news 2 writer two", "OK unsub news"])
        self.assertEqual(await writer.command("/rooms"), ["END rooms"])


class ChatUnitTests(TestCase):
    """The protocol on a StringTransport with a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics()
        self.hub = memory_hub(HubConfig(), self.clock, metrics=self.metrics)
        cfg = ChatConfig(endpoint="tcp:0", idle_timeout=30, max_line_length=64)
        self.factory = ChatFactory("chat", cfg, self.hub, self.metrics.for_service("chat"), self.clock)

    def connect(self) -> tuple[ChatProtocol, StringTransport]:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def test_idle_connection_is_told_and_closed(self) -> None:
        proto, transport = self.connect()
        self.clock.advance(29)
        proto.dataReceived(b"/who lobby\n")  # input resets the timer
        self.clock.advance(29)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.value().endswith(b"BYE idle timeout\r\n"))
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.assertEqual(self.hub.sessions, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_after_a_disconnect_its_error_is_the_last_line_and_no_line_runs(self) -> None:
        proto, transport = self.connect()
        proto.dataReceived(b"/nick spammer\n/join lobby\n")
        seen: list[Message] = []
        watcher = run_now(self.hub.open_session(Subscriber(seen.append, lambda error: None)))
        run_now(self.hub.join(watcher, "lobby"))
        transport.clear()
        self.assertTrue(run_now(self.hub.disconnect("spammer", "bye")))
        # TLS goes on delivering what the peer sends until it answers close_notify: none of it runs
        proto.dataReceived(b"still here\n/pub lobby me too\n/join other\n")
        lines = transport.value().decode().splitlines()
        self.assertEqual(lines[-1], "ERR DISCONNECTED bye")
        self.assertEqual(lines[:-1], ["PART lobby spammer"])  # its own leaving may come first, nothing after
        self.assertTrue(transport.disconnecting)
        self.assertEqual([e for e in seen if isinstance(e, Message)], [])
        self.assertEqual(run_now(self.hub.rooms()), [RoomInfo("lobby", 1, 0, 0)])
        proto.connectionLost(None)

    def test_pipelined_commands_in_one_read_are_answered_in_order(self) -> None:
        proto, transport = self.connect()
        transport.clear()
        proto.dataReceived(b"/nick ann\n/join a\nhi\n/part\n/rooms\n")
        self.assertEqual(
            transport.value().decode().splitlines(),
            ["NICK guest1 ann", "OK nick ann", "JOIN a ann", "OK join a", "MSG a 1 ann hi", "PART a ann",
             "OK part a", "END rooms"],
        )
        proto.connectionLost(None)


class PipelineHarness(TestCase):
    """A chat connection on a StringTransport whose hub publishes only when the test says so."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.metrics = Metrics()
        self.hub = memory_hub(HubConfig(), self.clock, metrics=self.metrics)
        cfg = ChatConfig(endpoint="tcp:0", max_in_flight=3)
        self.factory = ChatFactory("chat", cfg, self.hub, self.metrics.for_service("chat"), self.clock)
        self.proto = self.factory.buildProtocol(None)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)
        self.proto.dataReceived(b"/join a\n")
        self.transport.clear()
        self.publishing: list[tuple[Deferred[Message], str]] = []
        self.hub.publish = self.publish  # type: ignore[method-assign]

    def tearDown(self) -> None:
        self.proto.connectionLost(None)

    def publish(self, session: object, room: str, text: str, as_member: bool = True) -> Deferred[Message]:
        if text == "bad":
            raise RequestError(RATE_LIMITED, "slow down")
        d: Deferred[Message] = Deferred()
        self.publishing.append((d, text))
        return d

    def stored(self, i: int, id: int) -> None:
        d, text = self.publishing[i]
        d.callback(Message(room="a", id=id, ts=0.0, nick="guest1", text=text))

    def lines(self) -> list[str]:
        return self.transport.value().decode().splitlines()


class PipelinedPublishingTests(PipelineHarness):
    """Publishing lines run at once, answered in the order they came; other commands wait for them."""

    def test_replies_keep_the_order_of_the_lines_whichever_finishes_first(self) -> None:
        self.proto.dataReceived(b"/msg a one\nbad\n/pub a two\n")
        self.assertEqual([text for _, text in self.publishing], ["one", "two"])  # both running
        self.stored(1, 2)
        self.assertEqual(self.lines(), [])  # the error and "two" wait for "one"
        self.stored(0, 1)
        self.assertEqual(self.lines(), ["OK msg a 1", "ERR RATE_LIMITED slow down", "OK pub a 2"])

    def test_another_command_waits_for_the_publishing_lines_before_it(self) -> None:
        self.proto.dataReceived(b"/msg a one\n/who a\n/msg a two\n")
        self.assertEqual([text for _, text in self.publishing], ["one"])  # /who waits, and what follows it
        self.assertTrue(self.proto.paused)
        self.stored(0, 1)
        self.assertEqual(self.lines(), ["OK msg a 1", "WHO a guest1", "END who a"])
        self.assertEqual([text for _, text in self.publishing], ["one", "two"])
        self.assertFalse(self.proto.paused)

    def test_commands_and_publishing_lines_alternating(self) -> None:
        self.proto.dataReceived(b"1\n/who a\n2\n/who a\n3\n")
        self.assertEqual([text for _, text in self.publishing], ["1"])
        self.stored(0, 1)
        # the first /who ran, then "2" started and the second /who waits for it: reading stays paused
        self.assertEqual([text for _, text in self.publishing], ["1", "2"])
        self.assertEqual(self.lines(), ["WHO a guest1", "END who a"])
        self.assertTrue(self.proto.paused)
        self.stored(1, 2)
        self.assertEqual([text for _, text in self.publishing], ["1", "2", "3"])
        self.assertEqual(self.lines(), ["WHO a guest1", "END who a"] * 2)
        self.assertFalse(self.proto.paused)

    def test_reading_stops_at_max_in_flight_and_resumes_when_one_is_answered(self) -> None:
        self.proto.dataReceived(b"1\n2\n3\n4\n")
        self.assertEqual([text for _, text in self.publishing], ["1", "2", "3"])
        self.assertTrue(self.proto.paused)
        self.stored(0, 1)
        self.assertEqual([text for _, text in self.publishing], ["1", "2", "3", "4"])
        self.assertTrue(self.proto.paused)  # three running again
        for i in (1, 2, 3):
            self.stored(i, i + 1)
        self.assertFalse(self.proto.paused)
        self.assertEqual(self.lines(), [])  # text lines are answered only when they fail

    def test_a_half_closed_client_gets_every_reply_before_the_close(self) -> None:
        self.proto.dataReceived(b"/msg a one\n/msg a two")
        self.proto.readConnectionLost()
        self.assertEqual([text for _, text in self.publishing], ["one", "two"])
        self.assertFalse(self.transport.disconnecting)
        self.stored(1, 2)
        self.stored(0, 1)
        self.assertEqual(self.lines(), ["OK msg a 1", "OK msg a 2"])
        self.assertTrue(self.transport.disconnecting)


class _TcpLikeTransport(StringTransport):
    """As tcp.Connection: resumeProducing after loseConnection does nothing (StringTransport raises)."""

    def resumeProducing(self) -> None:
        if not self.disconnecting:
            super().resumeProducing()


class PipelinedEdgeTests(PipelineHarness):
    """Half-close, line-level errors and /quit with publishing lines in flight (found in review)."""

    def texts(self) -> list[str]:
        return [text for _, text in self.publishing]

    def test_a_command_answered_at_once_after_a_resume_does_not_close_before_later_lines(self) -> None:
        self.proto.dataReceived(b"/msg a one\n/help\n/msg a two\n")
        self.proto.readConnectionLost()
        self.stored(0, 1)
        self.assertEqual(self.texts(), ["one", "two"])
        self.assertFalse(self.transport.disconnecting)

    def test_a_line_failing_at_once_after_a_resume_does_not_close_before_later_lines(self) -> None:
        self.proto.dataReceived(b"/msg a one\n/who a\nbad\n/msg a two\n")
        self.proto.readConnectionLost()
        self.stored(0, 1)
        self.assertEqual(self.texts(), ["one", "two"])

    def test_max_in_flight_one_and_an_error_at_the_head(self) -> None:
        self.factory.max_in_flight = 1
        self.proto.dataReceived(b"/msg a one\n/msg a\n/msg a two\n")
        self.proto.readConnectionLost()
        self.stored(0, 1)
        self.assertEqual(self.texts(), ["one", "two"])

    def test_a_pending_command_then_help_then_a_line_after_half_close(self) -> None:
        # printf '/nick bob\n/help\n/msg a two\n' | nc -q1 ...
        pending: Deferred[None] = Deferred()
        self.hub.set_nick = lambda session, nick: pending  # type: ignore[method-assign,assignment,return-value]
        self.proto.dataReceived(b"/nick bob\n/help\n/msg a two\n")
        self.proto.readConnectionLost()
        pending.callback(None)
        self.assertEqual(self.texts(), ["two"])

    def test_bad_encoding_waits_for_the_replies_to_earlier_lines(self) -> None:
        self.proto.dataReceived(b"/msg a one\n\xff\n")
        self.assertEqual(self.lines(), [])
        self.stored(0, 1)
        self.assertEqual(self.lines()[:2], ["OK msg a 1", "ERR BAD_ENCODING " + ERRORS["BAD_ENCODING"].message])

    def test_line_too_long_waits_for_the_replies_to_earlier_lines(self) -> None:
        self.proto.dataReceived(b"/msg a one\n" + b"x" * 5000 + b"\n")
        self.stored(0, 1)
        self.assertEqual(self.lines()[0], "OK msg a 1")
        self.assertTrue(self.lines()[1].startswith("ERR LINE_TOO_LONG "))

    def test_nothing_runs_after_quit(self) -> None:
        self.proto.connectionLost(None)
        self.transport = _TcpLikeTransport()
        self.proto = self.factory.buildProtocol(None)
        self.proto.makeConnection(self.transport)
        self.proto.dataReceived(b"/join a\n")
        self.transport.clear()
        self.proto.dataReceived(b"/msg a one\n/quit\n/msg a two\n")
        self.stored(0, 1)
        self.assertEqual(self.lines(), ["OK msg a 1", "BYE goodbye"])
        self.assertEqual(self.texts(), ["one"])


class SQLiteChatTests(ChatTestsMixin, TestCase):
    def database_url(self) -> str:
        return f"sqlite:///{Path(self.mktemp()).resolve()}/chat.sqlite3"

    async def test_every_error_code_the_line_protocol_can_produce(self) -> None:
        tree = await self.start(hub="publish_rate = 1.0\npublish_burst = 3\nmax_rooms_per_session = 2")
        port = port_of(tree, "chat")
        alice = await chat_client(self, port, "alice")
        bob = await chat_client(self, port)
        cases = [
            ("/frobnicate", "UNKNOWN_COMMAND"),
            ("/join", "BAD_ARGUMENTS"),
            ("/join a b", "BAD_ARGUMENTS"),
            ("/msg lobby", "BAD_ARGUMENTS"),
            ("/nick 9lives", "NICK_INVALID"),
            ("/nick ALICE", "NICK_TAKEN"),
            ("/join bad room!", "BAD_ARGUMENTS"),
            ("/join bad!", "ROOM_INVALID"),
            ("plain text", "NOT_IN_ROOM"),
            ("/msg lobby hi", "NOT_IN_ROOM"),
            ("/part lobby", "NOT_IN_ROOM"),
            ("/unsub lobby", "NOT_IN_ROOM"),
            ("/msg lobby \x01", "TEXT_INVALID"),
            ("/create secret", "UNAUTHENTICATED"),
            ("/close lobby", "FORBIDDEN"),
        ]
        seen = set()
        for line, code in cases:
            lines = await bob.command(line)
            self.assertEqual(lines[-1].split(" ")[:2], ["ERR", code], (line, lines))
            seen.add(code)
        # alice's: bob's burst is for the rate limit below (a direct message takes a token, like a publish)
        self.assertEqual(await alice.command("/dm nobody hi"), ['ERR NICK_OFFLINE no user "nobody" is connected'])
        seen.add("NICK_OFFLINE")
        await bob.command("/join one")
        await bob.command("/sub two")
        lines = await bob.command("/join three")
        self.assertEqual(lines[-1].split(" ")[:2], ["ERR", "TOO_MANY_ROOMS"])
        seen.add("TOO_MANY_ROOMS")
        # three in the burst, then the rate applies
        for i in range(3):
            self.assertEqual((await bob.command(f"/msg one m{i}"))[-1].split(" ")[0], "OK")
        lines = await bob.command("/msg one too fast")
        self.assertEqual(lines[-1], "ERR RATE_LIMITED at most 1 messages per second")
        seen.add("RATE_LIMITED")
        bob.send(b"caf\xe9\r\n")  # Latin-1, not UTF-8
        self.assertEqual((await bob.read_until("ERR"))[-1], "ERR BAD_ENCODING input is not valid UTF-8")
        seen.add("BAD_ENCODING")
        bob.send("x" * 300)
        self.assertEqual((await bob.read_until("ERR"))[-1].split(" ")[:2], ["ERR", "LINE_TOO_LONG"])
        seen.add("LINE_TOO_LONG")
        # the connection is still usable after every error
        lines = await alice.command("/join one")
        self.assertEqual((lines[0], len(lines), lines[-1]), ("JOIN one alice", 5, "OK join one"))  # 3 in history
        self.assertEqual((await bob.command("/who one"))[-1], "END who one")

        # the codes the chat cannot produce for a well-behaved server are covered elsewhere
        elsewhere = {
            "SLOW_CONSUMER", "BUSY", "DATABASE_UNAVAILABLE", "ENGINE_UNAVAILABLE", "SHUTTING_DOWN", "INTERNAL", "TOO_LARGE", "TIMEOUT",
            "BAD_REQUEST", "NOT_FOUND", "UNSUPPORTED_VERSION", "UNAUTHENTICATED", "LOGIN_FAILED", "USERNAME_TAKEN",
            "QUOTA_EXCEEDED", "HUB_UNAVAILABLE", "FORBIDDEN", "TOKEN_INVALID", "TOKEN_EXPIRED", "NICK_OFFLINE", "DISCONNECTED",
        }
        self.assertEqual(seen | elsewhere, set(ERRORS))

    async def test_an_over_long_line_is_discarded_and_the_connection_stays(self) -> None:
        tree = await self.start()
        alice = await chat_client(self, port_of(tree, "chat"), "alice")
        await alice.command("/join lobby")
        # an over-long line followed by a good one in the same write
        alice.send(b"y" * 1000 + b"\r\nafter the long one\r\n")
        lines = await alice.read_until("MSG")
        self.assertEqual(lines[0], "ERR LINE_TOO_LONG lines are limited to 256 bytes; the line was discarded")
        self.assertEqual(lines[-1], "MSG lobby 1 alice after the long one")
        # an over-long line arriving in pieces, then the end of it and a good line
        for _ in range(10):
            alice.send(b"z" * 100)
        alice.send(b"zz\nsecond\n")
        lines = await alice.read_until("MSG")
        self.assertEqual(lines, ["ERR LINE_TOO_LONG lines are limited to 256 bytes; the line was discarded",
                                 "MSG lobby 2 alice second"])
        self.assertEqual(await alice.command("/who"), ["WHO lobby alice", "END who lobby"])

    async def test_lf_and_crlf_both_end_lines(self) -> None:
        tree = await self.start()
        alice = await chat_client(self, port_of(tree, "chat"))
        alice.send(b"/nick alice\n/join lobby\r\n//slash text\n")
        lines = await alice.read_until("MSG")
        self.assertEqual(lines, ["NICK guest1 alice", "OK nick alice", "JOIN lobby alice", "OK join lobby",
                                 "MSG lobby 1 alice /slash text"])

    async def test_disconnect_ends_membership_and_frees_the_nick(self) -> None:
        tree = await self.start()
        port = port_of(tree, "chat")
        alice = await chat_client(self, port, "alice")
        bob = await chat_client(self, port, "bob")
        await alice.command("/join lobby")
        await bob.command("/join lobby")
        await alice.read_until("JOIN lobby bob")
        bob.transport.loseConnection()
        self.assertEqual(await alice.read_until("PART"), ["PART lobby bob"])
        self.assertEqual(await alice.command("/who"), ["WHO lobby alice", "END who lobby"])
        again = await chat_client(self, port, "bob")
        self.assertEqual(await again.command("/quit"), ["BYE goodbye"])
        await again.closed

    async def test_over_max_connections_is_refused(self) -> None:
        tree = await self.start(chat="max_connections = 1")
        port = port_of(tree, "chat")
        await chat_client(self, port, "alice")
        from tests.support import connect

        refused = await connect(self, port)
        await refused.closed
        self.assertEqual(refused.data, b"BUSY too many connections, try again later\r\n")

    async def test_stop_says_goodbye(self) -> None:
        tree = await self.start()
        alice = await chat_client(self, port_of(tree, "chat"), "alice")
        await tree.stopService()
        self.assertEqual(await alice.read_until("BYE"), ["BYE server shutting down"])
        await alice.closed

    async def test_a_member_that_stops_reading_is_dropped_while_others_get_everything(self) -> None:
        tree = await self.start(hub=HUB_FAST + '\nmax_pending = "64 KiB"', chat='max_line_length = "8 KiB"')
        port = port_of(tree, "chat")
        fast = await chat_client(self, port, "fast")
        publisher = await chat_client(self, port, "publisher")
        await fast.command("/join lobby")
        await publisher.command("/join lobby")

        slow = socket.socket()
        self.addCleanup(slow.close)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", port))
        slow.sendall(b"/nick slow\n/join lobby\n")  # and never read again
        await fast.read_until("JOIN lobby slow")

        text = "x" * 4000
        sent = 0
        slow_consumers = lambda: tree.metrics.registry.get_sample_value(  # noqa: E731
            "myservices_slow_consumers_total", {"service": "chat"}
        ) or 0
        while slow_consumers() == 0:
            self.assertLess(sent, 10_000, "the slow member was never dropped")
            lines = await publisher.command(f"/msg lobby {text}")
            self.assertEqual(lines[-1], f"OK msg lobby {sent + 1}")
            sent += 1
        self.assertNotIn("slow", await tree.hub.who("lobby"))
        # the fast member got every message, in order, while the slow one was dropped
        ids: list[int] = []
        while len(ids) < sent:
            line = (await fast.read_until("MSG"))[-1]
            ids.append(int(line.split(" ")[2]))
        self.assertEqual(ids, list(range(1, sent + 1)))
        self.assertEqual(
            await fast.command("/who"), ["PART lobby slow", "WHO lobby fast", "WHO lobby publisher", "END who lobby"]
        )


@pytest.mark.mysql
class MySQLChatTests(ChatTestsMixin, TestCase):
    def database_url(self) -> str:
        return mysql.create_database(self)
