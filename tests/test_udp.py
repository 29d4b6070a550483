"""UDP echo over loopback: echo, oversize drop, and the counters."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import TestCase

from tests.support import load, port_of, start_tree

UDP_CONFIG = """
    [services.udp]
    endpoint = "udp:0:interface=127.0.0.1"
    max_datagram = 1000
"""


class UdpClient(DatagramProtocol):
    def __init__(self) -> None:
        self.waiting: list[Deferred[bytes]] = []
        self.received: list[bytes] = []

    def datagramReceived(self, datagram: bytes, addr: tuple) -> None:
        self.received.append(datagram)
        if self.waiting:
            self.waiting.pop(0).callback(datagram)

    def next(self) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.waiting.append(d)
        return d


class UdpTests(TestCase):
    async def client(self, port: int) -> UdpClient:
        client = UdpClient()
        listening = reactor.listenUDP(0, client, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        client.transport.connect("127.0.0.1", port)
        return client

    def sample(self, tree: object, name: str, **labels: str) -> float:
        return tree.metrics.registry.get_sample_value(name, {"service": "udp", **labels}) or 0.0

    async def test_datagrams_come_back_to_their_sender(self) -> None:
        tree = await start_tree(self, load(self, UDP_CONFIG))
        client = await self.client(port_of(tree, "udp"))
        for payload in (b"ping", b"\x00" * 1000, b"pong"):
            d = client.next()
            client.transport.write(payload)
            self.assertEqual(await d, payload)
        self.assertEqual(self.sample(tree, "myservices_sent_messages_total"), 3)

    async def test_oversize_datagram_is_dropped_and_counted(self) -> None:
        tree = await start_tree(self, load(self, UDP_CONFIG))
        client = await self.client(port_of(tree, "udp"))
        d = client.next()
        client.transport.write(b"x" * 1001)
        client.transport.write(b"after")
        # loopback keeps order: the first datagram back is the one after the oversize one
        self.assertEqual(await d, b"after")
        self.assertEqual(client.received, [b"after"])
        self.assertEqual(self.sample(tree, "myservices_dropped_messages_total", reason="oversize"), 1)
        self.assertEqual(self.sample(tree, "myservices_received_messages_total"), 2)
