"""A real WebSocket client for the tests: autobahn's Twisted client, with waits on messages and close."""

from __future__ import annotations

import json
import os
from base64 import b64encode
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import TestCase

from tests.support import Collector, disconnect_at_cleanup


class HandshakeFailed(Exception):
    pass


class WsClient(WebSocketClientProtocol):
    """Keeps what it receives; C{next} waits for the next message matching a predicate."""

    def __init__(self) -> None:
        super().__init__()
        self.unread: list[tuple[bytes, bool, Any]] = []  # payload, binary, the JSON value (None if not JSON)
        self.opened: Deferred[WsClient] = Deferred()
        self.closed: Deferred[tuple[int | None, str | None]] = Deferred()
        self._waiter: tuple[Any, Deferred[Any]] | None = None
        self._ids = 0

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        value = None
        if not isBinary:
            try:
                value = json.loads(payload)
            except ValueError:
                pass
        self.unread.append((payload, isBinary, value))
        self._check()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(HandshakeFailed(reason or "closed"))
        if self._waiter:
            d = self._waiter[1]
            self._waiter = None
            d.errback(ConnectionError(f"closed {code} {reason}"))
        self.closed.callback((code, reason))

    def _check(self) -> None:
        if not self._waiter:
            return
        pred, d = self._waiter
        for i, (payload, binary, value) in enumerate(self.unread):
            if pred(payload, binary, value):
                del self.unread[i]
                self._waiter = None
                d.callback((payload, binary, value))
                return

    def _wait(self, pred: Any) -> Deferred[tuple[bytes, bool, Any]]:
        d: Deferred[tuple[bytes, bool, Any]] = Deferred()
        self._waiter = (pred, d)
        self._check()
        return d

    async def next_raw(self) -> tuple[bytes, bool]:
        """The next message: (payload, is_binary)."""
        payload, binary, _ = await self._wait(lambda payload, binary, value: True)
        return payload, binary

    async def event(self, type_: str, **match: Any) -> dict[str, Any]:
        """The next JSON message of type C{type_} whose fields include C{match}."""

        def pred(payload: bytes, binary: bool, m: Any) -> bool:
            return isinstance(m, dict) and m.get("type") == type_ and all(m.get(k) == v for k, v in match.items())

        return (await self._wait(pred))[2]

    def send_json(self, obj: Any) -> None:
        self.sendMessage(json.dumps(obj).encode())

    async def request(self, type_: str, **args: Any) -> dict[str, Any]:
        """Send a chat request with a fresh id; return its reply or error message."""
        self._ids += 1
        request_id = self._ids
        self.send_json({"type": type_, "id": request_id, **args})

        def pred(payload: bytes, binary: bool, m: Any) -> bool:
            return isinstance(m, dict) and m.get("type") in ("reply", "error") and m.get("id") == request_id

        return (await self._wait(pred))[2]

    async def call(self, type_: str, **args: Any) -> Any:
        """L{request}, expecting success: the result."""
        reply = await self.request(type_, **args)
        assert reply["type"] == "reply", reply
        return reply["result"]


async def ws_connect(
    testcase: TestCase, port: int, path: str, origin: str | None = None, compression: bool = False,
    headers: dict[str, str] | None = None,
) -> WsClient:
    """An open WebSocket to ws://127.0.0.1:PORT/PATH (with extra handshake C{headers}), aborted when the test ends."""
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}{path}", origin=origin, headers=headers)
    factory.protocol = WsClient
    if compression:
        from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateResponse, PerMessageDeflateResponseAccept

        factory.setProtocolOptions(
            perMessageCompressionOffers=[PerMessageDeflateOffer()],
            perMessageCompressionAccept=lambda r: PerMessageDeflateResponseAccept(r)
            if isinstance(r, PerMessageDeflateResponse) else None,
        )
    client: WsClient = await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)

    async def cleanup() -> None:
        if client.transport.connected:
            client.transport.abortConnection()
        if not client.closed.called:
            await client.closed

    testcase.addCleanup(lambda: Deferred.fromCoroutine(cleanup()))
    await client.opened
    return client


async def raw_handshake(testcase: TestCase, port: int, path: str, headers: dict[str, str] | None = None) -> str:
    """Send an opening handshake by hand; return the status line of the answer."""
    fields = {
        "Host": f"127.0.0.1:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
        "Sec-WebSocket-Key": b64encode(os.urandom(16)).decode(), "Sec-WebSocket-Version": "13",
        **(headers or {}),
    }
    request = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    proto = Collector()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), proto)
    disconnect_at_cleanup(testcase, proto)
    proto.transport.write(request.encode())
    data = await proto.receive(12)
    return data.split(b"\r\n", 1)[0].decode()
