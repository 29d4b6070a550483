"""The HTTP service under hostile clients: pipelining without reading, half-close, bad input, error shapes.

Each test does what an attacker did, over a real socket on loopback, against the real service tree.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted
from twisted.internet.defer import Deferred, race
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from myservices.metrics import Metrics
from myservices.tree import ServiceTree, build_service_tree
from myservices.web.channel import HttpLimits, LimitedHTTPChannel
from myservices.web.site import HttpSite
from tests.support import Collector, connect, disconnect_at_cleanup, free_port, load, port_of, raw_http, start_tree
from tests.test_http import http_config, number, sample

HOST = b"Host: x\r\n"


def parse_responses(data: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Every complete response in C{data} (all ours have a Content-Length): status, headers, body."""
    responses = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        headers = dict(line.split(b": ", 1) for line in lines[1:])
        length = int(headers.get(b"Content-Length", b"0"))
        if len(rest) < length:
            break
        responses.append((int(lines[0].split(b" ")[1]), headers, rest[:length]))
        data = rest[length:]
    return responses


async def exchange(testcase: TestCase, port: int, data: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """Send C{data} on a new connection; the first response, whether or not the server then closes."""
    client = await connect(testcase, port)
    client.transport.write(data)
    while True:
        got = parse_responses(client.data)
        if got:
            return got[0]
        try:
            await client.receive(len(client.data) + 1)
        except Exception:  # closed before a whole response: fail below with what came
            testcase.fail(f"no complete response to {data[:60]!r}: {client.data!r}")


class LogWatch:
    """Collects log events that report a server bug: critical, error, or carrying a failure."""

    def __init__(self, testcase: TestCase) -> None:
        self.bugs: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self)
        testcase.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        level = event.get("log_level")
        if "log_failure" in event or (level is not None and level.name in ("critical", "error")):
            self.bugs.append(event)


class Flood:
    """A raw client socket the reactor writes pipelined requests to whenever it can take more; it never reads.

    C{capped} fires once C{cap} bytes have gone out: the server has read far more than it should.
    """

    def __init__(self, port: int, request: Any, cap: int) -> None:
        self.sock = socket.socket()
        # small buffers on the client side make the server's socket buffers fill sooner
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.request = request
        self.sent = 0  # whole requests taken by the socket
        self.sent_bytes = 0
        self.batch = 50
        self.cap = cap
        self.capped: Deferred[None] = Deferred()
        self._pending = b""  # the rest of a batch the socket has not taken yet

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "flood"

    def doWrite(self) -> None:
        self.fill()

    def fill(self) -> bool:
        """Send until the socket takes no more; true when it took nothing at all."""
        took = False
        while self.sent_bytes < self.cap:
            if not self._pending:
                self._pending = b"".join(self.request(self.sent + i) for i in range(self.batch))
            try:
                n = self.sock.send(self._pending)
            except BlockingIOError:
                return not took
            took = True
            self.sent_bytes += n
            self._pending = self._pending[n:]
            if not self._pending:
                self.sent += self.batch
        if not self.capped.called:
            self.capped.callback(None)
        return True

    def connectionLost(self, reason: Any) -> None:
        pass


def unsent(transport: Any) -> int:
    """Bytes a Twisted TCP transport holds that the kernel has not taken (its private buffers)."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class PipeliningTests(TestCase):
    """A client that pipelines requests and never reads its responses is not read either."""

    async def test_a_client_that_does_not_read_is_not_read_and_then_gets_every_response_in_order(self) -> None:
        limit = 8 * 1024
        tree = await start_tree(self, load(self, http_config("sqlite:///p.sqlite3", f"max_pending_output = {limit}")))
        port = port_of(tree, "http")
        site = tree.listeners["http"].factory  # type: ignore[attr-defined]

        # the server's own pause hook fires this
        held: Deferred[LimitedHTTPChannel] = Deferred()
        original = LimitedHTTPChannel._hold

        def hold(channel: LimitedHTTPChannel) -> None:
            original(channel)
            if not held.called:
                # the test goes on in the next reactor turn, not inside the server's parser
                reactor.callLater(0, held.callback, channel)  # type: ignore[attr-defined]

        self.patch(LimitedHTTPChannel, "_hold", hold)
        # a small send buffer, as on a busy link: Linux's autotuning would otherwise let the kernel take
        # the responses of a whole turn, and the drain would resume the channel (and count a second pause)
        opened = site.connection_opened

        def small_send_buffer(proto: Any) -> None:
            opened(proto)
            proto.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)

        self.patch(site, "connection_opened", small_send_buffer)

        def request(i: int) -> bytes:
            return b"GET /%s HTTP/1.1\r\nHost: x\r\n\r\n" % (b"nope" if i % 10 == 9 else b"healthz")

        flood = Flood(port, request, cap=4 * 1024 * 1024)
        self.addCleanup(flood.sock.close)
        reactor.addWriter(flood)  # type: ignore[attr-defined]
        self.addCleanup(reactor.removeWriter, flood)  # type: ignore[attr-defined]
        first, channel = await race([held, flood.capped])
        reactor.removeWriter(flood)  # type: ignore[attr-defined]
        if first == 1:
            read = sample(tree, "myservices_received_bytes_total", service="http")
            self.fail(f"the server read {read:.0f} bytes of requests from a client that reads nothing")

        # the server reads nothing more: the client's socket soon takes nothing either
        read_at_hold = sample(tree, "myservices_received_bytes_total", service="http")
        while not flood.fill():
            pass
        self.assertNotIn(channel.transport, reactor.getReaders())  # type: ignore[attr-defined]
        self.assertEqual(sample(tree, "myservices_received_bytes_total", service="http"), read_at_hold)
        self.assertLess(read_at_hold, flood.sent_bytes)
        handled = sum(sample(tree, "myservices_http_requests_total", service="http", status=s) for s in ("200", "404"))
        self.assertLess(handled, flood.sent)
        # what waits for the client: the transport's own buffer (its producer is paused past 64 KiB), plus
        # at most the limit and the one response that passed it
        self.assertLessEqual(channel.pending_output, limit + 300)
        self.assertLessEqual(unsent(channel.transport), channel.transport.bufferSize + limit + 300)
        self.assertEqual(sample(tree, "myservices_backpressure_pauses_total", service="http"), 1)

        # the client finishes its last request, asks to close after the next one, and reads
        client = Collector()
        reactor.adoptStreamConnection(  # type: ignore[attr-defined]
            flood.sock.fileno(), socket.AF_INET, Factory.forProtocol(lambda: client)
        )
        flood.sock.close()  # the reactor has its own copy of the descriptor
        disconnect_at_cleanup(self, client)
        total = flood.sent + (flood.batch if flood._pending else 0)
        client.transport.write(flood._pending + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await client.closed
        responses = parse_responses(client.data)
        self.assertEqual(len(responses), total + 1)
        expected = [404 if i % 10 == 9 else 200 for i in range(total)] + [200]
        self.assertEqual([status for status, _, _ in responses], expected)
        self.assertEqual(site.connections, set())


class HalfCloseTests(TestCase):
    """A client that shuts down its sending side (nc -q, socat) still gets every answer."""

    async def start(self) -> ServiceTree:
        return await start_tree(self, load(self, http_config("sqlite:///h.sqlite3")))

    async def test_a_request_then_half_close_is_answered_then_closed(self) -> None:
        tree = await self.start()
        client = await connect(self, port_of(tree, "http"))
        client.transport.write(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
        client.transport.loseWriteConnection()
        await client.closed
        responses = parse_responses(client.data)
        self.assertEqual(len(responses), 1, client.data)
        self.assertEqual(responses[0][0], 200)
        self.assertEqual(number(responses[0][2]), 1)

    async def test_pipelined_requests_then_half_close_are_all_answered_in_order(self) -> None:
        tree = await self.start()
        client = await connect(self, port_of(tree, "http"))
        client.transport.write(
            b"GET / HTTP/1.1\r\n" + HOST + b"\r\n"
            + b"GET /healthz HTTP/1.1\r\n" + HOST + b"\r\n"
            + b"GET / HTTP/1.1\r\n" + HOST + b"\r\n"
            + b"GET /heal"  # cut short by the half-close: it can never be answered
        )
        client.transport.loseWriteConnection()
        await client.closed
        responses = parse_responses(client.data)
        self.assertEqual([status for status, _, _ in responses], [200, 200, 200], client.data)
        self.assertEqual(number(responses[0][2]), 1)
        self.assertEqual(json.loads(responses[1][2]), {"status": "ok"})
        self.assertEqual(number(responses[2][2]), 2)
        self.assertEqual(tree.listeners["http"].factory.connections, set())  # type: ignore[attr-defined]

    async def test_half_close_while_idle_closes_at_once(self) -> None:
        tree = await self.start()
        client = await connect(self, port_of(tree, "http"))
        client.transport.write(b"GET /healthz HTTP/1.1\r\n" + HOST + b"\r\n")
        await client.receive(1)
        client.transport.loseWriteConnection()
        await client.closed
        self.assertEqual([s for s, _, _ in parse_responses(client.data)], [200])


class ErrorShapeTests(TestCase):
    """Errors say what the client needs, in the shared JSON shape, and nothing of the server's insides."""

    async def start(self, http: str = "") -> ServiceTree:
        return await start_tree(self, load(self, http_config("sqlite:///e.sqlite3", http)))

    def assertJsonError(self, response: tuple[int, dict[bytes, bytes], bytes], status: int, code: str) -> None:
        got, headers, body = response
        self.assertEqual(got, status, body)
        self.assertEqual(headers[b"Content-Type"], b"application/json")
        error = json.loads(body)["error"]
        self.assertEqual(error["code"], code)
        self.assertEqual(set(error), {"code", "message", "retry"})

    async def test_readyz_says_database_unavailable_and_logs_the_detail_without_the_password(self) -> None:
        watch = LogWatch(self)
        closed = free_port()  # nothing listens here: the driver's error names host and port
        config = load(self, http_config(f"mysql://app:s3cret-pw@127.0.0.1:{closed}/app", "ready_timeout = 5"))
        tree = build_service_tree(config, reactor)
        tree.privilegedStartService()
        tree.startService()
        self.addCleanup(tree.stopService)
        await tree.when_listening()
        status, _, body = await exchange(self, port_of(tree, "http"), b"GET /readyz HTTP/1.1\r\n" + HOST + b"\r\n")
        self.assertEqual(status, 503)
        report = json.loads(body)
        # only HTTP here: no front end of the hub, so no hub lease to wait for
        self.assertEqual((report["failed"], report["checks"]["database"]), (["database"], "database unavailable"))
        for leak in (b"127.0.0.1", str(closed).encode(), b"2003", b"MySQL", b"refused"):
            self.assertNotIn(leak, body)
        logged = [e for e in watch.events if e.get("log_namespace") == "myservices.health"]
        self.assertEqual(len(logged), 1)
        self.assertIn("127.0.0.1", logged[0]["error"])  # the operator sees why
        self.assertIn("Connection refused", logged[0]["error"])
        self.assertFalse([e for e in watch.events if "s3cret-pw" in repr(e)])
        self.flushLoggedErrors()  # the database service logs its failed migration as an error

    async def test_405_and_501_are_json_with_allow(self) -> None:
        tree = await self.start()
        port = port_of(tree, "http")
        response = await exchange(self, port, b"POST /healthz HTTP/1.1\r\n" + HOST + b"Content-Length: 0\r\n\r\n")
        self.assertJsonError(response, 405, "BAD_REQUEST")
        self.assertEqual(set(response[1][b"Allow"].split(b", ")), {b"GET", b"HEAD"})
        response = await exchange(self, port, b"DELETE /api/counter HTTP/1.1\r\n" + HOST + b"\r\n")
        self.assertJsonError(response, 405, "BAD_REQUEST")
        response = await exchange(self, port, b"GET * HTTP/1.1\r\n" + HOST + b"\r\n")
        self.assertJsonError(response, 405, "BAD_REQUEST")
        self.assertEqual(response[1][b"Allow"], b"OPTIONS")
        response = await exchange(self, port, b"BREW / HTTP/1.1\r\n" + HOST + b"\r\n")
        self.assertJsonError(response, 501, "BAD_REQUEST")
        self.assertNotIn(b"Allow", response[1])
        # HEAD still works wherever GET does
        head = await raw_http(self, port, b"HEAD /healthz HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertEqual(sample(tree, "myservices_errors_total", service="http", code="BAD_REQUEST"), 4)

    async def test_header_limits_answer_431_in_json(self) -> None:
        tree = await self.start('max_header_size = "1 KiB"\nmax_headers = 10')
        port = port_of(tree, "http")
        one_long_line = b"GET /healthz HTTP/1.1\r\n" + HOST + b"X-Long: " + b"a" * 2000 + b"\r\n\r\n"
        many = b"GET /healthz HTTP/1.1\r\n" + HOST + b"".join(b"X-%d: v\r\n" % i for i in range(11)) + b"\r\n"
        large = b"GET /healthz HTTP/1.1\r\n" + HOST + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 200) for i in range(6))
        for request in (one_long_line, many, large + b"\r\n"):
            reply = await raw_http(self, port, request)  # answered, then closed
            response = parse_responses(reply)[0]
            self.assertJsonError(response, 431, "TOO_LARGE")
            self.assertEqual(response[1][b"Connection"], b"close")

    async def test_http_1_1_needs_one_host_header_and_1_0_does_not(self) -> None:
        tree = await self.start()
        port = port_of(tree, "http")
        reply = await raw_http(self, port, b"GET /healthz HTTP/1.1\r\n\r\n")
        self.assertJsonError(parse_responses(reply)[0], 400, "BAD_REQUEST")
        self.assertIn(b"Host", parse_responses(reply)[0][2])
        reply = await raw_http(self, port, b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        self.assertJsonError(parse_responses(reply)[0], 400, "BAD_REQUEST")
        reply = await raw_http(self, port, b"GET /healthz HTTP/1.0\r\n\r\n")
        self.assertEqual(parse_responses(reply)[0][0], 200)


# what an attacker sent; each must get a 4xx in the JSON shape, and not one traceback
BAD_REQUESTS = [
    b"POST /healthz?\x80 HTTP/1.1\r\n" + HOST + b"\r\n",  # non-ASCII target that twisted.web lets through
    b"GET /\x90\xa0 HTTP/1.1\r\n" + HOST + b"\r\n",
    b"GET /?q=\xff\xfe HTTP/1.1\r\n" + HOST + b"\r\n",
    b"GET /api/counter?\x7f HTTP/1.1\r\n" + HOST + b"\r\n",
    b"GET /%zz%ff%00 HTTP/1.1\r\n" + HOST + b"\r\n",
    b"GET /healthz/%ff HTTP/1.1\r\n" + HOST + b"X-\x80: v\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\n" + HOST + b"\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 99999999999999999999999999999\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcdeXY",
    b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip, chunked\r\n\r\n",
    b"G(T / HTTP/1.1\r\n" + HOST + b"\r\n",
    b"GET  / HTTP/1.1\r\n" + HOST + b"\r\n",
    b"GET / HTTP/2.0\r\n" + HOST + b"\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",  # TLS to the plain port
    b"GET /ws/chat%0d%0aX:%20y HTTP/1.1\r\n" + HOST + b"\r\n",
    b"PUT /chat/?\xa0 HTTP/1.1\r\n" + HOST + b"\r\n",
]


class BadInputTests(TestCase):
    """Bad input is the client's error: a 4xx in the shared JSON shape, counted, never a logged server bug."""

    async def test_every_bad_request_gets_a_json_4xx_and_logs_no_bug(self) -> None:
        watch = LogWatch(self)
        config = load(self, http_config("sqlite:///b.sqlite3", "websocket = true") + """
[services.websocket]
endpoint = "tcp:0:interface=127.0.0.1"
""")
        tree = await start_tree(self, config)
        port = port_of(tree, "http")
        counted = 0
        for request in BAD_REQUESTS:
            status, headers, body = await exchange(self, port, request)
            self.assertTrue(400 <= status < 500, f"{request[:50]!r} got {status}: {body!r}")
            self.assertEqual(headers[b"Content-Type"], b"application/json", request)
            code = json.loads(body)["error"]["code"]
            self.assertIn(code, ("BAD_REQUEST", "TOO_LARGE", "NOT_FOUND"), request)
            counted += 1
        self.assertEqual(watch.bugs, [])
        errors = sum(
            sample(tree, "myservices_errors_total", service="http", code=c) for c in ("BAD_REQUEST", "TOO_LARGE", "NOT_FOUND")
        )
        self.assertEqual(errors, counted)


class Slow(Resource):
    """Answers each GET when the test says so."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Any] = []

    def render_GET(self, request: Any) -> int:
        self.waiting.append(request)
        return NOT_DONE_YET


def memory_channel(resource: Any, **limits: Any) -> tuple[StringTransport, Any, Clock]:
    """A channel of a real HttpSite on an in-memory transport and a fake clock."""
    values = {"max_body_size": 100, "max_header_size": 512, "max_headers": 5, "request_timeout": 10.0}
    values.update(limits)
    clock = Clock()
    site = HttpSite(
        "http", resource, limits=HttpLimits(**values), max_connections=10, idle_timeout=60, access_log=False,
        metrics=Metrics(), clock=clock,
    )
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    channel.makeConnection(transport)
    return transport, channel, clock


class FlowTests(TestCase):
    """The flow limits step by step, on an in-memory transport."""

    def test_reading_pauses_past_the_read_ahead_and_resumes_when_the_answer_is_sent(self) -> None:
        slow = Slow()
        transport, channel, _ = memory_channel(slow, max_read_ahead=1000)
        one = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        channel.dataReceived(one)
        self.assertEqual(len(slow.waiting), 1)
        # the transport says its buffer is full (the client reads nothing): twisted.web stops
        # bounding the read-ahead exactly then
        channel.pauseProducing()
        for _ in range(1000 // len(one)):
            channel.dataReceived(one)
        self.assertEqual(transport.producerState, "producing")
        channel.dataReceived(one)  # past the read-ahead
        self.assertEqual(transport.producerState, "paused")
        slow.waiting.pop().finish()  # the next request starts; what was read ahead is parsed
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 1)
        self.assertEqual(len(slow.waiting), 1)

    def test_held_requests_are_answered_in_order_once_the_client_reads(self) -> None:
        slow = Slow()
        transport, channel, clock = memory_channel(slow, max_pending_output=0)
        request = b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n"
        channel.dataReceived(b"".join(request % i for i in range(3)))
        self.assertEqual(len(slow.waiting), 1)
        channel.pauseProducing()  # the client stopped reading
        slow.waiting.pop().finish()
        # its answer went out; the next waits, and so does reading
        self.assertEqual(transport.value().count(b"200 OK"), 1)
        self.assertEqual(slow.waiting, [])
        self.assertEqual(transport.producerState, "paused")
        channel.dataReceived(request % 3)  # read before the pause took effect: queued behind the others
        channel.resumeProducing()  # the transport has sent everything
        self.assertEqual([r.uri for r in slow.waiting], [b"/1"])
        self.assertEqual(transport.producerState, "producing")
        for uri in (b"/2", b"/3"):
            slow.waiting.pop().finish()
            self.assertEqual([r.uri for r in slow.waiting], [uri])
        slow.waiting.pop().finish()
        self.assertEqual(transport.value().count(b"200 OK"), 4)

    def test_one_idle_timer_is_moved_around_requests_and_never_ends_one_being_answered(self) -> None:
        slow = Slow()
        transport, channel, clock = memory_channel(slow, request_timeout=0)
        timers = set(clock.getDelayedCalls())
        self.assertEqual(len(timers), 1)  # the idle timer
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        clock.advance(61)  # a slow answer outlives the idle timeout: it is not idle
        self.assertFalse(transport.disconnecting)
        slow.waiting.pop().finish()
        clock.advance(59)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        slow.waiting.pop().finish()
        self.assertEqual(transport.value().count(b"200 OK"), 2)
        self.assertLessEqual(len(clock.getDelayedCalls()), 1)  # moved, not one per request
        clock.advance(59)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)  # idle for idle_timeout after the last answer
        self.assertTrue(transport.disconnecting)

    def test_a_client_that_never_reads_is_closed_by_the_idle_timeout(self) -> None:
        slow = Slow()
        transport, channel, clock = memory_channel(slow, max_pending_output=0)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        channel.pauseProducing()
        slow.waiting.pop().finish()
        self.assertEqual(transport.producerState, "paused")
        clock.advance(59)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertNotIn(b"408", transport.value())
        clock.advance(15)  # its unread answers would hold the close up: the close is aborted
        self.assertTrue(transport.disconnected)  # aborted
        channel.connectionLost(Failure(ConnectionAborted()))  # what the aborted transport reports
        self.assertEqual(clock.getDelayedCalls(), [])
