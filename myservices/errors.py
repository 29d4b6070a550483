"""The error codes every front end shares: a stable code, a short message, whether retrying can help.

Front ends render an error in their own wire format (the line chat writes
``ERR CODE message``); the code and the retry hint are the same everywhere.
docs/protocols.md carries this table for client authors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ErrorCode:
    """One entry of the shared error table."""

    code: str
    message: str
    retry: bool


def error_json(error: ErrorCode, detail: str | None = None, retry_after: float | None = None) -> dict[str, Any]:
    """The error object of every JSON front end: code, message, whether to retry and, when known, how soon."""
    body: dict[str, Any] = {"code": error.code, "message": detail or error.message, "retry": error.retry}
    if retry_after is not None:
        body["retry_after"] = round(retry_after, 3)
    return body


class DatabaseUnavailable(Exception):
    """The database cannot be reached now; retrying later can help (raised by L{myservices.db})."""


class DatabaseTimeout(DatabaseUnavailable):
    """The database did not answer within C{request_timeout}; a write's outcome is unknown (it may commit)."""


class RequestError(Exception):
    """A request that cannot be served, raised by the shared handlers (hub, accounts, key-value)
    and rendered by each front end; C{detail} says why in this case."""

    def __init__(self, error: ErrorCode, detail: str | None = None, retry_after: float | None = None) -> None:
        self.error = error
        self.detail = detail or error.message
        self.retry_after = retry_after  # seconds until a retry can succeed, when the server knows
        super().__init__(f"{error.code}: {self.detail}")


UNKNOWN_COMMAND = ErrorCode("UNKNOWN_COMMAND", "no such command", retry=False)
BAD_ARGUMENTS = ErrorCode("BAD_ARGUMENTS", "wrong or missing arguments", retry=False)
BAD_ENCODING = ErrorCode("BAD_ENCODING", "input is not valid UTF-8", retry=False)
LINE_TOO_LONG = ErrorCode("LINE_TOO_LONG", "line longer than the limit; it was discarded", retry=False)
TEXT_INVALID = ErrorCode("TEXT_INVALID", "text is empty or contains control characters", retry=False)
NICK_INVALID = ErrorCode("NICK_INVALID", "nick does not follow the rules", retry=False)
NICK_TAKEN = ErrorCode("NICK_TAKEN", "nick is in use by another user", retry=False)
ROOM_INVALID = ErrorCode("ROOM_INVALID", "room name does not follow the rules", retry=False)
NOT_IN_ROOM = ErrorCode("NOT_IN_ROOM", "join the room first", retry=False)
TOO_MANY_ROOMS = ErrorCode("TOO_MANY_ROOMS", "too many rooms and topics on this connection", retry=False)
RATE_LIMITED = ErrorCode("RATE_LIMITED", "publishing too fast; slow down", retry=True)
SLOW_CONSUMER = ErrorCode("SLOW_CONSUMER", "slow consumer: too much unread output", retry=True)
NOT_FOUND = ErrorCode("NOT_FOUND", "no such resource", retry=False)
BAD_REQUEST = ErrorCode("BAD_REQUEST", "the request is malformed", retry=False)
TOO_LARGE = ErrorCode("TOO_LARGE", "request or message larger than the limit", retry=False)
TIMEOUT = ErrorCode("TIMEOUT", "the request did not arrive in time", retry=True)
UNSUPPORTED_VERSION = ErrorCode("UNSUPPORTED_VERSION", "protocol version not supported", retry=False)
UNAUTHENTICATED = ErrorCode("UNAUTHENTICATED", "log in first", retry=False)
LOGIN_FAILED = ErrorCode("LOGIN_FAILED", "wrong username or password", retry=False)
USERNAME_TAKEN = ErrorCode("USERNAME_TAKEN", "an account with this username exists", retry=False)
QUOTA_EXCEEDED = ErrorCode("QUOTA_EXCEEDED", "the account has reached a storage limit", retry=False)
BUSY = ErrorCode("BUSY", "too many connections, try again later", retry=True)
DATABASE_UNAVAILABLE = ErrorCode("DATABASE_UNAVAILABLE", "the database is not available", retry=True)
ENGINE_UNAVAILABLE = ErrorCode("ENGINE_UNAVAILABLE", "the hub's shared state (Redis) is not available", retry=True)
SHUTTING_DOWN = ErrorCode("SHUTTING_DOWN", "the server is shutting down", retry=True)
HUB_UNAVAILABLE = ErrorCode("HUB_UNAVAILABLE", "the chat hub is not served by this server now", retry=True)
FORBIDDEN = ErrorCode("FORBIDDEN", "not allowed for this user", retry=False)
TOKEN_INVALID = ErrorCode("TOKEN_INVALID", "the token is not valid (bad signature, malformed or revoked)", retry=False)
TOKEN_EXPIRED = ErrorCode("TOKEN_EXPIRED", "the token has expired; get a new one", retry=False)
NICK_OFFLINE = ErrorCode("NICK_OFFLINE", "no user with this nick is connected", retry=False)
DISCONNECTED = ErrorCode("DISCONNECTED", "disconnected by an operator", retry=False)
INTERNAL = ErrorCode("INTERNAL", "internal error; it has been logged", retry=True)

ERRORS: dict[str, ErrorCode] = {
    e.code: e
    for e in (
        UNKNOWN_COMMAND, BAD_ARGUMENTS, BAD_ENCODING, LINE_TOO_LONG, TEXT_INVALID, NICK_INVALID, NICK_TAKEN,
        ROOM_INVALID, NOT_IN_ROOM, TOO_MANY_ROOMS, RATE_LIMITED, SLOW_CONSUMER, NOT_FOUND, BAD_REQUEST, TOO_LARGE,
        TIMEOUT, UNSUPPORTED_VERSION, UNAUTHENTICATED, LOGIN_FAILED, USERNAME_TAKEN, QUOTA_EXCEEDED, BUSY,
        DATABASE_UNAVAILABLE, HUB_UNAVAILABLE, ENGINE_UNAVAILABLE,
        SHUTTING_DOWN, FORBIDDEN, TOKEN_INVALID, TOKEN_EXPIRED, NICK_OFFLINE, DISCONNECTED, INTERNAL,
    )
}
