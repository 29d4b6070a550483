"""/ws in the HTTP site: WebSocket upgrades handed over to the WebSocket service.

A page served by the HTTP service reaches the WebSocket routes on its own
origin (ws://HOST:8080/ws/chat). The upgrade request has been parsed by
twisted.web and passed its limits; the connection then leaves the HTTP site
(it no longer counts there, nor times out as an HTTP request) and joins the
WebSocket service's factory, with its limits, metrics and shutdown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from myservices.errors import BAD_REQUEST, BUSY, ErrorCode
from myservices.web.request import error_response
from myservices.web.resources import finish

if TYPE_CHECKING:
    from myservices.web.channel import LimitedHTTPChannel
    from myservices.web.site import HttpSite
    from myservices.websocket.protocol import WebSocketFactory


class WebSocketMount(Resource):
    """Hands /ws/ROUTE upgrade requests to C{factory} as if they had arrived on its own port at /ROUTE."""

    isLeaf = True

    def __init__(self, factory: WebSocketFactory, site: HttpSite) -> None:
        super().__init__()
        self.factory = factory
        self.site = site

    def render(self, request: Request) -> bytes | int:
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if b"websocket" not in upgrade:
            request.setHeader(b"Upgrade", b"websocket")
            return self._error(
                request, 426, BAD_REQUEST, "this is a WebSocket endpoint: connect with a WebSocket client"
            )
        if self.factory.full:
            request.setHeader(b"Retry-After", b"1")
            return self._error(request, 503, BUSY, BUSY.message)
        # the path below the mount as the client sent it: postpath is percent-decoded, and a decoded
        # space or CR LF would break (or add lines to) the request replayed below
        target = b"/" + b"/".join(request.path.split(b"/")[1 + len(request.prepath or ()):])
        _, question, query = request.uri.partition(b"?")
        lines = [request.method + b" " + target + question + query + b" HTTP/1.1"]
        for name, values in request.requestHeaders.getAllRawHeaders():
            lines.extend(name + b": " + value for value in values)
        handshake = b"\r\n".join(lines) + b"\r\n\r\n"
        protocol = self.factory.buildProtocol(request.getClientAddress())
        self.site.count_upgrade()
        cast("LimitedHTTPChannel", request.channel).hand_over(protocol, handshake)  # HttpSite's channel
        return NOT_DONE_YET

    def _error(self, request: Request, status: int, error: ErrorCode, message: str) -> int:
        finish(request, error_response(request, status, error, message))
        return NOT_DONE_YET
