"""The HTTP service under hostile clients: bad input, error shapes.

Each test does what an attacker did, over a real socket on loopback, against the real service tree.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from myservices.tree import ServiceTree, build_service_tree
from tests.support import connect, free_port, load, port_of, raw_http, start_tree
from tests.test_http import http_config, sample

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

