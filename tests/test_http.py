"""The HTTP service: the durable counter, health, readiness, metrics and limits, on SQLite and MariaDB."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from myservices.metrics import Metrics
from myservices.tree import ServiceTree
from myservices.web.channel import HttpLimits
from myservices.web.site import HttpSite
from tests import mysql
from tests.proxy import CuttableProxy
from tests.support import HttpClient, connect, load, port_of, raw_http, start_tree


def http_config(url: str, http: str = "", database: str = "") -> str:
    return f"""
[daemon]
shutdown_timeout = 2
[database]
url = "{url}"
{database}
[services.http]
# 500 clients connect at once: the default backlog of 50 would drop SYNs and cost seconds of retransmits
endpoint = "tcp:0:interface=127.0.0.1:backlog=1024"
{http}
"""


def number(body: bytes) -> int:
    text = body.decode()
    assert text.startswith("I am request #") and text.endswith("\n"), text
    return int(text[len("I am request #"):])


def sample(tree: ServiceTree, name: str, **labels: str) -> float:
    return tree.metrics.registry.get_sample_value(name, labels) or 0.0


class CounterTestsMixin:
    """The counter's guarantees, on both databases."""

    def database_url(self) -> str:
        raise NotImplementedError

    async def start(self, http: str = "", url: str | None = None, database: str = "") -> ServiceTree:
        self.url = url or getattr(self, "url", None) or self.database_url()
        return await start_tree(self, load(self, http_config(self.url, http, database)))

    async def test_500_concurrent_requests_get_distinct_numbers_in_few_transactions(self) -> None:
        tree = await self.start()
        client = HttpClient(self, port_of(tree, "http"))
        responses = await gatherResults([client.get("/") for _ in range(500)])
        self.assertEqual({r.code for r in responses}, {200})
        self.assertEqual({r.header("content-type") for r in responses}, {"text/plain; charset=utf-8"})
        numbers = sorted(number(r.body) for r in responses)
        self.assertEqual(numbers, list(range(1, 501)))
        transactions = sample(tree, "myservices_db_query_seconds_count", operation="increment")
        self.assertLess(transactions, 250, "requests in flight together must share a transaction")
        self.assertEqual((await client.get("/api/counter")).json(), {"name": "http_requests", "value": 500})

    async def test_numbers_increase_and_continue_after_a_restart(self) -> None:
        tree = await self.start()
        client = HttpClient(self, port_of(tree, "http"))
        seen = [number((await client.get("/")).body) for _ in range(3)]
        self.assertEqual(seen, [1, 2, 3])
        await tree.stopService()

        tree = await self.start()
        client = HttpClient(self, port_of(tree, "http"))
        self.assertEqual((await client.get("/api/counter")).json()["value"], 3)
        self.assertEqual(number((await client.get("/")).body), 4)

    async def test_head_does_not_take_a_number(self) -> None:
        tree = await self.start()
        client = HttpClient(self, port_of(tree, "http"))
        self.assertEqual((await client.request("/", method=b"HEAD")).code, 200)
        response = await client.get("/")
        self.assertEqual(number(response.body), 1)
        # one write with its length: chunked framing would cost every request
        self.assertEqual(response.length, len(response.body))


class SQLiteCounterTests(CounterTestsMixin, TestCase):
    def database_url(self) -> str:
        # absolute: each config file is written to its own directory
        return f"sqlite:///{os.path.abspath(self.mktemp())}.sqlite3"


@pytest.mark.mysql
class MySQLCounterTests(CounterTestsMixin, TestCase):
    def database_url(self) -> str:
        return mysql.create_database(self)

    async def test_two_daemons_sharing_one_database_hand_out_disjoint_numbers(self) -> None:
        # small blocks: the two daemons reserve many, interleaved
        first = await self.start(database="counter_block = 7")
        second = await self.start(database="counter_block = 7")
        a = HttpClient(self, port_of(first, "http"))
        b = HttpClient(self, port_of(second, "http"))
        responses = await gatherResults([c.get("/") for _ in range(150) for c in (a, b)])
        numbers = [number(r.body) for r in responses]
        self.assertEqual(len(set(numbers)), 300)
        # each daemon's blocks lie above the other's earlier ones: nothing is far beyond what was taken
        self.assertLessEqual(max(numbers), 300 + 2 * 7)

    async def test_two_daemons_with_blocks_of_one_number_hand_out_one_sequence(self) -> None:
        first = await self.start(database="counter_block = 1")
        second = await self.start(database="counter_block = 1")
        a = HttpClient(self, port_of(first, "http"))
        b = HttpClient(self, port_of(second, "http"))
        responses = await gatherResults([c.get("/") for _ in range(50) for c in (a, b)])
        self.assertEqual(sorted(number(r.body) for r in responses), list(range(1, 101)))
        # strictly ordered across daemons: a request sent after another's answer gets a greater number
        seen = [number((await c.get("/")).body) for _ in range(5) for c in (a, b)]
        self.assertEqual(seen, list(range(101, 111)))

    async def test_database_outage_gives_503_and_not_ready_then_recovers(self) -> None:
        server = mysql.server()
        url = mysql.create_database(self)
        proxy = CuttableProxy(server.host, server.port)
        proxy_port = await proxy.start(self)
        proxied = url.replace(f"@{server.host}:{server.port}/", f"@127.0.0.1:{proxy_port}/")
        tree = await self.start(
            url=proxied, http="retry_after = 7\nready_timeout = 5", database="connect_timeout = 2\ncounter_block = 5"
        )
        client = HttpClient(self, port_of(tree, "http"))
        self.assertEqual(number((await client.get("/")).body), 1)
        self.assertEqual((await client.get("/readyz")).code, 200)

        await proxy.cut()
        # the rest of the block reserved (committed) before the outage is still handed out ...
        self.assertEqual([number((await client.get("/")).body) for _ in range(4)], [2, 3, 4, 5])
        # ... then a request that needs a new block gets the error
        down = await client.get("/")
        self.assertEqual((down.code, down.header("retry-after")), (503, "7"))
        self.assertEqual(down.json()["error"]["code"], "DATABASE_UNAVAILABLE")
        self.assertTrue(down.json()["error"]["retry"])
        self.assertEqual((await client.get("/api/counter")).code, 503)
        ready = await client.get("/readyz")
        self.assertEqual(ready.code, 503)
        self.assertEqual(ready.json()["failed"], ["database"])
        self.assertEqual(ready.json()["checks"]["listeners"], "ok")

        proxy.restore()
        self.assertEqual((await client.get("/readyz")).code, 200)
        self.assertGreater(number((await client.get("/")).body), 5)  # none handed out again


class HttpServiceTests(TestCase):
    """The other routes and the limits, over loopback against the real service tree."""

    async def start(self, http: str = "") -> ServiceTree:
        return await start_tree(self, load(self, http_config("sqlite:///http.sqlite3", http)))

    async def test_health_readiness_and_unknown_paths(self) -> None:
        tree = await self.start()
        client = HttpClient(self, port_of(tree, "http"))
        health = await client.get("/healthz")
        self.assertEqual((health.code, health.json()), (200, {"status": "ok"}))
        ready = await client.get("/readyz")
        self.assertEqual(ready.code, 200)
        self.assertEqual(
            ready.json(),
            {"status": "ready", "checks": {"running": "ok", "listeners": "ok", "database": "ok", "hub": "ok"}},
        )
        missing = await client.get("/no/such/page")
        self.assertEqual((missing.code, missing.json()["error"]["code"]), (404, "NOT_FOUND"))
        self.assertEqual((await client.request("/", method=b"POST")).code, 405)

    async def test_metrics_parse_and_move(self) -> None:
        tree = await self.start()
        client = HttpClient(self, port_of(tree, "http"))

        async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            response = await client.get("/metrics")
            self.assertEqual(response.code, 200)
            self.assertTrue(response.header("content-type").startswith("text/plain; version=0.0.4"))
            return {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(response.body.decode())
                for s in family.samples
            }

        for _ in range(3):
            await client.get("/")
        before = await scrape()
        ok = ("myservices_http_requests_total", (("service", "http"), ("status", "200")))
        self.assertGreaterEqual(before[ok], 3)
        for name in (
            "myservices_connections_open", "myservices_db_query_seconds_count", "myservices_db_ready",
            "myservices_hub_rooms", "myservices_hub_members", "myservices_reactor_lag_seconds_count",
            "process_resident_memory_bytes", "myservices_db_pool_max_connections",
        ):
            self.assertTrue(any(key[0] == name for key in before), f"{name} is not exported")
        self.assertEqual(before[("myservices_connections_open", (("service", "http"),))], 1)
        self.assertEqual(before[("myservices_db_ready", ())], 1)

        await client.get("/")
        await client.get("/no/such/page")
        after = await scrape()
        self.assertEqual(after[ok], before[ok] + 2)  # the first scrape and one counter request
        self.assertEqual(after[("myservices_http_requests_total", (("service", "http"), ("status", "404")))], 1)
        increments = ("myservices_db_query_seconds_count", (("operation", "increment"),))
        self.assertEqual(before[increments], 1)  # the first request reserved a block ...
        self.assertEqual(after[increments], 1)  # ... which served the later ones without a transaction

    async def test_oversize_body_gets_413_before_it_is_sent(self) -> None:
        tree = await self.start('max_body_size = "1 KiB"')
        port = port_of(tree, "http")
        reply = await raw_http(
            self, port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n\r\n"
        )
        head, body = reply.split(b"\r\n\r\n", 1)
        self.assertTrue(head.startswith(b"HTTP/1.1 413 "), reply)
        self.assertNotIn(b"100 Continue", head)
        self.assertEqual(json.loads(body)["error"]["code"], "TOO_LARGE")
        # the service is unharmed
        client = HttpClient(self, port)
        self.assertEqual((await client.get("/")).code, 200)
        self.assertEqual(sample(tree, "myservices_http_requests_total", service="http", status="413"), 1)

    async def test_too_many_headers_get_431(self) -> None:
        tree = await self.start("max_headers = 5")
        headers = b"".join(b"X-H%d: v\r\n" % i for i in range(6))
        reply = await raw_http(self, port_of(tree, "http"), b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 431 "), reply)

    async def test_connections_over_the_limit_get_503(self) -> None:
        tree = await self.start("max_connections = 2")
        port = port_of(tree, "http")
        first, second = await connect(self, port), await connect(self, port)
        reply = await raw_http(self, port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 503 "), reply)
        self.assertIn(b"Retry-After: 1", reply)
        self.assertTrue(first.transport.connected and second.transport.connected)

    async def test_access_log_is_off_by_default_and_structured_when_on(self) -> None:
        events: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "myservices.web.access":
                events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        quiet = await self.start()
        await HttpClient(self, port_of(quiet, "http")).get("/healthz")
        self.assertEqual(events, [])

        logged = await self.start("access_log = true")
        await HttpClient(self, port_of(logged, "http")).get("/healthz")
        self.assertEqual(len(events), 1)
        event = events[0]
        self.assertEqual((event["method"], event["uri"], event["status"]), ("GET", "/healthz", 200))
        self.assertEqual(event["peer"], "127.0.0.1")
        self.assertGreater(event["size"], 0)


class Echo(Resource):
    """Answers with the size of the body it got."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"ok"

    def render_POST(self, request: Any) -> bytes:
        return b"%d" % len(request.content.read())


class ChannelLimitTests(TestCase):
    """The limits, byte by byte, on an in-memory transport with a fake clock."""

    def connect(self, **limits: Any) -> tuple[StringTransport, Any, Clock, HttpSite]:
        clock = Clock()
        values = {"max_body_size": 100, "max_header_size": 512, "max_headers": 5, "request_timeout": 10.0}
        values.update(limits)
        site = HttpSite(
            "http", Echo(), limits=HttpLimits(**values), max_connections=10, idle_timeout=60,
            access_log=False, metrics=Metrics(), clock=clock,
        )
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        channel.makeConnection(transport)
        return transport, channel, clock, site

    def status(self, transport: StringTransport) -> bytes:
        return transport.value().split(b"\r\n", 1)[0]

    def test_a_request_within_the_limits_is_served(self) -> None:
        transport, channel, _, _ = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"a" * 100)
        self.assertEqual(self.status(transport), b"HTTP/1.1 200 OK")
        self.assertTrue(transport.value().endswith(b"\r\n\r\n100"))
        self.assertFalse(transport.disconnecting)

    def test_declared_length_over_the_limit(self) -> None:
        transport, channel, _, site = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n")
        self.assertEqual(self.status(transport), b"HTTP/1.1 413 Content Too Large")
        self.assertTrue(transport.disconnecting)
        before = transport.value()
        channel.dataReceived(b"a" * 101 + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(transport.value(), before, "nothing after a rejection is processed")

    def test_chunked_body_over_the_limit(self) -> None:
        transport, channel, _, _ = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        channel.dataReceived(b"40\r\n" + b"a" * 64 + b"\r\n")
        self.assertEqual(transport.value(), b"")
        channel.dataReceived(b"40\r\n" + b"a" * 64 + b"\r\n0\r\n\r\n")
        self.assertEqual(self.status(transport), b"HTTP/1.1 413 Content Too Large")
        self.assertEqual(transport.value().count(b"HTTP/1.1"), 1)

    def test_headers_too_large_or_too_many(self) -> None:
        transport, channel, _, _ = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"v" * 300 + b"\r\nX-Big2: " + b"v" * 300 + b"\r\n")
        self.assertEqual(self.status(transport), b"HTTP/1.1 431 Request Header Fields Too Large")

        transport, channel, _, _ = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(6)) + b"\r\n")
        self.assertEqual(self.status(transport), b"HTTP/1.1 431 Request Header Fields Too Large")

        transport, channel, _, _ = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(4)) + b"\r\n")
        self.assertEqual(self.status(transport), b"HTTP/1.1 200 OK")

    def test_a_malformed_request_gets_400_with_a_json_error(self) -> None:
        transport, channel, _, _ = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
        self.assertEqual(self.status(transport), b"HTTP/1.1 400 Bad Request")
        self.assertEqual(json.loads(transport.value().split(b"\r\n\r\n")[1])["error"]["code"], "BAD_REQUEST")
        self.assertTrue(transport.disconnecting)

    def test_request_line_too_long_gets_414(self) -> None:
        transport, channel, _, _ = self.connect()
        channel.dataReceived(b"GET /" + b"a" * 600)
        self.assertEqual(self.status(transport), b"HTTP/1.1 414 URI Too Long")

    def test_a_request_trickling_in_gets_408(self) -> None:
        transport, channel, clock, site = self.connect()
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\n":
            channel.dataReceived(bytes([byte]))
            clock.advance(0.3)  # each byte resets the idle timeout; the request timeout still runs
        self.assertEqual(transport.value(), b"")
        clock.advance(10)
        self.assertEqual(self.status(transport), b"HTTP/1.1 408 Request Timeout")
        self.assertEqual(json.loads(transport.value().split(b"\r\n\r\n")[1])["error"]["code"], "TIMEOUT")
        self.assertTrue(transport.disconnecting)

    def test_an_idle_keep_alive_connection_is_not_timed_out_as_a_request(self) -> None:
        transport, channel, clock, _ = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(self.status(transport), b"HTTP/1.1 200 OK")
        clock.advance(30)
        self.assertNotIn(b"408", transport.value())
        self.assertFalse(transport.disconnecting)
        clock.advance(31)  # the idle timeout closes it, silently
        self.assertTrue(transport.disconnecting)
        self.assertNotIn(b"408", transport.value())

    def test_pipelined_requests_are_each_within_their_own_limits(self) -> None:
        transport, channel, _, _ = self.connect(max_headers=2)
        one = b"GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\n\r\n"
        channel.dataReceived(one * 3)
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 3)


class DurableCounterTests(TestCase):
    """The counter on a real SQLite database, without HTTP."""

    async def start(self) -> Any:
        from pathlib import Path

        from twisted.internet import reactor

        from myservices.db.config import DatabaseConfig
        from myservices.counter import DurableCounter
        from myservices.db import Database

        directory = Path(self.mktemp()).resolve()
        db = Database.from_config(DatabaseConfig(url="sqlite:///c.sqlite3"), directory, reactor)
        db.startService()
        self.addCleanup(db.stopService)
        await db.when_ready()
        return db, DurableCounter(db, "tests", reactor)

    async def test_takers_in_one_turn_share_a_transaction_and_a_failing_taker_harms_no_one(self) -> None:
        db, counter = await self.start()
        def broken(n: int) -> None:
            raise RuntimeError("a taker's bug")

        counter.take(broken, lambda f: None)
        deferreds = [counter.next() for _ in range(9)]
        got = await gatherResults(deferreds)
        self.assertEqual(got, list(range(2, 11)))
        self.assertEqual(db.metrics.registry.get_sample_value("myservices_db_query_seconds_count", {"operation": "increment"}), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(await counter.current(), 10)

    async def test_every_taker_of_a_failed_batch_gets_the_error(self) -> None:
        from myservices.db import DatabaseUnavailable

        db, counter = await self.start()
        db.stopService()
        results = await gatherResults([counter.next().addErrback(lambda f: f.value) for _ in range(3)])
        self.assertTrue(all(isinstance(r, DatabaseUnavailable) for r in results), results)
        db.startService()  # the database is back: the counter carries on
        await db.when_ready()
        self.assertEqual(await counter.next(), 1)
