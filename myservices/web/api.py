"""The server API under C{/api/}: an application backend publishes and operators act on the hub over HTTP.

JSON in and out, every answer of a key-protected route preceded by the same
steps: the bearer key (L{ApiKeys}), the body (C{Content-Type:
application/json}, at most C{[api] max_body_size}, strict JSON of the
expected shape), the key's rate limit, then one hub call. Every failure goes
through L{HttpErrors.respond}: a L{RequestError} (or what L{classify} makes
one of) is the client's and answered with its status and the shared error
shape; anything else is logged once and answered 500 INTERNAL. docs/api.md
describes the routes, L{myservices.web.openapi} documents them for clients.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from myservices.errors import BAD_ARGUMENTS, NOT_FOUND, RequestError, error_json
from myservices.handlers.pipeline import classify, message_json
from myservices.hub.rules import MAX_MESSAGE_ID
from myservices.web.api_keys import ApiConfig, ApiKeys
from myservices.web.openapi import document
from myservices.web.request import error_response, read_json_body
from myservices.web.resources import HttpErrors, write_json

if TYPE_CHECKING:
    from myservices.hub import Hub
    from myservices.hub.events import Message

log = Logger()

MAX_REASON_LENGTH = 200


@dataclass(frozen=True)
class Api:
    """What every route uses: the hub, the keys, the limits and the HTTP service's error answers."""

    hub: Hub
    keys: ApiKeys
    config: ApiConfig
    errors: HttpErrors


def _fields(body: Any, required: Mapping[str, type], optional: Mapping[str, type]) -> dict[str, Any]:
    """The members of a JSON object body, each of its type; BAD_ARGUMENTS naming what is wrong."""
    if not isinstance(body, dict):
        raise RequestError(BAD_ARGUMENTS, "expected a JSON object")
    unknown = sorted(set(body) - set(required) - set(optional))
    if unknown:
        raise RequestError(BAD_ARGUMENTS, f"unknown member {unknown[0]!r}")
    for name, kind in {**required, **optional}.items():
        if name not in body:
            if name in required:
                raise RequestError(BAD_ARGUMENTS, f"{name!r} is missing")
            continue
        if not isinstance(body[name], kind):
            raise RequestError(BAD_ARGUMENTS, f"{name!r} must be a {_TYPE_NAMES[kind]}")
    return dict(body)


_TYPE_NAMES: dict[type, str] = {str: "string", list: "list"}


class ApiRoute(Resource):
    """A key-protected route: authenticate, read the body, charge the key, serve; one error path for all."""

    isLeaf = True

    def __init__(self, api: Api) -> None:
        super().__init__()
        self.api = api

    def serve(self, request: Request) -> int:
        d = Deferred.fromCoroutine(self._serve(request))
        d.addErrback(self.api.errors.respond, request)
        return NOT_DONE_YET

    async def _serve(self, request: Request) -> None:
        key = self.api.keys.authenticate(request)
        body = read_json_body(request, self.api.config.max_body_size) if request.method == b"POST" else None
        self.api.keys.charge(key, self.cost(body))
        result = await self.handle(request, body)
        write_json(request, 200, result)

    def cost(self, body: Any) -> int:
        """Tokens the request takes from its key's bucket."""
        return 1

    async def handle(self, request: Request, body: Any) -> Any:
        """The answer's JSON value (200), or a raised error."""
        raise NotImplementedError

    def nick(self, body: dict[str, Any]) -> str:
        return str(body.get("nick", self.api.config.nick))


class PublishApi(ApiRoute):
    """C{POST /api/publish {room, text, nick?}}: the message, once stored and delivered to the room."""

    def render_POST(self, request: Request) -> int:
        return self.serve(request)

    async def handle(self, request: Request, body: Any) -> Any:
        fields = _fields(body, {"room": str, "text": str}, {"nick": str})
        message = await self.api.hub.post(fields["room"], fields["text"], self.nick(fields))
        return message_json(message)


class BroadcastApi(ApiRoute):
    """C{POST /api/broadcast {rooms, text, nick?}}: one publish per room; each room's message or error."""

    def render_POST(self, request: Request) -> int:
        return self.serve(request)

    def cost(self, body: Any) -> int:
        self._rooms(body)  # a malformed body is answered 400 before it costs anything
        return max(1, len(body["rooms"]))

    def _rooms(self, body: Any) -> list[str]:
        fields = _fields(body, {"rooms": list, "text": str}, {"nick": str})
        rooms = fields["rooms"]
        limit = self.api.config.max_broadcast_rooms
        if not rooms or len(rooms) > limit:
            raise RequestError(BAD_ARGUMENTS, f"'rooms' must list 1 to {limit} rooms")
        if not all(isinstance(room, str) for room in rooms):
            raise RequestError(BAD_ARGUMENTS, "'rooms' must be a list of strings")
        if len(set(rooms)) != len(rooms):
            raise RequestError(BAD_ARGUMENTS, "'rooms' lists a room twice")
        return rooms

    async def handle(self, request: Request, body: Any) -> Any:
        rooms = self._rooms(body)
        nick = self.nick(body)
        results = await gatherResults([Deferred.fromCoroutine(self._one(room, body["text"], nick)) for room in rooms])
        return {"results": results}

    async def _one(self, room: str, text: str, nick: str) -> dict[str, Any]:
        """One room's result: its message, or its error object (the other rooms still go out)."""
        try:
            message: Message = await self.api.hub.post(room, text, nick)
        except Exception:
            error = classify(Failure(), "api", f"broadcast to {room}")
            return {"room": room, "error": error_json(error.error, error.detail)}
        return message_json(message)


class RoomsApi(ApiRoute):
    """C{GET /api/rooms}, C{GET /api/rooms/ROOM/presence}, C{GET /api/rooms/ROOM/history?since=ID&limit=N}."""

    # the paths it serves below its own (the OpenAPI test checks that each is documented)
    SUBPATHS = ("", "/{room}/presence", "/{room}/history")

    def render_GET(self, request: Request) -> int:
        return self.serve(request)

    async def handle(self, request: Request, body: Any) -> Any:
        path = [segment.decode("utf-8", "replace") for segment in request.postpath or []]
        if path in ([], [""]):
            self._no_arguments(request)
            return {"rooms": [_room_json(info) for info in await self.api.hub.rooms()]}
        if len(path) == 2 and path[1] == "presence":
            self._no_arguments(request)
            return await self._presence(path[0])
        if len(path) == 2 and path[1] == "history":
            return await self._history(path[0], request)
        raise RequestError(NOT_FOUND, "no such resource under /api/rooms")

    @staticmethod
    def _no_arguments(request: Request) -> None:
        if request.args:
            raise RequestError(BAD_ARGUMENTS, "this route takes no query arguments")

    async def _presence(self, room: str) -> dict[str, Any]:
        hub = self.api.hub
        name = hub.check_room(room)
        nicks = await hub.who(name)
        subscribers = next((info.subscribers for info in await hub.rooms() if info.name == name), 0)
        return {"room": name, "members": list(nicks), "member_count": len(nicks), "subscriber_count": subscribers}

    async def _history(self, room: str, request: Request) -> dict[str, Any]:
        hub = self.api.hub
        name = hub.check_room(room)
        args = _query(request, ("since", "limit"))
        size = hub.config.history_size
        since = _integer(args, "since", 0, MAX_MESSAGE_ID)
        limit = _integer(args, "limit", 1, max(1, size))
        page = await hub.read(name, since=since, limit=limit)
        return {
            "room": name, "messages": [message_json(m) for m in page.messages],
            "complete": page.complete, "last_id": page.last_id,
        }


def _room_json(info: Any) -> dict[str, Any]:
    return {"name": info.name, "members": info.members, "subscribers": info.subscribers, "last_id": info.last_id}


def _query(request: Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query arguments, each at most once and each one of C{allowed}."""
    args: dict[str, str] = {}
    query: dict[bytes, list[bytes]] = request.args or {}
    for raw, values in query.items():
        name = raw.decode("utf-8", "replace")
        if name not in allowed:
            raise RequestError(BAD_ARGUMENTS, f"unknown query argument {name!r} (expected {', '.join(allowed)})")
        if len(values) != 1:
            raise RequestError(BAD_ARGUMENTS, f"{name!r} given more than once")
        args[name] = values[0].decode("utf-8", "replace")
    return args


def _integer(args: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    if name not in args:
        return None
    text = args[name]
    if not (text.isascii() and text.isdigit() and len(text) <= 19) or not low <= int(text) <= high:
        raise RequestError(BAD_ARGUMENTS, f"{name!r} must be a whole number from {low} to {high}")
    return int(text)


class DisconnectApi(ApiRoute):
    """C{POST /api/disconnect {nick, reason?}}: every connection using the nick, on every process, is closed;
    C{disconnected} is false when none had it."""

    def render_POST(self, request: Request) -> int:
        return self.serve(request)

    async def handle(self, request: Request, body: Any) -> Any:
        fields = _fields(body, {"nick": str}, {"reason": str})
        reason = fields.get("reason", "")
        if len(reason) > MAX_REASON_LENGTH:
            raise RequestError(BAD_ARGUMENTS, f"'reason' is longer than {MAX_REASON_LENGTH} characters")
        nick = self.api.hub.check_nick(fields["nick"])
        found = await self.api.hub.disconnect(nick, reason)
        return {"nick": nick, "disconnected": found}


class OpenApiDocument(Resource):
    """C{GET /api/openapi.json}: the OpenAPI 3.1 document of the API (public)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.body = json.dumps(document(), indent=1).encode() + b"\n"

    def render_GET(self, request: Request) -> bytes:
        if request.postpath not in ([], [b""]):
            return error_response(request, 404, NOT_FOUND)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-cache")
        return self.body


# the key-protected routes, by the name under /api/ they are mounted at
ROUTES: Mapping[bytes, type[ApiRoute]] = {
    b"publish": PublishApi, b"broadcast": BroadcastApi, b"rooms": RoomsApi, b"disconnect": DisconnectApi,
}


def mount_api(directory: Resource, api: Api) -> None:
    """Put the server API's routes (and its OpenAPI document) in C{directory}, the C{/api} resource."""
    if not api.keys.configured:
        log.info("api: no key configured ([api] keys or MYSERVICES_API_KEY): the server API answers 403")
    for name, route in ROUTES.items():
        directory.putChild(name, route(api))
    directory.putChild(b"openapi.json", OpenApiDocument())
