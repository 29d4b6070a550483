"""Connections to Redis through txredisapi: kept open (reconnecting with backoff), every call bounded in time.

txredisapi queues a command silently while it has no connection; here a
call fails at once with L{EngineUnavailable} instead (after the first
connection: a call made while the engine starts waits for it, within the
timeout), and a call without an answer within C{timeout} fails the same way
(txredisapi then drops the connection, which is reopened). A connection is
handed out only once it is ready: logged in, on its database, answering a
PING, and prepared by its owner (the engine checks the data-loss epoch
there), so no command of ours ever runs on a half-set-up connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from myservices.errors import ENGINE_UNAVAILABLE, RequestError
from myservices.hub.config import RedisAddress
from myservices.metrics import Metrics


class EngineUnavailable(RequestError):
    """Redis did not answer in time or is not connected: ENGINE_UNAVAILABLE (retry: true)."""

    def __init__(self, detail: str = "the hub's shared state (Redis) is not available now; try again") -> None:
        super().__init__(ENGINE_UNAVAILABLE, detail)


ResponseError = txredisapi.ResponseError  # Redis answered with an error (a script's bug, never the client's)


def _encode(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, float):
        return format(value, "f").encode()
    return str(value).encode()


class _CommandProtocol(txredisapi.HiredisProtocol):  # type: ignore[misc]  # txredisapi is unannotated
    def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
        # the same RESP bytes as txredisapi's, in one join: its byte-by-byte version was the largest
        # cost of a publish in the profile (one script call each)
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = _encode(arg)
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return b"".join(parts)


class _SubscriberProtocol(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    def messageReceived(self, pattern: Any, channel: str, message: str) -> None:
        self.factory.link.on_message(channel, message)


class _Factory(txredisapi.RedisFactory):  # type: ignore[misc]
    """A pool of one connection whose connections go to a L{RedisLink} instead of a queue."""

    noisy = False

    def __init__(self, link: RedisLink, protocol: type, timeout: float, max_delay: float) -> None:
        # no password nor db here: txredisapi would stop reconnecting for good if AUTH/SELECT timed out;
        # the link sends them itself; convertNumbers=False: a text of digits stays a string
        super().__init__(None, None, 1, isLazy=True, replyTimeout=timeout, convertNumbers=False)
        self.deferred = None  # nobody waits on the whole pool
        self.protocol = protocol
        self.link = link
        self.initialDelay = min(0.1, max_delay)
        self.maxDelay = max_delay

    def addConnection(self, conn: Any) -> None:
        if self.disconnectCalled:
            conn.transport.abortConnection()  # our own connection to Redis, made as we stopped
            return
        if not conn.connected:
            return
        conn.whenDisconnected().addCallback(self._gone)
        self.pool.append(conn)
        self.size = len(self.pool)
        self.link.connected(conn)

    def _gone(self, conn: Any) -> None:
        self.delConnection(conn)
        self.link.lost(conn)


class RedisLink:
    """One connection to Redis (commands, or a subscriber's), reopened whenever it is lost.

    C{prepare(conn)} runs on each new connection before anyone may use it;
    C{on_ready()} and C{on_lost()} tell the owner, C{on_message(channel,
    text)} hands it what a subscriber receives.
    """

    log = Logger()

    def __init__(
        self,
        name: str,
        address: RedisAddress,
        clock: IReactorTime,
        timeout: float,
        max_delay: float,
        metrics: Metrics,
        *,
        subscriber: bool = False,
        prepare: Callable[[Any], Awaitable[None]] | None = None,
        on_ready: Callable[[], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        on_message: Callable[[str, str], None] | None = None,
    ) -> None:
        self.name = name
        self.address = address
        self.clock = clock
        self.timeout = timeout
        self.metrics = metrics
        self._prepare = prepare
        self._on_ready = on_ready
        self._on_lost = on_lost
        self._on_message = on_message
        protocol = _SubscriberProtocol if subscriber else _CommandProtocol
        self._factory = _Factory(self, protocol, timeout, max_delay)
        self.conn: Any = None  # the ready connection, or None
        self.ever_connected = False
        self._waiters: list[Deferred[None]] = []
        self._down_logged = False

    def start(self) -> None:
        endpoint = HostnameEndpoint(self.clock, self.address.host, self.address.port, timeout=self.timeout)
        self._factory.startConnecting(endpoint)

    def stop(self) -> Deferred[Any]:
        """Stop reconnecting and close the connection."""
        for d in self._waiters:
            d.cancel()
        self._waiters = []
        stopped: Deferred[Any] = self._factory.disconnect()
        return stopped

    @property
    def ready(self) -> bool:
        return self.conn is not None

    # --- from the factory -------------------------------------------------------------------

    def connected(self, conn: Any) -> None:
        Deferred.fromCoroutine(self._set_up(conn)).addErrback(
            lambda f: self.log.failure("redis {name}: setting up a connection failed", f, name=self.name)
        )

    async def _set_up(self, conn: Any) -> None:
        try:
            if self.address.password:
                await conn.execute_command("AUTH", self.address.password)
            if self.address.db:
                await conn.execute_command("SELECT", self.address.db)
            await conn.execute_command("PING")
            if self._prepare is not None:
                await self._prepare(conn)
        except Exception as e:
            # the message is Redis's ("WRONGPASS ...", a timeout): it never holds the password
            self.log.warn("redis {name}: {url} refused the connection: {error}",
                          name=self.name, url=self.address.safe, error=_describe(e))
            if conn.transport is not None:
                conn.transport.abortConnection()  # txredisapi connects again, with backoff
            return
        if not conn.connected:
            return
        self.conn = conn
        self.ever_connected = True
        if self._down_logged:
            self.log.info("redis {name}: connected again to {url}", name=self.name, url=self.address.safe)
        self._down_logged = False
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:  # those that timed out have fired already
                d.callback(None)
        if self._on_ready is not None:
            self._on_ready()

    def lost(self, conn: Any) -> None:
        if conn is not self.conn:
            return
        self.conn = None
        self.metrics.hub_engine_outages.inc()
        if not self._down_logged:
            self._down_logged = True
            self.log.warn("redis {name}: lost the connection to {url}; reconnecting",
                          name=self.name, url=self.address.safe)
        if self._on_lost is not None:
            self._on_lost()

    def on_message(self, channel: str, message: str) -> None:
        if self._on_message is not None:
            self._on_message(channel, message)

    # --- calls ----------------------------------------------------------------------------------

    async def wait_ready(self, timeout: float) -> None:
        """Wait until a connection is ready (EngineUnavailable after C{timeout} seconds)."""
        if self.conn is None:
            d: Deferred[None] = Deferred()
            self._waiters.append(d)
            await bounded(d, timeout, self.clock, self.metrics)

    async def connection(self) -> Any:
        """The ready connection; before the first one, waits for it (within the timeout)."""
        if self.conn is None and not self.ever_connected:
            await self.wait_ready(self.timeout)
        if self.conn is None:
            self.metrics.hub_engine_errors.inc()
            raise EngineUnavailable()
        return self.conn

    async def call(self, *args: Any) -> Any:
        """One command; its reply (strings decoded as UTF-8)."""
        conn = await self.connection()
        return await _reply(lambda: conn.execute_command(*args), self.metrics)

    async def eval(self, script: str, args: Sequence[Any]) -> Any:
        """Run a Lua script (by its SHA1 once Redis knows it) with no KEYS and C{args} as ARGV."""
        conn = await self.connection()
        return await _reply(lambda: conn.eval(script, [], list(args)), self.metrics)

    async def subscribe(self, channel: str) -> None:
        """SUBSCRIBE to one channel and wait for Redis to confirm it (a subscriber link only).

        One channel per command: txredisapi pairs each reply with one waiting
        call, so a reply then always confirms the channel its call named.
        """
        conn = await self.connection()
        d = await _reply_deferred(lambda: conn.subscribe(channel), self.metrics)
        try:
            await bounded(d, self.timeout, self.clock, self.metrics)
        except EngineUnavailable:
            # what Redis made of the command is unknown: start again on a new connection
            if conn.transport is not None:
                conn.transport.abortConnection()
            raise

    async def unsubscribe(self, channel: str) -> None:
        if self.conn is None:
            return  # no connection, no subscription
        conn = self.conn
        await _reply(lambda: conn.unsubscribe(channel), self.metrics)


async def _reply_deferred(send: Callable[[], Deferred[Any]], metrics: Metrics) -> Deferred[Any]:
    try:
        return send()
    except txredisapi.ConnectionError as e:  # lost while we were getting here
        metrics.hub_engine_errors.inc()
        raise EngineUnavailable() from e


async def _reply(send: Callable[[], Deferred[Any]], metrics: Metrics) -> Any:
    d = await _reply_deferred(send, metrics)
    try:
        return await d
    except txredisapi.ConnectionError as e:  # the timeout too (TimeoutError is a ConnectionError)
        metrics.hub_engine_errors.inc()
        raise EngineUnavailable() from e


async def bounded(d: Deferred[Any], timeout: float, clock: IReactorTime, metrics: Metrics) -> Any:
    """C{await d}, failing with L{EngineUnavailable} after C{timeout} seconds (C{d} is then cancelled) or if the
    connection is lost first."""
    d.addTimeout(timeout, clock)
    try:
        return await d
    except (TimeoutError, txredisapi.ConnectionError) as e:  # or the connection was lost meanwhile
        metrics.hub_engine_errors.inc()
        raise EngineUnavailable() from e


def _describe(e: BaseException) -> str:
    if isinstance(e, Failure):
        return e.getErrorMessage()
    return f"{type(e).__name__}: {e}"
