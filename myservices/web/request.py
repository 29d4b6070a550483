"""The HTTP service's requests: every error answered in the shared JSON shape, and counted.

twisted.web answers an unsupported method (405, 501) and a failure while
rendering (500) with HTML pages; here they get the JSON error body every
other answer of the service has. A L{RequestError} raised while rendering is
the client's mistake (bad input a resource found), answered 4xx without a
traceback; anything else is a server bug: logged, and answered 500 INTERNAL.
"""

from __future__ import annotations

import json
import time
from io import BytesIO
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource
from twisted.web.error import UnsupportedMethod
from twisted.web.http import datetimeToString, unquote
from twisted.web.server import Request, version

from myservices.errors import (
    BAD_ARGUMENTS, BAD_REQUEST, BUSY, DATABASE_UNAVAILABLE, ENGINE_UNAVAILABLE, FORBIDDEN, HUB_UNAVAILABLE, INTERNAL, LOGIN_FAILED,
    NOT_FOUND, RATE_LIMITED, SHUTTING_DOWN, TIMEOUT, TOO_LARGE, UNAUTHENTICATED, ErrorCode, RequestError,
)
from myservices.handlers.values import InvalidJSON, InvalidValue, loads

if TYPE_CHECKING:
    from myservices.web.channel import LimitedHTTPChannel

log = Logger()

# the methods HTTP defines (RFC 9110 section 9, and PATCH): a resource without one answers 405 and
# says which it has; any other method is not implemented anywhere (501)
KNOWN_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH"})

# the HTTP status of each error code; codes not listed are the client's mistakes: 400
_STATUS = {
    BAD_REQUEST.code: 400, UNAUTHENTICATED.code: 401, LOGIN_FAILED.code: 401, FORBIDDEN.code: 403,
    NOT_FOUND.code: 404, TIMEOUT.code: 408, TOO_LARGE.code: 413, RATE_LIMITED.code: 429, INTERNAL.code: 500,
    BUSY.code: 503, DATABASE_UNAVAILABLE.code: 503, ENGINE_UNAVAILABLE.code: 503, SHUTTING_DOWN.code: 503,
    HUB_UNAVAILABLE.code: 503,
}


class HttpStatusError(RequestError):
    """A request error whose HTTP status is not the one of its code (415 for a body that is not JSON)."""

    def __init__(self, status: int, error: ErrorCode, detail: str) -> None:
        super().__init__(error, detail)
        self.status = status


def http_status(error: RequestError) -> int:
    """The HTTP status that answers C{error}: 4xx for the client's mistakes, 503 when retrying later helps."""
    if isinstance(error, HttpStatusError):
        return error.status
    return _STATUS.get(error.error.code, 400)


def read_json_body(request: Request, limit: int) -> Any:
    """The request's body as strict JSON: 415 unless declared C{application/json}, 413 above C{limit} bytes,
    400 if it is not JSON or holds a value JSON does not (NaN): each a L{RequestError}."""
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if content_type != b"application/json":
        raise HttpStatusError(415, BAD_REQUEST, "expected Content-Type: application/json")
    assert request.content is not None
    data = request.content.read(limit + 1)
    if len(data) > limit:
        raise RequestError(TOO_LARGE, f"request body larger than {limit} bytes")
    try:
        return loads(data)
    except InvalidJSON as e:
        raise RequestError(BAD_REQUEST, f"the body is not JSON: {e}") from None
    except InvalidValue as e:
        raise RequestError(BAD_ARGUMENTS, str(e)) from None


def error_body(error: ErrorCode, message: str) -> bytes:
    """The JSON body of every error response: the shared error shape."""
    return json.dumps({"error": {"code": error.code, "message": message, "retry": error.retry}}).encode() + b"\n"


def error_response(request: Request, status: int, error: ErrorCode, message: str | None = None) -> bytes:
    """Set C{status} and the JSON headers on C{request}, count the error; return the body to write."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    site = getattr(request, "site", None)
    if site is not None:
        site.metrics.error(error.code)
    return error_body(error, message or error.message)


def _finish_with(request: Request, body: bytes) -> None:
    request.setHeader(b"Content-Length", b"%d" % len(body))
    request.write(body)
    request.finish()


def method_not_supported(request: Request, allowed: Any) -> bytes:
    """405 with an C{Allow} header for a method HTTP defines, 501 for any other; JSON either way."""
    if request.method in KNOWN_METHODS:
        request.setHeader(b"Allow", b", ".join(allowed))
        listed = ", ".join(m.decode("ascii") for m in allowed)
        message = f"{request.method.decode('ascii')} is not allowed here; allowed: {listed}"
        return error_response(request, 405, BAD_REQUEST, message)
    # the method is not echoed: it is the client's text, up to a request line long
    return error_response(request, 501, BAD_REQUEST, "unknown method")


class _JsonMethodErrors:
    """Renders C{resource}; a method it does not support is answered in JSON, not twisted.web's HTML."""

    def __init__(self, resource: Any) -> None:
        self.resource = resource

    def render(self, request: Request) -> Any:
        try:
            return self.resource.render(request)
        except UnsupportedMethod as e:
            if request.method == b"HEAD" and b"GET" in e.allowedMethods:
                raise  # twisted.web answers HEAD with the headers of the GET answer
            return method_not_supported(request, e.allowedMethods)


class _HttpDate:
    """The Date header's value, formatted once a second instead of for every response."""

    second = -1
    value = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.second, cls.value = second, datetimeToString(second)
        return cls.value


class LimitedRequest(Request):
    """A request whose body counts against the limit as it arrives, and whose errors are JSON."""

    channel: LimitedHTTPChannel
    _body_bytes = 0
    received_at: float | None = None  # set when the access log is on

    def gotLength(self, length: int | None) -> None:
        # twisted.web spools bodies of unknown or 100 KB+ length to a temporary file: a file
        # descriptor and disk per request; max_body_size already bounds what is kept in memory
        self.content = BytesIO()  # type: ignore[assignment]  # twisted.web leaves Request.content unannotated (None)

    def handleContentChunk(self, data: bytes) -> None:
        if self.channel.rejected:
            return
        self._body_bytes += len(data)
        limit = self.channel.limits.max_body_size
        if self._body_bytes > limit:
            self.channel.reject(413, b"Content Too Large", TOO_LARGE, f"request body larger than {limit} bytes")
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        """twisted.web's C{Request.process}, with the Date header formatted once a second (it was a tenth of
        the counter page's time)."""
        self.site = self.channel.site  # type: ignore[attr-defined]  # set by twisted.web's Site.buildProtocol
        headers = self.responseHeaders
        headers.setRawHeaders(b"Server", [version])
        headers.setRawHeaders(b"Date", [_HttpDate.now()])
        self.prepath = []
        self.postpath = list(map(unquote, self.path[1:].split(b"/")))
        if self.path == b"*":
            self._handleStar()
            return
        try:
            resrc = self.site.getResourceFor(self)
            if resource._IEncodingResource.providedBy(resrc):
                encoder = resrc.getEncoder(self)
                if encoder is not None:
                    self._encoder = encoder
            self.render(resrc)
        except BaseException:
            self.processingFailed(Failure())

    def render(self, resrc: Any) -> None:
        super().render(_JsonMethodErrors(resrc))

    def _handleStar(self) -> None:
        # "*" is a target for OPTIONS only; twisted.web answers other methods 405 with an empty body
        if self.method == b"OPTIONS":
            super()._handleStar()
            return
        self.setHeader(b"Allow", b"OPTIONS")
        _finish_with(self, error_response(self, 405, BAD_REQUEST, "the target * is for OPTIONS only"))

    def processingFailed(self, reason: Failure) -> Failure:
        """Rendering raised: a L{RequestError} is answered with its code, anything else is logged and 500."""
        if reason.check(RequestError) is not None:
            error: RequestError = reason.value
            status, code, message = http_status(error), error.error, error.detail
        else:
            log.failure(
                "{method} {uri} failed", reason,
                method=self.method.decode("latin-1"), uri=self.uri.decode("latin-1"),
            )
            status, code, message = 500, INTERNAL, INTERNAL.message
        if self.finished or self._disconnected or self.startedWriting:
            # too late for an answer of its own: end the connection, the client sees a truncated response
            if not self._disconnected and self.channel is not None:
                self.channel.loseConnection()
            return reason
        _finish_with(self, error_response(self, status, code, message))
        return reason
