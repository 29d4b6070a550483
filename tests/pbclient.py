"""A real Perspective Broker client for the tests: Twisted's PBClientFactory, a recording listener, error helpers."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.python.failure import Failure
from twisted.spread import pb
from twisted.trial.unittest import TestCase


class PBClient:
    """One connection: its factory, broker and root object; aborted when the test ends."""

    def __init__(self, factory: pb.PBClientFactory, broker: pb.Broker, root: pb.RemoteReference) -> None:
        self.factory = factory
        self.broker = broker
        self.root = root
        self.closed: Deferred[None] = Deferred()
        broker.notifyOnDisconnect(lambda: self.closed.called or self.closed.callback(None))

    async def login(self, username: str, password: str) -> pb.RemoteReference:
        return await self.root.callRemote("login", username, password)


async def pb_connect(testcase: TestCase, port: int) -> PBClient:
    factory = pb.PBClientFactory()
    broker = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    root = await factory.getRootObject()
    client = PBClient(factory, broker, root)

    async def cleanup() -> None:
        if not client.closed.called:
            broker.transport.abortConnection()
            await client.closed

    testcase.addCleanup(cleanup)
    return client


class Listener(pb.Referenceable):
    """Records what the server sends; C{next} waits for the next event of a kind matching fields."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._waiter: tuple[str, dict[str, Any], Deferred[dict[str, Any]]] | None = None

    def _record(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append((kind, data))
        self._check()

    def remote_message(self, data: dict[str, Any]) -> None:
        self._record("message", data)

    def remote_presence(self, data: dict[str, Any]) -> None:
        self._record("presence", data)

    def remote_nick(self, data: dict[str, Any]) -> None:
        self._record("nick", data)

    def remote_dm(self, data: dict[str, Any]) -> None:
        self._record("dm", data)

    def _check(self) -> None:
        if self._waiter is None:
            return
        kind, match, d = self._waiter
        for i, (k, data) in enumerate(self.events):
            if k == kind and all(data.get(key) == value for key, value in match.items()):
                del self.events[i]
                self._waiter = None
                d.callback(data)
                return

    def next(self, event: str, **match: Any) -> Deferred[dict[str, Any]]:
        """The next C{event} ("message", "presence", "nick", "dm") whose fields include C{match}."""
        d: Deferred[dict[str, Any]] = Deferred()
        self._waiter = (event, match, d)
        self._check()
        return d


async def failure_of(d: Deferred[Any]) -> Failure:
    """The Failure a callRemote Deferred fires with (it must fail)."""
    outcome: list[Any] = []
    d.addCallbacks(lambda r: outcome.append(("result", r)), lambda f: outcome.append(("failure", f)))
    await d
    kind, value = outcome[0]
    if kind != "failure":
        raise AssertionError(f"expected a failure, got {value!r}")
    return value
