"""A Twisted client for the framed JSON protocol.

    from twisted.internet import reactor
    from myservices.framed.client import connect

    client = await connect(reactor, "tcp:127.0.0.1:8000", on_push=print)
    await client.call("login", username="alice", password="...")
    await client.call("hub.subscribe", room="lobby")
    reply = await client.call("hub.publish", room="lobby", text="hello")   # {"room": "lobby", "id": 7}

Requests are pipelined: C{call} returns at once with a Deferred, and many
may be outstanding. A failed request errbacks with L{FramedError}, carrying
the server's error code, message and retry hint. Pushes (room messages,
presence, the server closing the connection) go to C{on_push(name, data)}.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from myservices.framed.catalog import COMMAND_NAMES, COMMANDS, PUSH_NAMES
from myservices.framed.wire import MAX_ID, FrameDecoder, FrameError, encode_json
from myservices.settings import MiB

PushHandler = Callable[[str, dict[str, Any]], object]


class FramedError(Exception):
    """The server answered a request with an error."""

    def __init__(self, code: str, message: str, retry: bool = False, command: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry = retry
        self.command = command


class ConnectionClosed(FramedError):
    """The connection closed before the reply came; C{code} says why when the server told us."""


class FramedClient(Protocol):
    """One connection to a framed JSON server."""

    log = Logger()
    # a TCP or TLS transport (connected, abortConnection); None until connected
    transport: Any

    def __init__(self, on_push: PushHandler | None = None, max_body_size: int = 64 * MiB) -> None:
        self.on_push = on_push
        self.max_body_size = max_body_size
        self.closed: Deferred[None] = Deferred()
        self.closing_error: dict[str, Any] | None = None  # what the server said when it closed the connection
        self._pending: dict[int, tuple[str, Deferred[Any]]] = {}
        self._ids = itertools.count(1)
        self._keepalive: LoopingCall | None = None

    def connectionMade(self) -> None:
        self._decoder = FrameDecoder(self.max_body_size)

    # --- requests ---------------------------------------------------------------

    def call(self, command: str | int, args: dict[str, Any] | None = None, **kwargs: Any) -> Deferred[Any]:
        """Send a request; the Deferred fires with the reply's result or fails with L{FramedError}.

        C{command} is a name from the catalog ("hub.publish") or a numeric id.
        Arguments come as a dict, as keywords, or both.
        """
        command_id = COMMANDS[command] if isinstance(command, str) else command
        name = COMMAND_NAMES.get(command_id, str(command_id))
        request_id = next(self._ids)
        if request_id > MAX_ID:
            self._ids = itertools.count(1)
            request_id = next(self._ids)
        body: dict[str, Any] = {"id": request_id}
        merged = {**(args or {}), **kwargs}
        if merged:
            body["args"] = merged
        d: Deferred[Any] = Deferred()
        if self.transport is None or not self.transport.connected:
            d.errback(ConnectionClosed("CLOSED", "not connected", retry=True, command=name))
            return d
        self._pending[request_id] = (name, d)
        self.transport.write(encode_json(command_id, body))
        return d

    def keepalive(self, interval: float, clock: IReactorTime) -> None:
        """Send ping every C{interval} seconds, so the server's idle timeout does not close a listener."""
        self._keepalive = LoopingCall(self._ping)
        self._keepalive.clock = clock
        self._keepalive.start(interval, now=False).addErrback(lambda f: self.log.failure("keepalive failed", f))

    def _ping(self) -> None:
        self.call("ping").addErrback(lambda f: None)  # a lost connection shows up in connectionLost

    def close(self) -> Deferred[None]:
        """Close the connection; fires when it is closed."""
        if self.transport is not None and self.transport.connected:
            self.transport.loseConnection()
        return self.closed

    # --- input -------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self._decoder.feed(data)
        while True:
            try:
                frame = self._decoder.next_frame()
            except FrameError as e:
                self.log.error("framed client: {error}; closing", error=e.detail)
                self.transport.abortConnection()
                return
            if frame is None:
                return
            try:
                body = json.loads(frame.body.decode("utf-8"))
            except (ValueError, RecursionError):
                self.log.error("framed client: the server sent a body that is not JSON; closing")
                self.transport.abortConnection()
                return
            self._frame(frame.command, body)

    def _frame(self, command_id: int, body: dict[str, Any]) -> None:
        request_id = body.get("id")
        if request_id == 0 and "push" in body:
            name, data = body["push"], body.get("data", {})
            if name == "closing":
                self.closing_error = data.get("error")
            self._deliver_push(PUSH_NAMES.get(command_id, name), data)
            return
        if request_id == 0:
            # an error about a frame the server could not read as a request
            self._deliver_push("error", {"command": command_id, "error": body.get("error")})
            return
        # an id that is no request's (a list sent by a broken server included) is only logged
        pending = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if pending is None:
            self.log.warn("framed client: reply to unknown request {id}", id=request_id)
            return
        name, d = pending
        if body.get("ok"):
            d.callback(body.get("result"))
        else:
            error = body.get("error") or {}
            d.errback(
                FramedError(error.get("code", "UNKNOWN"), error.get("message", ""), bool(error.get("retry")), name)
            )

    def _deliver_push(self, name: str, data: dict[str, Any]) -> None:
        if self.on_push is None:
            return
        try:
            self.on_push(name, data)
        except Exception:
            self.log.failure("framed client: push handler failed on {name}", name=name)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        error = self.closing_error or {}
        pending, self._pending = self._pending, {}
        for name, d in pending.values():
            d.errback(
                ConnectionClosed(
                    error.get("code", "CLOSED"),
                    error.get("message", f"connection closed before the reply: {reason.getErrorMessage()}"),
                    bool(error.get("retry", True)),
                    name,
                )
            )
        self.closed.callback(None)


async def connect(
    reactor: Any, endpoint: str | IStreamClientEndpoint, on_push: PushHandler | None = None, **kw: Any
) -> FramedClient:
    """Connect to C{endpoint} (a Twisted client endpoint string such as "tcp:127.0.0.1:8000")."""
    if isinstance(endpoint, str):
        endpoint = clientFromString(reactor, endpoint)
    return await connectProtocol(endpoint, FramedClient(on_push, **kw))
