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

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from myservices.errors import BAD_ARGUMENTS, RequestError
from myservices.login_limits import peer_host
from myservices.web.request import read_json_body
from myservices.web.resources import HttpErrors, write_json

if TYPE_CHECKING:
    from myservices.accounts import AccountStore
    from myservices.tokens import TokenService

COOKIE_NAME = b"myservices_token"
MAX_LOGIN_BODY = 8192  # a username, a password of at most 4096 characters and a few rooms


def _cookie(request: Request, value: bytes, max_age: int) -> bytes:
    secure = b"; Secure" if request.isSecure() else b""
    return COOKIE_NAME + b"=" + value + b"; HttpOnly; SameSite=Strict; Path=/; Max-Age=%d" % max_age + secure


def _credentials(value: Any) -> tuple[str, str, list[str] | None]:
    """The username, password and rooms of a login body, or RequestError."""
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

    def __init__(self, accounts: AccountStore, tokens: TokenService, errors: HttpErrors) -> None:
        super().__init__()
        self.accounts = accounts
        self.tokens = tokens
        self.errors = errors

    def render_POST(self, request: Request) -> int:
        try:
            username, password, rooms = _credentials(read_json_body(request, MAX_LOGIN_BODY))
        except RequestError as e:
            self.errors.answer(e, request)
            return NOT_DONE_YET
        address = peer_host(request.getClientAddress())
        d = Deferred.fromCoroutine(self._login(username, password, rooms, address))
        d.addCallbacks(self._answer, self.errors.respond, callbackArgs=(request,), errbackArgs=(request,))
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
