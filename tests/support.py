"""Helpers shared by the tests: configs on disk, running service trees, real clients."""

from __future__ import annotations

import os
import socket
import textwrap
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from myservices.config import Config
from myservices.registry import load_config
from myservices.tree import ServiceTree, build_service_tree

REPO = Path(__file__).resolve().parent.parent


def write_config(testcase: TestCase, text: str, name: str = "myservices.toml") -> Path:
    """Write a TOML config into a fresh temporary directory and return its path."""
    directory = Path(testcase.mktemp())
    directory.mkdir(parents=True)
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def load(testcase: TestCase, text: str, environ: dict[str, str] | None = None) -> Config:
    return load_config(write_config(testcase, text), environ=environ or {})


# cheap hashing keeps the tests fast; the hash format and the checks are the same
FAST_ACCOUNTS = "[accounts]\nscrypt_cost = 10\n"

LOCAL_SERVICES = """
    [services.echo]
    endpoint = "tcp:0:interface=127.0.0.1"

    [services.udp]
    endpoint = "udp:0:interface=127.0.0.1"
"""


async def start_tree(testcase: TestCase, config: Config, **kw: Any) -> ServiceTree:
    """Build and start the real service tree; it is stopped when the test ends."""
    tree = build_service_tree(config, reactor, **kw)
    tree.privilegedStartService()
    tree.startService()
    testcase.addCleanup(tree.stopService)
    await tree.when_listening()
    await tree.database.when_ready()
    lease = tree.namedServices.get("hub-lease")
    if lease is not None:
        await lease.settled()  # the hub's first claim on the database has an answer
    return tree


def port_of(tree: ServiceTree, name: str) -> int:
    return tree.address(name).port


class Collector(Protocol):
    """A client protocol that keeps what it reads and tells when the connection ends."""

    def __init__(self) -> None:
        self.data = b""
        self.closed: Deferred[None] = Deferred()
        self.made: Deferred[Collector] = Deferred()
        self._want: tuple[int, Deferred[bytes]] | None = None

    def connectionMade(self) -> None:
        self.made.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self._check()

    def receive(self, n: int) -> Deferred[bytes]:
        """Fires once at least C{n} bytes in total have been read."""
        d: Deferred[bytes] = Deferred()
        self._want = (n, d)
        self._check()
        return d

    def _check(self) -> None:
        if self._want and len(self.data) >= self._want[0]:
            d = self._want[1]
            self._want = None
            d.callback(self.data)

    def connectionLost(self, reason: Any = None) -> None:
        if self._want:
            d = self._want[1]
            self._want = None
            d.errback(reason)
        self.closed.callback(None)


async def connect(testcase: TestCase, port: int, host: str = "127.0.0.1") -> Collector:
    """A real TCP client on loopback; disconnected when the test ends."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    proto = Collector()
    await connectProtocol(TCP4ClientEndpoint(reactor, host, port), proto)
    disconnect_at_cleanup(testcase, proto)
    return proto


def disconnect_at_cleanup(testcase: TestCase, proto: Collector | LineClient) -> None:
    """Abort C{proto}'s connection when the test ends, and wait until it is gone."""

    async def cleanup() -> None:
        if proto.transport.connected:
            proto.transport.abortConnection()
            await proto.closed

    testcase.addCleanup(lambda: Deferred.fromCoroutine(cleanup()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


class LineClient(Protocol):
    """A chat client: reads CRLF lines; commands wait for their final line (OK, END, ERR)."""

    def __init__(self) -> None:
        self._buffer = b""
        self.unread: list[str] = []
        self.closed: Deferred[None] = Deferred()
        self._waiter: tuple[Any, Deferred[list[str]]] | None = None

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\r\n")
        self.unread.extend(line.decode("utf-8") for line in lines)
        self._check()

    def connectionLost(self, reason: Any = None) -> None:
        if self._waiter:
            d = self._waiter[1]
            self._waiter = None
            d.errback(reason)
        self.closed.callback(None)

    def _check(self) -> None:
        if not self._waiter:
            return
        pred, d = self._waiter
        for i, line in enumerate(self.unread):
            if pred(line):
                taken, self.unread = self.unread[: i + 1], self.unread[i + 1 :]
                self._waiter = None
                d.callback(taken)
                return

    def read_until(self, pred: Any) -> Deferred[list[str]]:
        """Lines up to and including the first one for which C{pred} is true."""
        if isinstance(pred, str):
            prefix = pred
            pred = lambda line: line.startswith(prefix)  # noqa: E731
        d: Deferred[list[str]] = Deferred()
        self._waiter = (pred, d)
        self._check()
        return d

    def send(self, line: str | bytes) -> None:
        data = line if isinstance(line, bytes) else line.encode("utf-8") + b"\r\n"
        self.transport.write(data)

    async def command(self, line: str) -> list[str]:
        """Send a command; return every line up to its final OK/END/ERR line."""
        self.send(line)
        return await self.read_until(lambda l: l.split(" ", 1)[0] in ("OK", "END", "ERR", "BYE"))


async def chat_client(testcase: TestCase, port: int, nick: str | None = None) -> LineClient:
    """A connected chat client that has read its WELCOME (and taken C{nick})."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    client = LineClient()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    disconnect_at_cleanup(testcase, client)
    await client.read_until("WELCOME")
    if nick:
        lines = await client.command(f"/nick {nick}")
        assert lines[-1] == f"OK nick {nick}", lines
    return client


class HttpResponse:
    """What a test needs of an HTTP response."""

    def __init__(self, code: int, headers: Any, body: bytes, length: Any = None) -> None:
        self.code = code
        self.headers = headers
        self.body = body
        self.length = length  # the Content-Length (Agent takes it out of the headers), or UNKNOWN_LENGTH

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def json(self) -> Any:
        import json

        return json.loads(self.body)


class HttpClient:
    """twisted.web's Agent over a connection pool that is closed (and waited for) when the test ends."""

    def __init__(self, testcase: TestCase, port: int) -> None:
        from twisted.web.client import Agent, HTTPConnectionPool

        self.base = f"http://127.0.0.1:{port}"
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 1000  # every connection goes back to the pool, so cleanup sees it
        self.pool.retryAutomatically = False
        self.agent = Agent(reactor, pool=self.pool)
        testcase.addCleanup(self.pool.closeCachedConnections)

    def request(
        self, path: str, method: bytes = b"GET", headers: dict[bytes, list[bytes]] | None = None
    ) -> Deferred[HttpResponse]:
        return Deferred.fromCoroutine(self._request(path, method, headers))

    async def _request(self, path: str, method: bytes, headers: dict[bytes, list[bytes]] | None) -> HttpResponse:
        from twisted.web.client import readBody
        from twisted.web.http_headers import Headers

        response = await self.agent.request(method, (self.base + path).encode(), Headers(headers or {}))
        body = await readBody(response) if method != b"HEAD" else b""
        return HttpResponse(response.code, response.headers, body, response.length)

    def get(self, path: str) -> Deferred[HttpResponse]:
        return self.request(path)


async def raw_http(testcase: TestCase, port: int, data: bytes) -> bytes:
    """Send C{data} on a new connection and return all the server wrote until it closed."""
    client = await connect(testcase, port)
    client.transport.write(data)
    await client.closed
    return client.data


class Pushes:
    """Collects a framed client's pushes; C{next(name)} waits for the next unread one of that name."""

    def __init__(self) -> None:
        self.unread: list[tuple[str, dict[str, Any]]] = []
        self._waiter: tuple[str, Deferred[dict[str, Any]]] | None = None

    def __call__(self, name: str, data: dict[str, Any]) -> None:
        self.unread.append((name, data))
        self._check()

    def next(self, name: str) -> Deferred[dict[str, Any]]:
        d: Deferred[dict[str, Any]] = Deferred()
        self._waiter = (name, d)
        self._check()
        return d

    def names(self) -> list[str]:
        return [name for name, _ in self.unread]

    def _check(self) -> None:
        if not self._waiter:
            return
        want, d = self._waiter
        for i, (name, data) in enumerate(self.unread):
            if name == want:
                del self.unread[i]
                self._waiter = None
                d.callback(data)
                return


async def framed_client(testcase: TestCase, port: int) -> Any:
    """A connected L{FramedClient} whose pushes go to C{client.pushes}; closed when the test ends."""
    from myservices.framed.client import connect as framed_connect

    pushes = Pushes()
    client = await framed_connect(reactor, f"tcp:127.0.0.1:{port}", on_push=pushes)
    client.pushes = pushes

    async def cleanup() -> None:
        if client.transport.connected:
            client.transport.abortConnection()
            await client.closed

    testcase.addCleanup(lambda: Deferred.fromCoroutine(cleanup()))
    return client


def memory_hub(config: Any, clock: Any, metrics: Any = None, history: Any = None) -> Any:
    """A hub on its own memory engine (no database unless C{history} is given), for unit tests."""
    from myservices.hub import Hub, MemoryEngine

    return Hub(config, clock, MemoryEngine(config, clock, history=history, metrics=metrics), metrics=metrics)


def run_now(coroutine: Any) -> Any:
    """The result of a hub coroutine that finishes without waiting (the memory engine without a database)."""
    d = Deferred.fromCoroutine(coroutine)
    results: list[Any] = []
    d.addBoth(results.append)
    if not results:
        raise AssertionError(f"{coroutine} is still waiting")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


async def poll_until(condition: Any, what: str, timeout: float, interval: float = 0.01) -> float:
    """Poll C{condition} on the reactor until it holds, failing after C{timeout} seconds; the seconds it took.

    For state that changes in another process (a worker, a second daemon, Redis), where there is no
    Deferred to wait on: bounded, so a condition that never holds fails the test instead of hanging it.
    """
    start = reactor.seconds()
    while not condition():
        if reactor.seconds() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await deferLater(reactor, interval, lambda: None)
    return float(reactor.seconds() - start)
