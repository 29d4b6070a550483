"""The framed JSON service over real sockets: every command on SQLite and MariaDB, malformed input, limits."""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import pytest
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from myservices.framed.catalog import COMMANDS, PUSHES
from myservices.framed.client import FramedError
from myservices.framed.wire import FrameDecoder, encode_json
from myservices.tree import ServiceTree
from tests import mysql
from tests.support import (
    FAST_ACCOUNTS,
    Collector, HttpClient, chat_client, connect, framed_client, load, port_of, start_tree,
)



def framed_config(url: str, framed: str = "", extra: str = "") -> str:
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
[services.framed]
endpoint = "tcp:0:interface=127.0.0.1"
{framed}
"""


def request(command: str | int, request_id: int, args: dict[str, Any] | None = None) -> bytes:
    command_id = COMMANDS[command] if isinstance(command, str) else command
    body: dict[str, Any] = {"id": request_id}
    if args is not None:
        body["args"] = args
    return encode_json(command_id, body)


def raw_frame(version: int, command: int, body: bytes, length: int | None = None) -> bytes:
    return struct.pack("!III", version, len(body) if length is None else length, command) + body


def frames(data: bytes) -> list[tuple[int, dict[str, Any]]]:
    """(command id, body) of every complete frame in C{data}."""
    decoder = FrameDecoder(64 * 1024 * 1024)
    decoder.feed(data)
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append((frame.command, json.loads(frame.body)))
    return out


async def read_frames(client: Collector, n: int) -> list[tuple[int, dict[str, Any]]]:
    """Wait until C{client} has read at least C{n} frames; return all it has read."""
    if not hasattr(client, "decoded"):
        client.decoder, client.fed, client.decoded = FrameDecoder(64 * 1024 * 1024), 0, []
    while True:
        client.decoder.feed(client.data[client.fed :])
        client.fed = len(client.data)
        while (frame := client.decoder.next_frame()) is not None:
            client.decoded.append((frame.command, json.loads(frame.body)))
        if len(client.decoded) >= n:
            return client.decoded
        await client.receive(len(client.data) + 1)


class FramedTestsMixin:
    """Every command against a real service tree; run on both databases."""

    def database_url(self) -> str:
        raise NotImplementedError

    async def start(self, framed: str = "", extra: str = "") -> ServiceTree:
        self.url = getattr(self, "url", None) or self.database_url()
        return await start_tree(self, load(self, framed_config(self.url, framed, extra)))  # type: ignore[arg-type]

    async def client(self, tree: ServiceTree) -> Any:
        return await framed_client(self, port_of(tree, "framed"))  # type: ignore[arg-type]

    async def test_ping_and_echo(self) -> None:
        tree = await self.start()
        c = await self.client(tree)
        pong = await c.call("ping")
        self.assertIs(pong["pong"], True)
        self.assertIsInstance(pong["time"], float)
        data = {"text": "héllo ✓", "n": [1, 2.5, None, True], "nested": {"a": {}}}
        self.assertEqual(await c.call("echo", data=data), {"data": data})
        with self.assertRaises(FramedError):
            await c.call("echo")
        registry = tree.metrics.registry
        sample = lambda command, result: registry.get_sample_value(  # noqa: E731
            "myservices_requests_total", {"service": "framed", "command": command, "result": result}
        )
        self.assertEqual((sample("ping", "ok"), sample("echo", "ok"), sample("echo", "BAD_ARGUMENTS")), (1, 1, 1))
        self.assertEqual(registry.get_sample_value("myservices_received_messages_total", {"service": "framed"}), 3)

    async def test_register_login_and_key_value(self) -> None:
        tree = await self.start()
        c = await self.client(tree)
        with self.assertRaises(FramedError) as e:
            await c.call("kv.get", key="k")
        self.assertEqual(e.exception.code, "UNAUTHENTICATED")

        self.assertEqual(await c.call("register", username="Alice", password="correct horse"), {"username": "alice"})
        with self.assertRaises(FramedError) as e:
            await c.call("register", username="alice", password="another one")
        self.assertEqual(e.exception.code, "USERNAME_TAKEN")
        for username, password in [("alice", "wrong password"), ("nobody", "correct horse")]:
            with self.assertRaises(FramedError) as e:
                await c.call("login", username=username, password=password)
            self.assertEqual((e.exception.code, e.exception.message), ("LOGIN_FAILED", "wrong username or password"))

        self.assertEqual(await c.call("login", username="ALICE", password="correct horse"),
                         {"username": "alice", "nick": "alice"})
        self.assertEqual(await c.call("whoami"), {"username": "alice", "nick": "alice", "admin": False})
        value = {"score": 10, "tags": ["a", "ü"], "ok": True}
        self.assertEqual(await c.call("kv.set", key="game/1", value=value), {"key": "game/1", "created": True})
        self.assertEqual(await c.call("kv.set", key="game/1", value=value), {"key": "game/1", "created": False})
        self.assertEqual(await c.call("kv.get", key="game/1"), {"key": "game/1", "value": value})
        # keys are exact: case matters, and LIKE wildcards are plain characters
        await c.call("kv.set", key="Game/2", value=2)
        await c.call("kv.set", key="game_%", value="x")
        await c.call("kv.set", key="gameX", value="y")
        self.assertEqual((await c.call("kv.list", prefix="game"))["keys"], ["game/1", "gameX", "game_%"])
        self.assertEqual((await c.call("kv.list", prefix="game_"))["keys"], ["game_%"])
        self.assertEqual((await c.call("kv.list", limit=2))["keys"], ["Game/2", "game/1"])
        with self.assertRaises(FramedError) as e:
            await c.call("kv.get", key="GAME/1")
        self.assertEqual(e.exception.code, "NOT_FOUND")
        self.assertEqual(await c.call("kv.delete", key="game/1"), {"key": "game/1", "deleted": True})
        self.assertEqual(await c.call("kv.delete", key="game/1"), {"key": "game/1", "deleted": False})

        # another account sees none of alice's keys
        other = await self.client(tree)
        await other.call("register", username="bob", password="bob's password")
        await other.call("login", username="bob", password="bob's password")
        self.assertEqual((await other.call("kv.list"))["keys"], [])
        with self.assertRaises(FramedError):
            await other.call("kv.get", key="Game/2")

        logged_out = await c.call("logout")
        self.assertRegex(logged_out["nick"], r"^guest\d+$")  # the username stays reserved for the account
        with self.assertRaises(FramedError) as e:
            await c.call("kv.list")
        self.assertEqual(e.exception.code, "UNAUTHENTICATED")

    async def test_passwords_are_stored_only_as_scrypt_hashes(self) -> None:
        tree = await self.start()
        c = await self.client(tree)
        await c.call("register", username="carol", password="s3cret-Passw0rd")

        def read(txn: Any) -> list[tuple[Any, ...]]:
            txn.execute("SELECT username, password_hash FROM accounts")
            return txn.fetchall()

        rows = await tree.database.run(read)
        self.assertEqual(len(rows), 1)
        username, stored = rows[0]
        self.assertEqual(username, "carol")
        self.assertNotIn("s3cret", stored)
        self.assertRegex(stored, r"^scrypt\$1024\$8\$1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$")

    async def test_raising_the_hash_cost_rehashes_at_the_next_login(self) -> None:
        tree = await self.start()
        c = await self.client(tree)
        await c.call("register", username="dave", password="password one")
        await tree.stopService()
        tree = await start_tree(self, load(self, framed_config(self.url).replace("scrypt_cost = 10", "scrypt_cost = 11")))  # type: ignore[arg-type]
        c = await self.client(tree)
        await c.call("login", username="dave", password="password one")

        def read(txn: Any) -> str:
            txn.execute("SELECT password_hash FROM accounts WHERE username = ?", ("dave",))
            return txn.fetchone()[0]

        self.assertTrue((await tree.database.run(read)).startswith("scrypt$2048$8$1$"))
        await c.call("login", username="dave", password="password one")

    async def test_key_value_limits(self) -> None:
        tree = await self.start(extra="[kv]\nmax_keys_per_account = 3\nmax_value_size = 100\nmax_key_length = 10")
        c = await self.client(tree)
        await c.call("register", username="erin", password="erin's password")
        await c.call("login", username="erin", password="erin's password")
        for key in "abc":
            await c.call("kv.set", key=key, value=key)
        with self.assertRaises(FramedError) as e:
            await c.call("kv.set", key="d", value="d")
        self.assertEqual(e.exception.code, "QUOTA_EXCEEDED")
        self.assertEqual(await c.call("kv.set", key="a", value="still fine"), {"key": "a", "created": False})
        cases = [
            ({"key": "a", "value": "x" * 100}, "TOO_LARGE"),
            ({"key": "k" * 11, "value": 1}, "BAD_ARGUMENTS"),
            ({"key": "", "value": 1}, "BAD_ARGUMENTS"),
            ({"key": "a\nb", "value": 1}, "BAD_ARGUMENTS"),
            ({"key": 5, "value": 1}, "BAD_ARGUMENTS"),
            ({"key": "a"}, "BAD_ARGUMENTS"),
            ({"key": "a", "value": 1, "extra": 2}, "BAD_ARGUMENTS"),
        ]
        for args, code in cases:
            with self.assertRaises(FramedError, msg=repr(args)) as e:
                await c.call("kv.set", args)
            self.assertEqual(e.exception.code, code, args)
        self.assertEqual(await c.call("kv.get", key="a"), {"key": "a", "value": "still fine"})

    async def test_counter_is_the_http_counter(self) -> None:
        tree = await self.start(extra='[services.http]\nendpoint = "tcp:0:interface=127.0.0.1"')
        c = await self.client(tree)
        http = HttpClient(self, port_of(tree, "http"))  # type: ignore[arg-type]
        self.assertEqual((await http.get("/")).body, b"I am request #1\n")
        self.assertEqual(await c.call("counter.increment"), {"value": 2})
        self.assertEqual((await http.get("/")).body, b"I am request #3\n")
        self.assertEqual(await c.call("counter.get"), {"value": 3})
        values = await gatherResults([c.call("counter.increment") for _ in range(50)])
        self.assertEqual(sorted(v["value"] for v in values), list(range(4, 54)))

    async def test_hub_commands_and_pushes_across_framed_and_line_chat(self) -> None:
        tree = await self.start(extra='[services.chat]\nendpoint = "tcp:0:interface=127.0.0.1"')
        alice = await self.client(tree)
        self.assertEqual(await alice.call("hub.nick", nick="alice"), {"nick": "alice", "old": "guest1"})
        self.assertEqual(await alice.pushes.next("nick"), {"old": "guest1", "new": "alice"})
        joined = await alice.call("hub.join", room="#Lobby")
        self.assertEqual(joined, {"room": "lobby", "history": [], "recovered": True, "last_id": 0, "members": ["alice"]})
        self.assertEqual(await alice.pushes.next("presence"),
                         {"kind": "join", "room": "lobby", "nick": "alice", "account": False})

        bob = await chat_client(self, port_of(tree, "chat"), "bob")  # type: ignore[arg-type]
        await bob.command("/join lobby")
        self.assertEqual(await alice.pushes.next("presence"),
                         {"kind": "join", "room": "lobby", "nick": "bob", "account": False})

        self.assertEqual(await alice.call("hub.publish", room="lobby", text="hi from framed ✓"), {"room": "lobby", "id": 1})
        self.assertEqual(await bob.read_until("MSG"), ["MSG lobby 1 alice hi from framed ✓"])
        self.assertEqual((await alice.pushes.next("message"))["id"], 1)  # members receive their own messages
        bob.send("hi from nc")
        pushed = await alice.pushes.next("message")
        self.assertEqual({k: pushed[k] for k in ("room", "id", "nick", "text")},
                         {"room": "lobby", "id": 2, "nick": "bob", "text": "hi from nc"})
        self.assertIsInstance(pushed["ts"], float)

        self.assertEqual(await alice.call("hub.who", room="lobby"), {"room": "lobby", "members": ["alice", "bob"]})
        self.assertEqual(await alice.call("hub.rooms"), {"rooms": [{"name": "lobby", "members": 2, "subscribers": 0, "last_id": 2}]})
        history = await alice.call("hub.history", room="lobby", limit=1)
        self.assertEqual([(m["id"], m["text"]) for m in history["messages"]], [(2, "hi from nc")])

        # a subscriber receives publications without presence; publishing needs no membership
        carol = await self.client(tree)
        self.assertEqual(await carol.call("hub.subscribe", room="lobby"),
                         {"room": "lobby", "history": [], "recovered": True, "last_id": 2})
        await carol.call("hub.publish", room="news", text="not for lobby")
        await alice.call("hub.publish", room="lobby", text="to everyone")
        self.assertEqual((await carol.pushes.next("message"))["text"], "to everyone")
        self.assertEqual(await carol.call("hub.unsubscribe", room="lobby"), {"room": "lobby"})

        await alice.call("hub.nick", nick="alicia")
        self.assertEqual(await alice.pushes.next("nick"), {"old": "alice", "new": "alicia"})
        self.assertEqual(
            await bob.read_until("NICK"), ["MSG lobby 2 bob hi from nc", "MSG lobby 3 alice to everyone", "NICK alice alicia"]
        )

        self.assertEqual(await alice.call("hub.part", room="lobby"), {"room": "lobby"})
        self.assertEqual(await bob.read_until("PART"), ["PART lobby alicia"])
        for command, args, code in [
            ("hub.part", {"room": "lobby"}, "NOT_IN_ROOM"),
            ("hub.join", {"room": "no spaces"}, "ROOM_INVALID"),
            ("hub.nick", {"nick": "bob"}, "NICK_TAKEN"),
            ("hub.publish", {"room": "lobby", "text": ""}, "TEXT_INVALID"),
            ("hub.publish", {"room": "lobby"}, "BAD_ARGUMENTS"),
        ]:
            with self.assertRaises(FramedError) as e:
                await alice.call(command, args)
            self.assertEqual(e.exception.code, code, command)

    async def test_pipelined_requests_complete_out_of_order_and_barriers_hold_later_ones(self) -> None:
        tree = await self.start()
        setup = await self.client(tree)
        await setup.call("register", username="frank", password="frank's password")
        client = await connect(self, port_of(tree, "framed"))  # type: ignore[arg-type]
        # one write: the counter waits for the database, ping does not; login is a barrier for kv.list
        client.transport.write(
            request("counter.increment", 1) + request("ping", 2)
            + request("login", 3, {"username": "frank", "password": "frank's password"})
            + request("kv.list", 4)
        )
        replies = [r for r in await read_frames(client, 5) if r[1]["id"]]  # and a nick push after login
        order = [body["id"] for _, body in replies]
        self.assertEqual(sorted(order), [1, 2, 3, 4])
        self.assertEqual(order[0], 2)  # answered while the counter's transaction was still queued
        self.assertLess(order.index(3), order.index(4))
        self.assertTrue(all(body["ok"] for _, body in replies), replies)
        self.assertIn((COMMANDS["kv.list"], {"id": 4, "ok": True, "result": {"keys": []}}), replies)


class SQLiteFramedTests(FramedTestsMixin, TestCase):
    def database_url(self) -> str:
        return f"sqlite:///{os.path.abspath(self.mktemp())}.sqlite3"


@pytest.mark.mysql
class MySQLFramedTests(FramedTestsMixin, TestCase):
    def database_url(self) -> str:
        return mysql.create_database(self)

    async def test_concurrent_new_keys_never_pass_the_quota(self) -> None:
        tree = await self.start(extra="[kv]\nmax_keys_per_account = 5")
        c = await self.client(tree)
        await c.call("register", username="gina", password="gina's password")
        await c.call("login", username="gina", password="gina's password")
        results = await gatherResults(
            [c.call("kv.set", key=f"k{i}", value=i).addErrback(lambda f: f.value.code) for i in range(20)]
        )
        self.assertEqual(sum(1 for r in results if isinstance(r, dict)), 5)
        self.assertEqual(len((await c.call("kv.list"))["keys"]), 5)


class MalformedInputTests(TestCase):
    """Bad frames over a real socket: each gets its documented answer, and other clients are unaffected."""

    async def start(self, framed: str = "") -> ServiceTree:
        url = f"sqlite:///{os.path.abspath(self.mktemp())}.sqlite3"
        return await start_tree(self, load(self, framed_config(url, framed)))

    async def exchange(self, port: int, data: bytes, n: int = 1) -> tuple[Collector, list[tuple[int, dict[str, Any]]]]:
        client = await connect(self, port)
        client.transport.write(data)
        return client, await read_frames(client, n)

    def error(self, reply: tuple[int, dict[str, Any]]) -> tuple[int, int, str]:
        command, body = reply
        self.assertIs(body["ok"], False)
        self.assertEqual(set(body["error"]), {"code", "message", "retry"})
        return command, body["id"], body["error"]["code"]

    async def test_bad_frames_that_keep_the_connection(self) -> None:
        tree = await self.start()
        port = port_of(tree, "framed")
        bystander = await framed_client(self, port)
        cases = [
            (raw_frame(1, 1, b""), (1, 0, "BAD_REQUEST")),  # a zero-length body is not JSON
            (raw_frame(1, 1, b"{not json"), (1, 0, "BAD_REQUEST")),
            (raw_frame(1, 2, b'{"id": 1, "args": "\xff\xfe"}'), (2, 0, "BAD_ENCODING")),
            (raw_frame(1, 1, b"[1, 2]"), (1, 0, "BAD_REQUEST")),
            (raw_frame(1, 1, b"[" * 100_000), (1, 0, "BAD_REQUEST")),  # nesting deep enough to break a recursive parser
            (raw_frame(1, 1, b'{"args": {}}'), (1, 0, "BAD_REQUEST")),
            (raw_frame(1, 1, b'{"id": true}'), (1, 0, "BAD_REQUEST")),
            (raw_frame(1, 1, b'{"id": 0}'), (1, 0, "BAD_REQUEST")),
            (raw_frame(1, 1, b'{"id": 9007199254740992}'), (1, 0, "BAD_REQUEST")),
            (raw_frame(1, 1, b'{"id": 1.5}'), (1, 0, "BAD_REQUEST")),
            (raw_frame(1, 1, b'{"id": 3, "args": []}'), (1, 3, "BAD_REQUEST")),
            (raw_frame(1, 1, b'{"id": 3, "cmd": "ping"}'), (1, 3, "BAD_REQUEST")),
            (request(9999, 4), (9999, 4, "UNKNOWN_COMMAND")),
            (request("echo", 5, {}), (2, 5, "BAD_ARGUMENTS")),
            (request("kv.get", 6, {"key": "k"}), (20, 6, "UNAUTHENTICATED")),
        ]
        client = await connect(self, port)
        for i, (data, expected) in enumerate(cases):
            client.transport.write(data)
            replies = await read_frames(client, i + 1)
            self.assertEqual(self.error(replies[i]), expected, data[:40])
        # still open and serving
        client.transport.write(request("ping", 7))
        replies = await read_frames(client, len(cases) + 1)
        self.assertTrue(replies[-1][1]["ok"])
        self.assertTrue((await bystander.call("ping"))["pong"])

    async def test_an_id_in_flight_cannot_be_reused(self) -> None:
        tree = await self.start()
        client, replies = await self.exchange(
            port_of(tree, "framed"), request("counter.increment", 1) + request("ping", 1), 2
        )
        self.assertEqual(self.error(replies[0]), (1, 0, "BAD_REQUEST"))
        self.assertEqual(replies[1][1]["id"], 1)
        self.assertTrue(replies[1][1]["ok"])

    async def test_headers_that_break_the_stream_get_an_answer_and_close(self) -> None:
        tree = await self.start()
        port = port_of(tree, "framed")
        bystander = await framed_client(self, port)
        for data, expected in [
            (raw_frame(1, 1, b"", length=0xFFFFFFFF), (1, 0, "TOO_LARGE")),  # 4 GiB declared: never buffered
            (raw_frame(1, 1, b"", length=1024 * 1024 + 1) + b"x" * 100, (1, 0, "TOO_LARGE")),
            (raw_frame(2, 11, b'{"id": 1}'), (11, 0, "UNSUPPORTED_VERSION")),
            (raw_frame(0x01000000, 1, b'{"id": 1}'), (1, 0, "UNSUPPORTED_VERSION")),  # little-endian version 1
        ]:
            client, replies = await self.exchange(port, data)
            await client.closed
            self.assertEqual([self.error(r) for r in frames(client.data)], [expected])
        # a truncated header, then the client goes away
        client = await connect(self, port)
        client.transport.write(b"\x00\x00\x00\x01\x00")
        client.transport.loseConnection()
        await client.closed
        self.assertTrue((await bystander.call("ping"))["pong"])

    async def test_requests_over_the_rate_get_rate_limited(self) -> None:
        tree = await self.start("request_rate = 0.01\nrequest_burst = 3")
        client, replies = await self.exchange(port_of(tree, "framed"), b"".join(request("ping", i) for i in range(1, 6)), 5)
        self.assertEqual([body["ok"] for _, body in replies], [True, True, True, False, False])
        self.assertEqual(replies[3][1]["error"]["code"], "RATE_LIMITED")
        self.assertIs(replies[3][1]["error"]["retry"], True)

    async def test_a_connection_over_the_limit_is_told_busy(self) -> None:
        tree = await self.start("max_connections = 1")
        port = port_of(tree, "framed")
        first = await framed_client(self, port)
        await first.call("ping")
        refused = await connect(self, port)
        await refused.closed
        self.assertEqual(frames(refused.data), [(PUSHES["closing"], {
            "id": 0, "push": "closing",
            "data": {"error": {"code": "BUSY", "message": "too many connections, try again later", "retry": True}},
        })])

    async def test_a_flood_of_pipelined_requests_from_a_client_that_does_not_read(self) -> None:
        tree = await self.start("request_rate = 1000000.0\nrequest_burst = 1000000\nmax_in_flight = 8")
        port = port_of(tree, "framed")
        bystander = await framed_client(self, port)
        factory = tree.listeners["framed"].factory
        flood = await connect(self, port)
        flood.transport.pauseProducing()  # never reads
        await bystander.call("ping")
        (server,) = [p for p in factory.connections if p.transport.getPeer().port == flood.transport.getHost().port]
        stalled: Deferred[None] = Deferred()
        pause = server._pause_reading

        def pause_and_tell() -> None:
            pause()
            if server.outbound.paused and not stalled.called:
                stalled.callback(None)

        server._pause_reading = pause_and_tell
        n, payload = 20_000, "x" * 1000
        flood.transport.write(b"".join(request("echo", i, {"data": payload}) for i in range(1, n + 1)))
        await stalled
        # the server stopped reading: what it holds is bounded by one read and the queue limit
        self.assertLess(server.decoder.buffered, 128 * 1024)
        self.assertLessEqual(server.outbound.pending, 1024 * 1024)
        self.assertTrue((await bystander.call("echo", data="still served"))["data"] == "still served")
        flood.transport.resumeProducing()
        replies = await read_frames(flood, n)
        self.assertEqual([body["id"] for _, body in replies], list(range(1, n + 1)))
        self.assertTrue(all(body["ok"] for _, body in replies))
