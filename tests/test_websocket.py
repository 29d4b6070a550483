"""The WebSocket service over loopback with real clients: routes, the JSON chat, limits, the HTTP mount."""

from __future__ import annotations

import json
import os
import socket
from base64 import b64encode

import pytest
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from myservices.errors import ERRORS
from tests import mysql
from tests.support import chat_client, load, port_of, start_tree
from tests.wsclient import HandshakeFailed, raw_handshake, ws_connect


def ws_config(database_url: str = "sqlite:///ws.sqlite3", websocket: str = "", hub: str = "") -> str:
    return f"""
[daemon]
shutdown_timeout = 2
[database]
url = "{database_url}"
[hub]
publish_rate = 100000.0
publish_burst = 100000
{hub}
[services.chat]
endpoint = "tcp:0:interface=127.0.0.1"
[services.websocket]
endpoint = "tcp:0:interface=127.0.0.1"
{websocket}
[services.http]
endpoint = "tcp:0:interface=127.0.0.1"
websocket = true
"""


class WebSocketTestsMixin:
    """Chat tests that touch history run on SQLite and MariaDB."""

    timeout = 60

    def database_url(self) -> str:
        raise NotImplementedError

    async def start(self, websocket: str = "", hub: str = ""):
        return await start_tree(self, load(self, ws_config(self.database_url(), websocket, hub)))

    async def test_chat_protocol_end_to_end(self) -> None:
        tree = await self.start()
        port = port_of(tree, "websocket")
        ann = await ws_connect(self, port, "/chat")
        welcome = await ann.event("welcome")
        self.assertRegex(welcome["nick"], r"^guest\d+$")
        self.assertEqual(welcome["limits"]["max_message_size"], 65536)
        self.assertEqual(await ann.call("nick", nick="ann"), {"nick": "ann", "old": welcome["nick"]})
        joined = await ann.call("join", room="#Lobby")
        self.assertEqual(joined, {"room": "lobby", "history": [], "recovered": True, "last_id": 0, "members": ["ann"]})
        self.assertEqual(await ann.event("presence"),
                         {"type": "presence", "kind": "join", "room": "lobby", "nick": "ann", "account": False})

        reply = await ann.request("publish", room="lobby", text="hello, wörld")
        self.assertEqual(reply, {"type": "reply", "op": "publish", "id": reply["id"], "result": {"room": "lobby", "id": 1}})
        message = await ann.event("message")
        self.assertEqual({k: message[k] for k in ("room", "id", "nick", "text")},
                         {"room": "lobby", "id": 1, "nick": "ann", "text": "hello, wörld"})

        # a second browser joins: it sees the history, the member list, and presence reaches the first
        bob = await ws_connect(self, port, "/chat")
        await bob.call("nick", nick="bob")
        joined = await bob.call("join", room="lobby")
        self.assertEqual([m["text"] for m in joined["history"]], ["hello, wörld"])
        self.assertEqual(joined["members"], ["ann", "bob"])
        self.assertEqual((await ann.event("presence", nick="bob"))["kind"], "join")
        self.assertEqual(await bob.call("who", room="lobby"), {"room": "lobby", "members": ["ann", "bob"]})
        history = await bob.call("history", room="lobby", limit=5)
        self.assertEqual([m["id"] for m in history["messages"]], [1])
        self.assertEqual((await bob.call("rooms"))["rooms"], [{"name": "lobby", "members": 2, "subscribers": 0, "last_id": 1}])
        await bob.call("nick", nick="bobby")
        self.assertEqual(await ann.event("nick", new="bobby"), {"type": "nick", "old": "bob", "new": "bobby"})
        self.assertEqual(await bob.call("part", room="lobby"), {"room": "lobby"})
        self.assertEqual(await ann.event("presence", kind="part"),
                         {"type": "presence", "kind": "part", "room": "lobby", "nick": "bobby", "account": False})

        # a request without an id still gets its reply, without an id
        ann.send_json({"type": "ping"})
        reply = await ann.event("reply", op="ping")
        self.assertNotIn("id", reply)
        self.assertTrue(reply["result"]["pong"])

    async def test_a_line_chat_user_and_a_websocket_user_share_a_room(self) -> None:
        tree = await self.start()
        line = await chat_client(self, port_of(tree, "chat"), "liner")
        await line.command("/join lobby")
        # through the HTTP site's mount, as the web page does
        web = await ws_connect(self, port_of(tree, "http"), "/ws/chat")
        await web.call("nick", nick="webby")
        await web.call("join", room="lobby")
        self.assertEqual(await line.read_until("JOIN lobby webby"), ["JOIN lobby webby"])

        line.send("hello from the terminal")
        message = await web.event("message", nick="liner")
        self.assertEqual(message["text"], "hello from the terminal")
        await web.call("publish", room="lobby", text="hello from the browser")
        self.assertEqual((await line.read_until("MSG lobby 2"))[-1], "MSG lobby 2 webby hello from the browser")

    async def test_errors_are_answered_and_the_connection_stays(self) -> None:
        tree = await self.start()
        client = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        await client.event("welcome")

        async def error(message: object) -> dict:
            client.sendMessage(message if isinstance(message, bytes) else json.dumps(message).encode())
            return (await client.event("error"))["error"]

        self.assertEqual((await error(b"{not json"))["code"], "BAD_REQUEST")
        self.assertEqual((await error(b"[1, 2]"))["code"], "BAD_REQUEST")
        self.assertEqual((await error(b"[" * 60_000))["code"], "BAD_REQUEST")
        self.assertEqual((await error({"type": "fly"}))["code"], "UNKNOWN_COMMAND")
        self.assertEqual((await error({"type": "join", "id": [1]}))["code"], "BAD_REQUEST")
        self.assertEqual((await error({"type": "join", "id": "x" * 65}))["code"], "BAD_REQUEST")
        reply = await client.request("join")
        self.assertEqual(reply["error"], {"code": "BAD_ARGUMENTS", "message": 'join: missing argument "room"', "retry": False})
        self.assertEqual(reply["op"], "join")
        self.assertEqual((await client.request("join", room=5))["error"]["code"], "BAD_ARGUMENTS")
        self.assertEqual((await client.request("join", room="lobby", extra=1))["error"]["code"], "BAD_ARGUMENTS")
        self.assertEqual((await client.request("join", room="no spaces"))["error"]["code"], "ROOM_INVALID")
        self.assertEqual((await client.request("publish", room="lobby", text=""))["error"]["code"], "TEXT_INVALID")
        self.assertEqual((await client.request("part", room="lobby"))["error"]["code"], "NOT_IN_ROOM")
        self.assertEqual((await client.request("nick", nick="9lives"))["error"]["code"], "NICK_INVALID")
        for code in ("BAD_REQUEST", "UNKNOWN_COMMAND", "BAD_ARGUMENTS", "ROOM_INVALID", "TEXT_INVALID"):
            self.assertIn(code, ERRORS)
        # still served
        self.assertTrue((await client.call("ping"))["pong"])

        # binary is not part of the chat protocol: closed with 1003 and the reason
        client.sendMessage(b"\x00\x01", isBinary=True)
        code, reason = await client.closed
        self.assertEqual(code, 1003)
        self.assertTrue(reason.startswith("BAD_REQUEST: "), reason)


class SqliteWebSocketTests(WebSocketTestsMixin, TestCase):
    def database_url(self) -> str:
        return "sqlite:///ws.sqlite3"

    async def test_echo_returns_text_and_binary_unchanged(self) -> None:
        tree = await self.start()
        for port, path in ((port_of(tree, "websocket"), "/echo"), (port_of(tree, "http"), "/ws/echo")):
            client = await ws_connect(self, port, path)
            for payload, binary in (("héllo ✓".encode(), False), (bytes(range(256)), True), (b"x" * 65536, False)):
                client.sendMessage(payload, isBinary=binary)
                self.assertEqual(await client.next_raw(), (payload, binary))
            client.sendClose(1000)
            self.assertEqual((await client.closed)[0], 1000)

    async def test_connections_handed_over_from_http_count_as_websocket_connections(self) -> None:
        tree = await self.start()
        http_port = port_of(tree, "http")
        clients = [await ws_connect(self, http_port, "/ws/chat") for _ in range(3)]
        websocket, http = tree.listeners["websocket"].factory, tree.listeners["http"].factory
        self.assertEqual((len(websocket.connections), len(http.connections)), (3, 0))
        clients[0].sendClose(1000)
        await clients[0].closed
        self.assertEqual(len(websocket.connections), 2)
        metrics = tree.metrics.registry
        self.assertEqual(metrics.get_sample_value("myservices_connections_open", {"service": "websocket"}), 2)
        self.assertEqual(metrics.get_sample_value("myservices_connections_open", {"service": "http"}), 0)

    async def test_a_message_over_the_limit_closes_with_1009_and_others_are_unaffected(self) -> None:
        tree = await self.start(websocket='max_message_size = "4 KiB"\nmax_frame_size = "2 KiB"')
        port = port_of(tree, "websocket")
        bystander = await ws_connect(self, port, "/echo")
        # one frame over the frame limit
        big = await ws_connect(self, port, "/echo")
        big.sendMessage(b"x" * 2049)
        self.assertEqual((await big.closed)[0], 1009)
        # frames under the frame limit that add up to more than the message limit
        fragmented = await ws_connect(self, port, "/echo")
        fragmented.sendMessage(b"y" * 4097, fragmentSize=1024)
        self.assertEqual((await fragmented.closed)[0], 1009)
        # compressed: 1 MiB of zeros deflates to about 1 KiB; the limit applies to the inflated size
        self.assertEqual(tree.metrics.registry.get_sample_value(
            "myservices_connections_closed_by_server_total", {"service": "websocket", "reason": "too_large"}), 2)
        bystander.sendMessage(b"still here")
        self.assertEqual(await bystander.next_raw(), (b"still here", False))

    async def test_compressed_messages_are_bounded_after_inflation(self) -> None:
        tree = await self.start(websocket='compression = true\nmax_message_size = "64 KiB"')
        port = port_of(tree, "websocket")
        client = await ws_connect(self, port, "/echo", compression=True)
        self.assertIsNotNone(client._perMessageCompress)  # negotiated
        client.sendMessage(b"a" * 60000)
        self.assertEqual(await client.next_raw(), (b"a" * 60000, False))
        bomb = await ws_connect(self, port, "/echo", compression=True)
        bomb.sendMessage(b"\0" * (8 * 1024 * 1024))  # deflates to a few KiB
        self.assertEqual((await bomb.closed)[0], 1009)

    async def test_origins(self) -> None:
        tree = await self.start(websocket='allowed_origins = ["https://chat.example.com"]')
        port = port_of(tree, "websocket")
        # the same host on any port (the page on the HTTP port), a listed origin, and no Origin at all
        for origin in (f"http://127.0.0.1:{port_of(tree, 'http')}", "https://chat.example.com", None):
            client = await ws_connect(self, port, "/echo", origin=origin)
            client.sendClose(1000)
            await client.closed
        for origin in ("http://evil.example", "null", "https://chat.example.com.evil.example"):
            status = await raw_handshake(self, port, "/chat", {"Origin": origin})
            self.assertEqual(status[:12], "HTTP/1.1 403", origin)
        with self.assertRaises(HandshakeFailed):
            await ws_connect(self, port, "/chat", origin="http://evil.example")
        self.assertEqual(tree.metrics.registry.get_sample_value(
            "myservices_connections_refused_total", {"service": "websocket", "reason": "origin"}), 4)
        # through the HTTP mount too
        status = await raw_handshake(self, port_of(tree, "http"), "/ws/chat", {"Origin": "http://evil.example"})
        self.assertEqual(status[:12], "HTTP/1.1 403")

    async def test_handshake_refusals(self) -> None:
        tree = await self.start(websocket='max_handshake_size = "2 KiB"')
        port = port_of(tree, "websocket")
        self.assertEqual((await raw_handshake(self, port, "/nowhere"))[:12], "HTTP/1.1 404")
        status = await raw_handshake(self, port, "/chat", {"X-Padding": "p" * 3000})
        self.assertEqual(status[:12], "HTTP/1.1 431")
        # the HTTP mount: a plain GET is told to upgrade
        status = await raw_handshake(self, port_of(tree, "http"), "/ws/chat", {"Upgrade": "h2c", "Connection": "close"})
        self.assertEqual(status[:12], "HTTP/1.1 426")

    async def test_max_connections(self) -> None:
        tree = await self.start(websocket="max_connections = 1")
        first = await ws_connect(self, port_of(tree, "websocket"), "/echo")
        self.assertEqual((await raw_handshake(self, port_of(tree, "websocket"), "/echo"))[:12], "HTTP/1.1 503")
        self.assertEqual((await raw_handshake(self, port_of(tree, "http"), "/ws/echo"))[:12], "HTTP/1.1 503")
        first.sendMessage(b"ok")
        self.assertEqual(await first.next_raw(), (b"ok", False))

    async def test_stopping_the_daemon_closes_with_1001(self) -> None:
        tree = await self.start()
        clients = [
            await ws_connect(self, port_of(tree, "websocket"), "/chat"),
            await ws_connect(self, port_of(tree, "http"), "/ws/echo"),
        ]
        await tree.stopService()
        for client in clients:
            code, reason = await client.closed
            self.assertEqual(code, 1001)
            self.assertTrue(reason.startswith("SHUTTING_DOWN"), reason)

    async def test_a_member_that_stops_reading_is_closed_and_the_others_get_everything(self) -> None:
        tree = await self.start(websocket="request_rate = 100000.0\nrequest_burst = 100000", hub='max_pending = "64 KiB"')
        port = port_of(tree, "websocket")
        fast = await ws_connect(self, port, "/chat")
        await fast.call("join", room="flood")
        publisher = await ws_connect(self, port, "/chat")
        # a raw client with a small receive window: handshake, join, then never read again
        slow = socket.socket()
        self.addCleanup(slow.close)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", port))
        key = b64encode(os.urandom(16)).decode()
        slow.sendall(
            f"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            + masked_frame(json.dumps({"type": "join", "room": "flood"}).encode())
        )
        await fast.event("presence", kind="join", nick="guest3")
        factory = tree.listeners["websocket"].factory
        slow_conn = server_side(factory, slow.getsockname()[1])
        closed: Deferred[None] = Deferred()
        original = slow_conn.onClose

        def on_close(*args: object) -> None:
            original(*args)
            if not closed.called:
                closed.callback(None)

        slow_conn.onClose = on_close
        text = "z" * 3000
        sent = 0
        while not closed.called:
            for _ in range(49):
                publisher.send_json({"type": "publish", "room": "flood", "text": text})
            await publisher.call("publish", room="flood", text=text)
            publisher.unread.clear()
            sent += 50
            self.assertLess(sent, 20_000, "the slow member was never dropped")
            # what waits for the slow member stays under the hub's max_pending
            self.assertLessEqual(slow_conn.outbound.pending, 64 * 1024)
        ids = [(await fast.event("message"))["id"] for _ in range(sent)]
        self.assertEqual(ids, list(range(1, sent + 1)))
        self.assertEqual(tree.metrics.registry.get_sample_value(
            "myservices_slow_consumers_total", {"service": "websocket"}), 1)
        self.assertEqual(await tree.hub.who("flood"), ["guest1"])


def server_side(factory, client_port: int):
    """The server's connection object for the client on local port C{client_port}."""
    return next(c for c in factory.connections if c.transport.getPeer().port == client_port)


def masked_frame(payload: bytes, opcode: int = 1) -> bytes:
    mask = os.urandom(4)
    header = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        header += bytes([0x80 | n])
    elif n < 65536:
        header += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@pytest.mark.mysql
class MysqlWebSocketTests(WebSocketTestsMixin, TestCase):
    def database_url(self) -> str:
        if not hasattr(self, "_url"):
            self._url = mysql.create_database(self)
        return self._url
