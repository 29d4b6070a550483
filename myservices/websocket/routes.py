"""What the WebSocket paths serve: /echo sends every message back, /chat speaks JSON on the shared hub.

The chat route is a thin front end: it maps a JSON request's "type" onto a
shared command (L{myservices.handlers.commands}), runs the requests of one
connection in order, and renders replies, errors and hub events as JSON.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from myservices.errors import (
    BAD_ARGUMENTS,
    BAD_REQUEST,
    RATE_LIMITED,
    UNAUTHENTICATED,
    UNKNOWN_COMMAND,
    ErrorCode,
    RequestError,
    error_json,
)
from myservices.handlers import values
from myservices.handlers.values import client_error
from myservices.handlers.commands import CommandState, SharedServices, logged_in_json, router
from myservices.handlers.pipeline import classify, event_body, invoke
from myservices.handlers.router import Router
from myservices.hub import Event, Subscriber
from myservices.login_limits import peer_host
from myservices.ratelimit import TokenBucket
from myservices.websocket.protocol import CLOSE_UNSUPPORTED_DATA

if TYPE_CHECKING:
    from myservices.websocket.protocol import WebSocketConnection, WebSocketFactory

# the chat protocol's request types and the shared commands they call: every shared hub command, named without its "hub." prefix, and ping: a hub operation added to the
# router is a request type here at once; the operator page's admin.* commands keep their names
CHAT_OPS: dict[str, str] = {
    **{name.removeprefix("hub."): name for name in router.commands if name.startswith("hub.")},
    **{name: name for name in router.commands if name.startswith("admin.")},
    **{name: name for name in ("ping", "register", "login", "logout", "whoami", "passwd", "token")},
}

TOKEN_COOKIE = "myservices_token"  # what POST /api/login on the HTTP service sets

MAX_REQUEST_ID_LENGTH = 64


class EchoRoute:
    """/echo: every text or binary message comes back unchanged.

    While the client does not read its echoes, the connection is not read
    either, so a client that only sends waits on TCP, not on server memory.
    """

    busy = False  # every echo is sent as its message arrives

    def __init__(self, conn: WebSocketConnection) -> None:
        self.conn = conn
        # reading stops while output waits, so the queue holds at most what was already read:
        # never a reason to drop an echo client as a slow consumer
        f = conn.factory
        self.max_pending = f.max_pending + 2 * f.maxMessagePayloadSize + 64 * 1024

    def opened(self) -> None:
        pass

    def message(self, payload: bytes, is_binary: bool) -> None:
        self.conn.send(payload, is_binary)
        if self.conn.output_paused:
            self.conn.pause_reading("output")

    def closed(self) -> None:
        pass


@dataclass(frozen=True)
class ChatSettings:
    """What every /chat connection of one service shares."""

    services: SharedServices
    router: Router
    request_rate: float
    request_burst: int
    max_queued: int
    limits: dict[str, Any]  # told to the client in the welcome event
    anonymous: str = "chat"


def event_json(event: Event) -> dict[str, Any]:
    kind, body = event_body(event)
    return {"type": kind, **body}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


class ChatRoute:
    """/chat: JSON requests in, replies and hub events out; also the connection's hub L{Subscriber}.

    Requests run one at a time in arrival order (a publish after a join sees
    the membership). While one waits (a room's history loading), later ones
    queue; past C{max_queued} the connection is not read until the queue
    drains, and likewise while the client does not read its output.
    """

    log = Logger()

    def __init__(self, conn: WebSocketConnection, settings: ChatSettings) -> None:
        self.conn = conn
        self.settings = settings
        self.factory: WebSocketFactory = conn.factory
        self.max_pending = self.factory.max_pending
        address = peer_host(conn.transport.getPeer())
        self.state = CommandState(settings.services, Subscriber(self.deliver, self.close), address, settings.anonymous)
        self.bucket = TokenBucket(settings.request_rate, settings.request_burst, settings.services.clock)
        self.queue: deque[tuple[str, Any, dict[str, Any]]] = deque()
        self.waiting = False
        self.open = True

    def opened(self) -> None:
        # requests wait until the welcome (with the session's nick) is sent
        self.waiting = True
        Deferred.fromCoroutine(self._welcome()).addErrback(self._not_opened)

    async def _welcome(self) -> None:
        session = await self.state.session()
        welcome: dict[str, Any] = {"type": "welcome", "nick": session.nick, "limits": self.settings.limits}
        token = cookie_token(self.conn.cookies)
        if token is not None:
            # the web page's login: a token in the cookie logs the connection in (a bad one leaves it anonymous)
            try:
                done = await self.state.logins.login_token(session, token, self.state.address)
                self.state.account = done.account
                welcome["login"] = logged_in_json(done, session.nick)
            except Exception as e:
                error = client_error(e)  # a bad token, or the database away: the connection stays a guest's
                if error is None:
                    raise
                welcome["login_error"] = error_json(error.error, error.detail, error.retry_after)
        welcome["username"] = session.account
        welcome["nick"] = session.nick
        self._send(welcome)
        self._go_on(None)

    def _not_opened(self, failure: Failure) -> None:
        # the shared rule, as on the line chat: the hub's own answers (ENGINE_UNAVAILABLE while Redis is
        # away) keep their codes and close with 1013 "try again later"; anything else is a bug, logged
        error = classify(failure, "websocket", "connect")
        self.conn.close_with(error.error, error.detail)

    def closed(self) -> None:
        self.open = False
        self.queue.clear()
        self.state.close()

    # --- the hub's Subscriber --------------------------------------------------------

    def deliver(self, event: Event) -> None:
        if not self.open:  # leaving: the hub tells the leaver of its own part
            return
        prepared = event.encoded("websocket", self._prepare)
        self.conn.send_prepared(prepared)

    def _prepare(self, event: Event) -> Any:
        # framed once per event for every WebSocket member of the room
        return self.factory.prepare(_dumps(event_json(event)))

    def close(self, error: ErrorCode) -> None:
        self.conn.close_with(error)

    # --- requests ------------------------------------------------------------------

    def message(self, payload: bytes, is_binary: bool) -> None:
        if is_binary:
            self.factory.metrics.error(BAD_REQUEST.code)
            self.conn.close_with(
                BAD_REQUEST, "binary messages are not part of the chat protocol; send JSON text",
                code=CLOSE_UNSUPPORTED_DATA,
            )
            return
        try:
            request = values.loads(payload)
        except values.InvalidJSON as e:
            self._error(None, None, BAD_REQUEST, f"not valid JSON: {e}")
            return
        except values.InvalidValue as e:
            request_id = values.peek_id(payload)
            self._error(None, request_id if _valid_id(request_id) else None, BAD_ARGUMENTS,
                        f"a value JSON cannot carry: {e}")
            return
        if not isinstance(request, dict):
            self._error(None, None, BAD_REQUEST, 'a request is a JSON object with a "type"')
            return
        request_id = request.pop("id", None)
        if not _valid_id(request_id):
            self._error(
                None, None, BAD_REQUEST,
                f'"id" must be an integer or a string of at most {MAX_REQUEST_ID_LENGTH} characters',
            )
            return
        op = request.pop("type", None)
        if not isinstance(op, str) or op not in CHAT_OPS:
            # not echoed back: it is whatever the client sent, of any size
            self._error(None, request_id, UNKNOWN_COMMAND, f'"type" must be one of {", ".join(CHAT_OPS)}')
            return
        self.queue.append((op, request_id, request))
        if len(self.queue) >= self.settings.max_queued:
            self.conn.pause_reading("requests")
        self._process()

    def _process(self) -> None:
        while self.queue and not self.waiting and self.open:
            self._run(*self.queue.popleft())
        if len(self.queue) < self.settings.max_queued:
            self.conn.resume_reading("requests")

    def _run(self, op: str, request_id: Any, args: dict[str, Any]) -> None:
        if not self.bucket.allow():
            self._error(op, request_id, RATE_LIMITED, f"at most {self.settings.request_rate:g} requests per second")
            return
        command = self.settings.router.commands[CHAT_OPS[op]]
        if command.login and self.state.account is None:
            self._error(op, request_id, UNAUTHENTICATED, f"{op} needs a login")
            return
        try:
            kwargs = command.bind(args, label=op)
        except RequestError as e:
            self._error(op, request_id, e.error, e.detail)
            return
        result = invoke(command, self.state, kwargs)
        result.addCallbacks(self._reply, self._failed_f, (op, request_id), errbackArgs=(op, request_id))
        if not result.called:
            self.waiting = True
            result.addBoth(self._go_on)

    def _go_on(self, _: object) -> None:
        self.waiting = False
        self._process()
        self.conn.close_if_answered()

    @property
    def busy(self) -> bool:
        """A request received is not answered yet."""
        return self.waiting or bool(self.queue)

    # --- output ----------------------------------------------------------------

    def _send(self, obj: dict[str, Any]) -> None:
        if not self.open:
            return
        self.conn.send(_dumps(obj))
        if self.conn.output_paused:
            self.conn.pause_reading("output")

    def _reply(self, result: Any, op: str, request_id: Any) -> None:
        self.factory.count(op, "ok")
        reply: dict[str, Any] = {"type": "reply", "op": op, "result": result}
        if request_id is not None:
            reply["id"] = request_id
        self._send(reply)

    def _failed_f(self, failure: Failure, op: str, request_id: Any) -> None:
        error = classify(failure, self.factory.service_name, op)
        self._error(op, request_id, error.error, error.detail, error.retry_after)

    def _error(
        self, op: str | None, request_id: Any, error: ErrorCode, detail: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.factory.count(op or "invalid", error.code)
        self.factory.metrics.error(error.code)
        reply: dict[str, Any] = {"type": "error", "error": error_json(error, detail, retry_after)}
        if op is not None:
            reply["op"] = op
        if request_id is not None:
            reply["id"] = request_id
        self._send(reply)


def cookie_token(header: str) -> str | None:
    """The login token in a Cookie header, if there is one."""
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == TOKEN_COOKIE and value:
            return value
    return None


def _valid_id(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return len(value) <= MAX_REQUEST_ID_LENGTH
    return isinstance(value, int) and not isinstance(value, bool) and -(2**53) < value < 2**53
