"""The framed protocol on an in-memory transport with a fake clock, and the decoder under hypothesis."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from myservices.db import DatabaseUnavailable
from myservices.framed.catalog import COMMANDS, PUSHES
from myservices.framed.server import FramedConfig, FramedFactory, FramedProtocol
from myservices.framed.wire import HEADER, FrameDecoder, FrameError, encode_frame, encode_json
from myservices.handlers.commands import SharedServices, router as default_router
from myservices.handlers.router import Command, Router
from myservices.hub import HubConfig, Subscriber
from myservices.metrics import Metrics
from tests.support import memory_hub, run_now

SLOW, FAILING, BROKEN = 900, 901, 902


def decode_all(data: bytes) -> list[tuple[int, dict[str, Any]]]:
    decoder = FrameDecoder(2**32)
    decoder.feed(data)
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append((frame.command, json.loads(frame.body)))
    return out


class Harness:
    """One protocol on a StringTransport, with test commands: SLOW waits for the test, FAILING's database is down."""

    def __init__(self, **cfg: Any) -> None:
        self.clock = Clock()
        self.waiting: list[Deferred[Any]] = []
        router = Router()
        router.commands.update(default_router.commands)

        async def slow(state: Any) -> Any:
            d: Deferred[Any] = Deferred()
            self.waiting.append(d)
            return await d

        async def failing(state: Any) -> None:
            raise DatabaseUnavailable("database unavailable: test")

        def broken(state: Any) -> Any:
            return {"not json": object()}

        router.commands["slow"] = Command("slow", slow, ())
        router.commands["failing"] = Command("failing", failing, ())
        router.commands["broken"] = Command("broken", broken, ())
        ids = {**COMMANDS, "slow": SLOW, "failing": FAILING, "broken": BROKEN}
        hub = memory_hub(HubConfig(publish_rate=1e6, publish_burst=10**6), self.clock)
        services = SharedServices(hub=hub, accounts=None, kv=None, counter=None, clock=self.clock, tokens=None)  # type: ignore[arg-type]
        config = FramedConfig(endpoint="tcp:0", **cfg)
        self.factory = FramedFactory(
            "framed", config, services, Metrics(), self.clock, 4096, router=router, command_ids=ids
        )
        self.proto: FramedProtocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        self.proto.makeConnection(self.transport)

    def send(self, command: int, request_id: int, args: dict[str, Any] | None = None) -> None:
        body: dict[str, Any] = {"id": request_id}
        if args is not None:
            body["args"] = args
        self.proto.dataReceived(encode_json(command, body))

    def replies(self) -> list[tuple[int, dict[str, Any]]]:
        out = decode_all(self.transport.value())
        self.transport.clear()
        return out


class ProtocolTests(TestCase):
    def test_in_flight_cap_stops_reading_and_resumes(self) -> None:
        h = Harness(max_in_flight=2)
        h.proto.dataReceived(b"".join(encode_json(SLOW, {"id": i}) for i in (1, 2, 3)) + encode_json(1, {"id": 4}))
        self.assertEqual(len(h.waiting), 2)
        self.assertEqual(h.transport.producerState, "paused")
        self.assertEqual(h.replies(), [])
        h.waiting[1].callback({"done": 2})
        # the third starts; ping (4) behind it is answered at once, and reading resumes when nothing is buffered
        self.assertEqual(len(h.waiting), 3)
        self.assertEqual([(c, b["id"]) for c, b in h.replies()], [(SLOW, 2)])
        h.waiting[0].callback({"done": 1})
        self.assertEqual([(c, b["id"]) for c, b in h.replies()], [(SLOW, 1), (1, 4)])
        self.assertEqual(h.transport.producerState, "producing")
        h.waiting[2].callback(None)
        self.assertEqual(h.replies(), [(SLOW, {"id": 3, "ok": True, "result": None})])

    def test_a_barrier_holds_later_requests_until_answered(self) -> None:
        h = Harness()
        h.factory.commands[SLOW] = Command("slow", h.factory.commands[SLOW].handler, (), barrier=True)
        h.proto.dataReceived(encode_json(SLOW, {"id": 1}) + encode_json(1, {"id": 2}))
        self.assertEqual(h.replies(), [])
        self.assertEqual(h.transport.producerState, "paused")
        h.waiting[0].callback("first")
        self.assertEqual([b["id"] for _, b in h.replies()], [1, 2])

    def test_idle_connections_are_told_and_closed_and_requests_keep_them_open(self) -> None:
        h = Harness(idle_timeout=60)
        h.clock.advance(59)
        h.send(1, 1)
        h.clock.advance(59)
        self.assertFalse(h.transport.disconnecting)
        h.replies()
        h.clock.advance(1)
        self.assertTrue(h.transport.disconnecting)
        ((command, body),) = h.replies()
        self.assertEqual(command, PUSHES["closing"])
        self.assertEqual(body["data"]["error"]["code"], "TIMEOUT")
        self.assertIn("send ping", body["data"]["error"]["message"])

    def test_shutdown_answers_in_flight_refuses_buffered_then_closes(self) -> None:
        h = Harness(max_in_flight=1)
        h.proto.dataReceived(encode_json(SLOW, {"id": 1}) + encode_json(1, {"id": 2}) + encode_json(1, {"id": 3}))
        h.proto.shutting_down()
        replies = h.replies()
        self.assertEqual(replies[0], (PUSHES["shutdown"], {
            "id": 0, "push": "shutdown", "data": {"message": "the server is shutting down", "retry": True},
        }))
        self.assertEqual([(b["id"], b["error"]["code"]) for _, b in replies[1:]], [(2, "SHUTTING_DOWN"), (3, "SHUTTING_DOWN")])
        self.assertFalse(h.transport.disconnecting)  # request 1 is still running
        h.proto.dataReceived(encode_json(1, {"id": 4}))
        self.assertEqual([b["error"]["code"] for _, b in h.replies()], ["SHUTTING_DOWN"])
        h.waiting[0].callback("finished")
        self.assertEqual(h.replies(), [(SLOW, {"id": 1, "ok": True, "result": "finished"})])
        self.assertTrue(h.transport.disconnecting)

    def test_database_unavailable_and_internal_errors(self) -> None:
        h = Harness()
        h.send(FAILING, 1)
        h.send(BROKEN, 2)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)  # the broken result is logged with its traceback
        replies = h.replies()
        self.assertEqual([(b["id"], b["error"]["code"], b["error"]["retry"]) for _, b in replies],
                         [(1, "DATABASE_UNAVAILABLE", True), (2, "INTERNAL", True)])
        self.assertFalse(h.transport.disconnecting)

    def test_after_a_disconnect_the_closing_push_is_last_and_nothing_more_is_read(self) -> None:
        h = Harness()
        hub = h.factory.services.hub
        h.send(40, 1, {"nick": "spammer"})  # hub.nick
        h.send(41, 2, {"room": "lobby"})  # hub.join
        h.send(SLOW, 3)  # in flight when the order comes
        h.replies()
        seen: list[Any] = []
        member = run_now(hub.open_session(Subscriber(seen.append, lambda error: None)))
        run_now(hub.join(member, "lobby"))
        h.replies()  # its JOIN
        self.assertTrue(run_now(hub.disconnect("spammer", "bye")))
        # TLS goes on delivering what the peer sends until it answers close_notify: none of it runs
        h.send(43, 4, {"room": "lobby", "text": "after the disconnect"})  # hub.publish
        h.waiting[0].callback("late")  # the reply of a request in flight is not sent after the closing push
        *before, (command, body) = h.replies()  # its own PART may come first: the closing push is the last
        self.assertEqual([b["data"]["kind"] for _, b in before], ["part"] * len(before))
        self.assertEqual((command, body["data"]["error"]), (PUSHES["closing"], {
            "code": "DISCONNECTED", "message": "bye", "retry": False,
        }))
        self.assertTrue(h.transport.disconnecting)
        self.assertEqual([e for e in seen if getattr(e, "text", None)], [])

    def test_a_client_that_does_not_read_its_pushes_is_dropped(self) -> None:
        h = Harness()
        h.send(41, 1, {"room": "lobby"})  # hub.join
        h.replies()
        h.proto.outbound.pauseProducing()  # the kernel buffer is full: the peer is not reading
        member = run_now(h.factory.services.hub.open_session(Subscriber(_Sink().deliver, _Sink().close)))
        self.successResultOf(Deferred.fromCoroutine(h.factory.services.hub.join(member, "lobby")))
        for i in range(200):
            self.successResultOf(Deferred.fromCoroutine(h.factory.services.hub.publish(member, "lobby", "x" * 100)))
        self.assertTrue(h.transport.disconnected)  # aborted
        self.assertEqual(h.replies()[-1][1]["data"]["error"]["code"], "SLOW_CONSUMER")


class _Sink:
    def deliver(self, event: Any) -> None:
        pass

    def close(self, error: Any) -> None:
        pass


frame_lists = st.lists(
    st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=300)), max_size=20
)


class DecoderTests(TestCase):
    @given(frame_lists, st.lists(st.integers(0, 10_000), max_size=30))
    def test_any_split_decodes_to_the_same_frames(self, sent: list[tuple[int, bytes]], cuts: list[int]) -> None:
        stream = b"".join(encode_frame(command, body) for command, body in sent)
        points = sorted({c % (len(stream) + 1) for c in cuts})
        pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)])]
        decoder = FrameDecoder(1000)
        got = []
        for piece in pieces:
            decoder.feed(piece)
            while (frame := decoder.next_frame()) is not None:
                got.append((frame.command, frame.body))
        self.assertEqual(got, sent)
        self.assertEqual(decoder.buffered, 0)

    @given(st.integers(1001, 2**32 - 1))
    def test_an_oversize_length_is_refused_from_the_header_alone(self, length: int) -> None:
        decoder = FrameDecoder(1000)
        decoder.feed(HEADER.pack(1, length, 7))
        with self.assertRaises(FrameError) as e:
            decoder.next_frame()
        self.assertEqual((e.exception.error.code, e.exception.command), ("TOO_LARGE", 7))


class ArbitraryInputTests(TestCase):
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.binary(max_size=200), max_size=10))
    def test_arbitrary_bytes_never_raise_and_every_answer_is_a_frame(self, chunks: list[bytes]) -> None:
        self._feed(chunks)

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from([1, 1, 1, 2, 13, 40, 41, 46, 20, 9999, 0]),
                st.one_of(
                    st.binary(max_size=60),
                    st.recursive(
                        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                        lambda children: st.lists(children, max_size=3)
                        | st.dictionaries(st.sampled_from(["id", "args", "room", "nick", "data", "x"]), children, max_size=3),
                        max_leaves=8,
                    ).map(lambda v: json.dumps(v).encode()),
                ),
                st.sampled_from([1, 1, 1, 1, 0, 2]),
            ),
            max_size=8,
        ),
        st.integers(1, 50),
    )
    def test_near_valid_frames_never_raise(self, frames: list[tuple[int, bytes, int]], chunk: int) -> None:
        stream = b"".join(HEADER.pack(version, len(body), command) + body for command, body, version in frames)
        self._feed([stream[i : i + chunk] for i in range(0, len(stream), chunk)])

    def _feed(self, chunks: list[bytes]) -> None:
        h = Harness(max_body_size=100)
        for chunk in chunks:
            if h.transport.disconnecting:
                break
            h.proto.dataReceived(chunk)  # raises if anything escapes
        for _, body in h.replies():
            self.assertIn("id", body)
        self.assertEqual(self.flushLoggedErrors(), [])
        h.proto.connectionLost(None)
