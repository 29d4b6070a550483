"""The same event counts the same metrics on every front end of the hub: one pipeline, one outbound bound."""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.trial.unittest import TestCase

from myservices.hub import Subscriber
from tests.pbclient import Listener, failure_of, pb_connect
from tests.support import chat_client, framed_client, load, port_of, start_tree
from tests.test_bad_input import four_front_ends
from tests.test_pb import code_of
from tests.wsclient import ws_connect

SERVICES = ("chat", "framed", "websocket", "pb")


class SameEventSameMetricTests(TestCase):
    timeout = 60

    async def test_a_bad_request_and_a_slow_consumer_count_alike_on_every_front_end(self) -> None:
        tree = await start_tree(self, load(self, four_front_ends(self.mktemp() + ".sqlite3", hub='max_pending = "64 KiB"', pb="max_unanswered = 100000")))
        closed: list[Deferred[Any]] = []
        paused: list[Any] = []

        line = await chat_client(self, port_of(tree, "chat"))
        self.assertEqual((await line.command("/join no!good"))[-1].split()[:2], ["ERR", "ROOM_INVALID"])
        await line.command("/join flood")
        framed = await framed_client(self, port_of(tree, "framed"))
        with self.assertRaises(Exception) as caught:
            await framed.call("hub.join", room="no!good")
        self.assertEqual(caught.exception.code, "ROOM_INVALID")
        await framed.call("hub.join", room="flood")
        web = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        self.assertEqual((await web.request("join", room="no!good"))["error"]["code"], "ROOM_INVALID")
        await web.call("join", room="flood")
        await tree.listeners["pb"].factory.services.accounts.register("flo", "correct horse")
        pb_client = await pb_connect(self, port_of(tree, "pb"))
        avatar = await pb_client.login("flo", "correct horse")
        self.assertEqual(code_of(await failure_of(avatar.callRemote("join", "no!good", Listener()))), "ROOM_INVALID")
        await avatar.callRemote("join", "flood", Listener())

        # every member stops reading; the room keeps talking until each is dropped as a slow consumer
        # (small socket buffers on both sides, so that takes megabytes less)
        for name in SERVICES:
            for proto in tree.listeners[name].factory.connections:
                proto.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        for transport, done in ((line.transport, line.closed), (framed.transport, framed.closed),
                                (web.transport, web.closed), (pb_client.broker.transport, pb_client.closed)):
            transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            transport.pauseProducing()
            paused.append(transport)
            closed.append(done)
        speaker = await tree.hub.open_session(Subscriber(lambda event: None, lambda error: None))
        for _ in range(200):  # bounded: 200 x 50 messages of 4000 characters is far past every buffer
            if not any(tree.listeners[name].factory.connections for name in SERVICES):
                break  # the server dropped every one of them
            await gatherResults([
                Deferred.fromCoroutine(tree.hub.publish(speaker, "flood", "x" * 4000, as_member=False))
                for _ in range(50)
            ])
        self.assertEqual(await tree.hub.who("flood"), [])
        for transport in paused:
            transport.resumeProducing()  # a paused client does not even see its connection end
        await DeferredList(closed)

        def sample(name: str, **labels: str) -> float:
            return tree.metrics.registry.get_sample_value(name, labels) or 0.0

        counted = {
            service: (
                sample("myservices_slow_consumers_total", service=service),
                sample("myservices_connections_closed_by_server_total", service=service, reason="slow_consumer"),
                sample("myservices_backpressure_pauses_total", service=service) >= 1,
                sample("myservices_errors_total", service=service, code="ROOM_INVALID"),
            )
            for service in SERVICES
        }
        self.assertEqual(counted, {service: (1.0, 1.0, True, 1.0) for service in SERVICES})
