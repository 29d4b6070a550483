"""C{POST /api/login} and C{POST /api/logout}: a login token for a username and password, in JSON and a cookie.

The resources only translate: L{AccountStore.authenticate} checks the
password and applies the login limits (the client's address is the
connection's peer), L{TokenService.issue} signs the token. The cookie is
C{HttpOnly} and C{SameSite=Strict}, and C{Secure} when the request came over
TLS. A login must be sent as C{Content-Type: application/json}: a cross-site
form cannot send that without the browser asking first (CORS), so another
site cannot log a visitor in to an account of its choosing.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from myservices.errors import (
    BAD_ARGUMENTS, BAD_REQUEST, BUSY, DATABASE_UNAVAILABLE, INTERNAL, LOGIN_FAILED, RATE_LIMITED, SHUTTING_DOWN,
    TOO_LARGE, RequestError,
)
from myservices.handlers.values import client_error
from myservices.login_limits import peer_host
from myservices.web.request import error_response
from myservices.web.resources import finish, gone, write_json

if TYPE_CHECKING:
    from myservices.accounts import AccountStore
    from myservices.tokens import TokenService

log = Logger()

COOKIE_NAME = b"myservices_token"
MAX_LOGIN_BODY = 8192  # a username, a password of at most 4096 characters and a few rooms
_STATUS = {
    LOGIN_FAILED.code: 401, RATE_LIMITED.code: 429, BUSY.code: 503, DATABASE_UNAVAILABLE.code: 503,
    SHUTTING_DOWN.code: 503, TOO_LARGE.code: 413, INTERNAL.code: 500,
}


def _cookie(request: Request, value: bytes, max_age: int) -> bytes:
    secure = b"; Secure" if request.isSecure() else b""
    return COOKIE_NAME + b"=" + value + b"; HttpOnly; SameSite=Strict; Path=/; Max-Age=%d" % max_age + secure


def _answer_error(request: Request, error: RequestError) -> None:
    if gone(request):
        return
    if error.retry_after is not None:
        request.setHeader(b"Retry-After", b"%d" % max(1, math.ceil(error.retry_after)))
    finish(request, error_response(request, _STATUS.get(error.error.code, 400), error.error, error.detail))


def _is_json(request: Request) -> bool:
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    return content_type == b"application/json"


def _credentials(body: bytes) -> tuple[str, str, list[str] | None]:
    """The username, password and rooms of a login body, or RequestError."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise RequestError(BAD_REQUEST, "the body is not JSON") from None
    if not isinstance(value, dict):
        raise RequestError(BAD_ARGUMENTS, 'expected {"username": ..., "password": ...}')
    username, password, rooms = value.get("username"), value.get("password"), value.get("rooms")
    if not isinstance(username, str) or not isinstance(password, str):
        raise RequestError(BAD_ARGUMENTS, '"username" and "password" must be strings')
    if rooms is not None and not (isinstance(rooms, list) and all(isinstance(r, str) for r in rooms)):
        raise RequestError(BAD_ARGUMENTS, '"rooms" must be a list of room names')
    return username, password, rooms


class LoginApi(Resource):
    """C{POST /api/login}: C{{"username", "password", "rooms"?}} -> C{{"token", "expires_at", "username"}} and a
    cookie; 401 LOGIN_FAILED, 429 RATE_LIMITED (with Retry-After), 400 for a malformed request."""

    isLeaf = True

    def __init__(self, accounts: AccountStore, tokens: TokenService) -> None:
        super().__init__()
        self.accounts = accounts
        self.tokens = tokens

    def render_POST(self, request: Request) -> bytes | int:
        if not _is_json(request):
            return error_response(request, 415, BAD_REQUEST, "expected Content-Type: application/json")
        assert request.content is not None
        body = request.content.read(MAX_LOGIN_BODY + 1)
        if len(body) > MAX_LOGIN_BODY:
            return error_response(request, 413, TOO_LARGE, f"a login body is at most {MAX_LOGIN_BODY} bytes")
        try:
            username, password, rooms = _credentials(body)
        except RequestError as e:
            return error_response(request, 400, e.error, e.detail)
        address = peer_host(request.getClientAddress())
        d = Deferred.fromCoroutine(self._login(username, password, rooms, address))
        d.addCallbacks(self._answer, self._failed, callbackArgs=(request,), errbackArgs=(request,))
        return NOT_DONE_YET

    async def _login(self, username: str, password: str, rooms: list[str] | None, address: str | None) -> Any:
        account = await self.accounts.authenticate(username, password, address=address)
        token, expires_at = self.tokens.issue(account, rooms)
        return account, token, expires_at

    def _answer(self, result: Any, request: Request) -> None:
        account, token, expires_at = result
        max_age = max(0, int(expires_at - self.tokens.clock.seconds()))
        request.setHeader(b"Set-Cookie", _cookie(request, token.encode("ascii"), max_age))
        write_json(request, 200, {"token": token, "expires_at": expires_at, "username": account.username})

    def _failed(self, failure: Failure, request: Request) -> None:
        error = client_error(failure.value)
        if error is None:
            log.failure("POST /api/login failed", failure)
            error = RequestError(INTERNAL)
        _answer_error(request, error)


class LogoutApi(Resource):
    """C{POST /api/logout}: clears the token cookie. The token itself stays valid until it expires
    (change the password to revoke every token of an account)."""

    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        request.setHeader(b"Set-Cookie", _cookie(request, b"", 0))
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return b'{"status": "logged out"}\n'
