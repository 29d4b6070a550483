"""WebSocket connections on a StringTransport with a Clock: pings, idle timeout, backpressure, slow consumers."""

from __future__ import annotations

import json
import os
import struct
from base64 import b64encode
from functools import partial
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from myservices.errors import RATE_LIMITED
from myservices.hub import HubConfig, Subscriber
from myservices.handlers.commands import SharedServices, router
from myservices.metrics import Metrics
from myservices.websocket.origin import origin_allowed
from myservices.websocket.protocol import WebSocketConnection, WebSocketFactory
from myservices.websocket.routes import ChatRoute, ChatSettings, EchoRoute

from tests.support import memory_hub, run_now
from tests.test_websocket import masked_frame

PEER = IPv4Address("TCP", "127.0.0.1", 50000)


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Unmasked server frames: (opcode, payload)."""
    frames = []
    while data:
        opcode, n = data[0] & 0x0F, data[1] & 0x7F
        i = 2
        if n == 126:
            n, i = struct.unpack("!H", data[2:4])[0], 4
        elif n == 127:
            n, i = struct.unpack("!Q", data[2:10])[0], 10
        frames.append((opcode, data[i : i + n]))
        data = data[i + n :]
    return frames


class Harness:
    def __init__(self, path: str = "/echo", **options: Any) -> None:
        self.clock = Clock()
        hub = memory_hub(HubConfig(publish_rate=1e6, publish_burst=10**6), self.clock)
        self.hub = hub
        services = SharedServices(hub=hub, accounts=None, kv=None, counter=None, clock=self.clock, tokens=None)  # type: ignore[arg-type]
        chat = ChatSettings(services=services, router=router, request_rate=options.pop("request_rate", 1000.0),
                            request_burst=options.pop("request_burst", 1000), max_queued=4, limits={})
        settings: dict[str, Any] = dict(
            max_connections=10, max_message_size=65536, max_frame_size=65536, max_handshake_size=4096,
            handshake_timeout=5.0, ping_interval=30.0, ping_timeout=10.0, idle_timeout=0.0, allowed_origins=(),
            compression=False, max_pending=8192, metrics=Metrics(), clock=self.clock,
        )
        settings.update(options)
        self.factory = WebSocketFactory(
            "websocket", {"/echo": EchoRoute, "/chat": partial(ChatRoute, settings=chat)}, **settings
        )
        self.proto: WebSocketConnection = self.factory.buildProtocol(PEER)
        self.transport = StringTransport(peerAddress=PEER)
        self.proto.makeConnection(self.transport)
        key = b64encode(os.urandom(16)).decode()
        self.proto.dataReceived(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = self.transport.value()
        assert head.startswith(b"HTTP/1.1 101"), head
        self.transport.clear()

    def frames(self) -> list[tuple[int, bytes]]:
        out = parse_frames(self.transport.value())
        self.transport.clear()
        return out

    def send(self, payload: bytes, opcode: int = 1) -> None:
        self.proto.dataReceived(masked_frame(payload, opcode))

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting or self.transport.disconnected


class PingTests(TestCase):
    def test_a_peer_that_answers_pings_stays_and_a_silent_one_is_dropped(self) -> None:
        h = Harness()
        h.clock.advance(30)
        [(opcode, payload)] = h.frames()
        self.assertEqual(opcode, 9)  # ping
        h.send(payload, opcode=10)  # pong
        h.clock.advance(10)
        self.assertFalse(h.closed)
        h.clock.advance(20)
        self.assertEqual([op for op, _ in h.frames()], [9])
        h.clock.advance(9.9)
        self.assertFalse(h.closed)
        h.clock.advance(0.2)
        self.assertTrue(h.closed)
        self.assertEqual(h.factory.metrics._metrics.closed.labels("websocket", "ping_timeout")._value.get(), 1)

    def test_no_pings_when_the_interval_is_zero(self) -> None:
        h = Harness(ping_interval=0)
        h.clock.advance(3600)
        self.assertEqual(h.frames(), [])
        self.assertFalse(h.closed)

    def test_a_handshake_that_never_completes_is_dropped(self) -> None:
        clock = Clock()
        h = Harness(clock=clock)
        proto = h.factory.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        proto.makeConnection(transport)
        proto.dataReceived(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.2)
        self.assertTrue(transport.disconnecting or transport.disconnected)


class IdleTests(TestCase):
    def test_idle_connections_are_closed_with_4001_and_messages_keep_them(self) -> None:
        h = Harness(idle_timeout=60.0, ping_interval=0)
        h.clock.advance(50)
        h.send(b"hi")
        self.assertEqual(h.frames(), [(1, b"hi")])
        h.clock.advance(50)
        self.assertEqual(h.frames(), [])
        h.clock.advance(10)
        [(opcode, payload)] = h.frames()
        self.assertEqual(opcode, 8)
        self.assertEqual(struct.unpack("!H", payload[:2])[0], 4001)
        self.assertTrue(payload[2:].startswith(b"TIMEOUT: no message for 60 seconds"))


class CloseTimeoutTests(TestCase):
    """autobahn's own graceful drops are bounded by close_timeout like ours."""

    def closed_count(self, h: Harness) -> float:
        return h.factory.metrics._metrics.closed.labels("websocket", "close_timeout")._value.get()

    def test_the_drop_after_the_closing_handshake_is_aborted_if_the_client_does_not_read(self) -> None:
        h = Harness(ping_interval=0)
        h.factory.close_timeout = 2
        h.send(struct.pack("!H", 1000), opcode=8)  # the client closes: the server answers and drops TCP
        self.assertEqual([op for op, _ in h.frames()], [8])
        self.assertTrue(h.transport.disconnecting)
        h.clock.advance(1.9)
        self.assertFalse(h.transport.disconnected)
        h.clock.advance(0.2)
        self.assertTrue(h.transport.disconnected)  # aborted
        self.assertEqual(self.closed_count(h), 1)

    def test_a_refused_handshake_is_bounded_too(self) -> None:
        h = Harness()
        h.factory.close_timeout = 2
        proto = h.factory.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        proto.makeConnection(transport)
        proto.dataReceived(b"GET /nope HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           b"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 404"))
        self.assertTrue(transport.disconnecting)
        h.clock.advance(2)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.closed_count(h), 1)


class BackpressureTests(TestCase):
    def test_echo_stops_reading_while_the_client_does_not_read(self) -> None:
        h = Harness()
        h.proto.outbound.pauseProducing()  # the transport's buffer is full
        h.send(b"a" * 1000)
        self.assertEqual(h.transport.producerState, "paused")
        self.assertEqual(h.frames(), [])
        h.proto.outbound.resumeProducing()
        self.assertEqual(h.frames(), [(1, b"a" * 1000)])
        self.assertEqual(h.transport.producerState, "producing")

    def test_a_chat_member_that_does_not_read_is_closed_with_4008(self) -> None:
        h = Harness("/chat")
        h.send(json.dumps({"type": "join", "room": "r"}).encode())
        h.frames()
        h.proto.outbound.pauseProducing()  # the client stopped reading
        session = run_now(h.hub.open_session(Subscriber(_Sink().deliver, _Sink().close)))
        sent = 0
        while not h.proto.outbound.overflowed:
            self.successResultOf(_publish(h.hub, session, "r", "x" * 1000))
            sent += 1
            self.assertLess(sent, 100)
        self.assertLessEqual(sent, 9)  # 8192 bytes of queue
        [(opcode, payload)] = h.frames()
        self.assertEqual(opcode, 8)
        self.assertEqual(struct.unpack("!H", payload[:2])[0], 4008)
        self.assertTrue(payload[2:].startswith(b"SLOW_CONSUMER"))
        self.assertEqual(run_now(h.hub.who("r")), [])  # left the room at once
        h.clock.advance(1.0)  # the close handshake is not answered either
        self.assertTrue(h.closed)

    def test_requests_past_the_rate_get_rate_limited_until_the_bucket_refills(self) -> None:
        h = Harness("/chat", request_rate=2.0, request_burst=2)
        for i in range(3):
            h.send(json.dumps({"type": "ping", "id": i}).encode())
        replies = [json.loads(p) for _, p in h.frames()]
        self.assertEqual([(r["type"], r["id"]) for r in replies], [("reply", 0), ("reply", 1), ("error", 2)])
        self.assertEqual(replies[-1]["error"]["code"], RATE_LIMITED.code)
        h.clock.advance(0.5)
        h.send(json.dumps({"type": "ping", "id": 3}).encode())
        self.assertEqual(json.loads(h.frames()[0][1])["type"], "reply")

    def test_requests_wait_behind_a_slow_one_and_reading_pauses_past_max_queued(self) -> None:
        h = Harness("/chat")
        route = h.proto.route
        blocked = Deferred()
        route.waiting = True  # as while a join waits for its room's history
        for i in range(4):
            h.send(json.dumps({"type": "ping", "id": i}).encode())
        self.assertEqual(h.frames(), [])
        self.assertEqual(h.transport.producerState, "paused")
        blocked.addBoth(route._go_on)
        blocked.callback(None)
        self.assertEqual([json.loads(p)["id"] for _, p in h.frames()], [0, 1, 2, 3])
        self.assertEqual(h.transport.producerState, "producing")


class _Sink:
    def deliver(self, event: object) -> None:
        pass

    def close(self, error: object) -> None:
        pass


def _publish(hub: Any, session: Any, room: str, text: str) -> Any:
    return Deferred.fromCoroutine(hub.publish(session, room, text, as_member=False))


class OriginTests(TestCase):
    def test_rules(self) -> None:
        self.assertTrue(origin_allowed(None, "h:1", ()))
        self.assertTrue(origin_allowed("", "h:1", ()))
        self.assertTrue(origin_allowed("http://h:8080", "h:18000", ()))
        self.assertTrue(origin_allowed("https://H:8080", "h", ()))
        self.assertTrue(origin_allowed("http://[::1]:8080", "[::1]:18000", ()))
        self.assertFalse(origin_allowed("http://other:8080", "h:18000", ()))
        self.assertFalse(origin_allowed("http://h.evil:8080", "h:18000", ()))
        self.assertFalse(origin_allowed("null", "h", ()))
        self.assertTrue(origin_allowed("null", "h", ("null",)))
        self.assertFalse(origin_allowed("ftp://h", "h", ()))
        self.assertTrue(origin_allowed("https://chat.example.com", "h", ("https://Chat.Example.com/",)))
        self.assertTrue(origin_allowed("http://anything", "h", ("*",)))
