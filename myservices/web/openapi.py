"""The OpenAPI 3.1 document of the HTTP service's C{/api/} routes, served at C{GET /api/openapi.json}.

Built as a dict here (no file to keep in step): every route, its parameters,
request body, answers (the shared error shape included) and whether it needs
the bearer key. tests/test_api_openapi.py validates the document, checks that
it lists exactly the routes served, and validates real answers against it.
"""

from __future__ import annotations

from typing import Any

from myservices.errors import ERRORS

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref(schema)}}}


def _error(description: str, retry_after: bool = False, authenticate: bool = False) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {JSON: {"schema": _ref("Error")}}}
    headers: dict[str, Any] = {}
    if retry_after:
        headers["Retry-After"] = {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
    if authenticate:
        headers["WWW-Authenticate"] = {"description": "Bearer", "schema": {"type": "string"}}
    if headers:
        answer["headers"] = headers
    return answer


# the answers every key-protected route may give besides its own
_KEYED_ERRORS = {
    "401": _error("UNAUTHENTICATED: no or a wrong key", authenticate=True),
    "403": _error("FORBIDDEN: the server has no API key configured"),
    "429": _error("RATE_LIMITED: the key's rate limit", retry_after=True),
    "500": _error("INTERNAL: a server error (logged)"),
    "503": _error("DATABASE_UNAVAILABLE or ENGINE_UNAVAILABLE: retry later", retry_after=True),
}
_BODY_ERRORS = {
    "400": _error("BAD_REQUEST (not JSON) or BAD_ARGUMENTS, ROOM_INVALID, TEXT_INVALID, NICK_INVALID"),
    "413": _error("TOO_LARGE: the body is larger than [api] max_body_size"),
    "415": _error("BAD_REQUEST: the body is not declared Content-Type: application/json"),
}


# 404 (no such route), 405 (wrong method): every answer that is not a success has the error shape
_OTHER = {"default": _error("any other error (404 no such route, 405 wrong method), in the same shape")}


def _body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": _ref(schema)}}}


def _room_parameter() -> dict[str, Any]:
    return {"name": "room", "in": "path", "required": True, "schema": {"type": "string"}, "description": "room name"}


def _keyed(operation: dict[str, Any], *, body: bool = False) -> dict[str, Any]:
    responses = {**operation.pop("responses"), **_KEYED_ERRORS, **(_BODY_ERRORS if body else {}), **_OTHER}
    if not body:
        responses["400"] = _error("BAD_ARGUMENTS or ROOM_INVALID: bad query arguments or room name")
    return {**operation, "responses": dict(sorted(responses.items()))}


def _schemas() -> dict[str, Any]:
    text = {"type": "string", "minLength": 1}
    message = {
        "type": "object",
        "required": ["room", "id", "ts", "nick", "text", "account"],
        "properties": {
            "room": {"type": "string"}, "id": {"type": "integer"}, "ts": {"type": "number"},
            "nick": {"type": "string"}, "text": {"type": "string"},
            "account": {"type": "boolean", "description": "false for a message the server API published"},
        },
    }
    error_object = {
        "type": "object",
        "required": ["code", "message", "retry"],
        "properties": {
            "code": {"type": "string", "enum": sorted(ERRORS)}, "message": {"type": "string"},
            "retry": {"type": "boolean"}, "retry_after": {"type": "number"},
        },
    }
    return {
        "Message": message,
        "ErrorObject": error_object,
        "Error": {"type": "object", "required": ["error"], "properties": {"error": _ref("ErrorObject")}},
        "PublishRequest": {
            "type": "object", "required": ["room", "text"], "additionalProperties": False,
            "properties": {"room": {"type": "string"}, "text": text, "nick": {"type": "string"}},
        },
        "BroadcastRequest": {
            "type": "object", "required": ["rooms", "text"], "additionalProperties": False,
            "properties": {
                "rooms": {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": True},
                "text": text, "nick": {"type": "string"},
            },
        },
        "BroadcastResult": {
            "type": "object", "required": ["results"],
            "properties": {"results": {"type": "array", "items": {"oneOf": [
                _ref("Message"),
                {"type": "object", "required": ["room", "error"],
                 "properties": {"room": {"type": "string"}, "error": _ref("ErrorObject")}},
            ]}}},
        },
        "Rooms": {
            "type": "object", "required": ["rooms"],
            "properties": {"rooms": {"type": "array", "items": {
                "type": "object", "required": ["name", "members", "subscribers", "last_id"],
                "properties": {
                    "name": {"type": "string"}, "members": {"type": "integer"},
                    "subscribers": {"type": "integer"}, "last_id": {"type": "integer"},
                },
            }}},
        },
        "Presence": {
            "type": "object", "required": ["room", "members", "member_count", "subscriber_count"],
            "properties": {
                "room": {"type": "string"}, "members": {"type": "array", "items": {"type": "string"}},
                "member_count": {"type": "integer"}, "subscriber_count": {"type": "integer"},
            },
        },
        "History": {
            "type": "object", "required": ["room", "messages", "complete", "last_id"],
            "properties": {
                "room": {"type": "string"}, "messages": {"type": "array", "items": _ref("Message")},
                "complete": {
                    "type": "boolean",
                    "description": "with since: false when messages after it were no longer kept",
                },
                "last_id": {"type": "integer", "description": "the id of the room's last message (0: none)"},
            },
        },
        "DisconnectRequest": {
            "type": "object", "required": ["nick"], "additionalProperties": False,
            "properties": {"nick": {"type": "string"}, "reason": {"type": "string", "maxLength": 200}},
        },
        "Disconnected": {
            "type": "object", "required": ["nick", "disconnected"],
            "properties": {
                "nick": {"type": "string"},
                "disconnected": {"type": "boolean", "description": "false when no connection had the nick"},
            },
        },
        "Counter": {
            "type": "object", "required": ["name", "value"],
            "properties": {"name": {"type": "string"}, "value": {"type": "integer"}},
        },
        "LoginRequest": {
            "type": "object", "required": ["username", "password"],
            "properties": {
                "username": {"type": "string"}, "password": {"type": "string"},
                "rooms": {"type": "array", "items": {"type": "string"}},
            },
        },
        "Login": {
            "type": "object", "required": ["token", "expires_at", "username"],
            "properties": {"token": {"type": "string"}, "expires_at": {"type": "integer"}, "username": {"type": "string"}},
        },
        "LoggedOut": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
    }


def _paths() -> dict[str, Any]:
    history_parameters = [
        _room_parameter(),
        {"name": "since", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0},
         "description": "the last id the caller has: answer the messages after it, oldest first"},
        {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1},
         "description": "most messages in the answer; at most the hub's [hub] history_size"},
    ]
    return {
        "/api/publish": {"post": _keyed({
            "operationId": "publish", "summary": "Publish a message to a room",
            "requestBody": _body("PublishRequest"),
            "responses": {"200": _ok("the message, stored and delivered", "Message")},
        }, body=True)},
        "/api/broadcast": {"post": _keyed({
            "operationId": "broadcast", "summary": "Publish one text to several rooms",
            "requestBody": _body("BroadcastRequest"),
            "responses": {"200": _ok("each room's message, or its error", "BroadcastResult")},
        }, body=True)},
        "/api/rooms": {"get": _keyed({
            "operationId": "rooms", "summary": "Every room in use, private ones included",
            "responses": {"200": _ok("the rooms, by name", "Rooms")},
        })},
        "/api/rooms/{room}/presence": {"get": _keyed({
            "operationId": "presence", "summary": "The members of a room",
            "parameters": [_room_parameter()],
            "responses": {"200": _ok("member nicks in joining order, and counts", "Presence")},
        })},
        "/api/rooms/{room}/history": {"get": _keyed({
            "operationId": "history", "summary": "A room's kept messages, oldest first",
            "parameters": history_parameters,
            "responses": {"200": _ok("a page of messages", "History")},
        })},
        "/api/disconnect": {"post": _keyed({
            "operationId": "disconnect", "summary": "Close every connection using a nick, on every process",
            "requestBody": _body("DisconnectRequest"),
            "responses": {"200": _ok("the connections are being closed", "Disconnected")},
        }, body=True)},
        "/api/counter": {"get": {
            "operationId": "counter", "summary": "The durable request counter's last number", "security": [],
            "responses": {"200": _ok("its name and value", "Counter"), "503": _error("database down", True), **_OTHER},
        }},
        "/api/login": {"post": {
            "operationId": "login", "summary": "A login token for an account (also set as a cookie)", "security": [],
            "requestBody": _body("LoginRequest"),
            "responses": {
                "200": _ok("the token", "Login"), "400": _error("malformed request"),
                "401": _error("LOGIN_FAILED"), "413": _error("TOO_LARGE"), "415": _error("not JSON"),
                "429": _error("RATE_LIMITED", True), "500": _error("INTERNAL"), "503": _error("unavailable", True),
                **_OTHER,
            },
        }},
        "/api/logout": {"post": {
            "operationId": "logout", "summary": "Clear the login cookie", "security": [],
            "responses": {"200": _ok("the cookie is cleared", "LoggedOut"), **_OTHER},
        }},
        "/api/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document", "security": [],
            "responses": {"200": {"description": "the OpenAPI document", "content": {JSON: {"schema": {"type": "object"}}}}},
        }},
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "myservices server API", "version": "1",
            "description": "Publish, broadcast, read rooms and disconnect users from an application backend "
            "(docs/api.md). Errors have the shape {\"error\": {\"code\", \"message\", \"retry\"}}.",
        },
        "servers": [{"url": "/"}],
        "security": [{"apiKey": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "description": "an [api] key"}},
            "schemas": _schemas(),
        },
    }
