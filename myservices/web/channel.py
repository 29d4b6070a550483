"""An HTTP/1.1 channel with the limits twisted.web lacks: body size, header size and count, request time.

twisted.web buffers any request body, answers header floods with a bare 400
and has only an idle timeout (reset by every byte, so a client sending one
byte a minute holds a connection forever). Here a request that breaks a
limit is answered with the proper status (413, 431, 414, 408) and a JSON
body, and the connection is closed, since the rest of the stream cannot be
trusted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall
from twisted.web.http import HTTPChannel
from twisted.web.server import Request

from myservices.errors import TIMEOUT, TOO_LARGE, ErrorCode
from myservices.listeners import TrackedProtocol

if TYPE_CHECKING:
    from myservices.web.site import HttpSite


@dataclass(frozen=True)
class HttpLimits:
    """What one request may be."""

    max_body_size: int
    max_header_size: int
    max_headers: int
    request_timeout: float


def error_body(error: ErrorCode, message: str) -> bytes:
    """The JSON body of every error response: the shared error shape."""
    return json.dumps({"error": {"code": error.code, "message": message, "retry": error.retry}}).encode() + b"\n"


class LimitedRequest(Request):
    """A request that counts a chunked body against the limit as it arrives."""

    channel: LimitedHTTPChannel

    def __init__(self, channel: LimitedHTTPChannel, *args: Any, **kw: Any) -> None:
        super().__init__(channel, *args, **kw)
        self.received_at = channel.factory.clock.seconds()
        self._body_bytes = 0

    def handleContentChunk(self, data: bytes) -> None:
        if self.channel.rejected:
            return
        self._body_bytes += len(data)
        limit = self.channel.limits.max_body_size
        if self._body_bytes > limit:
            self.channel.reject(413, b"Content Too Large", TOO_LARGE, f"request body larger than {limit} bytes")
            return
        super().handleContentChunk(data)


class LimitedHTTPChannel(TrackedProtocol, HTTPChannel):
    """HTTPChannel plus limits, connection tracking and a graceful close on shutdown."""

    factory: HttpSite
    rejected = False
    _timer: IDelayedCall | None = None
    _header_bytes = 0
    _header_count = 0

    def connectionMade(self) -> None:
        self.limits: HttpLimits = self.factory.limits
        # our own accounting answers with 431/414 before HTTPChannel's bare 400 could
        self.MAX_LENGTH = self.limits.max_header_size
        self.totalHeadersSize = self.maxHeaders = 2**62
        super().connectionMade()

    def connectionLost(self, reason: Any = None) -> None:
        self._cancel_timer()
        super().connectionLost(reason)

    # --- parsing, with the limits -------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.rejected:
            return
        if not self._handlingRequest:
            self._start_timer()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self.rejected:
            return
        self._start_timer()  # pipelined requests arrive here without dataReceived
        self._header_bytes += len(line) + 2
        if self._header_bytes > self.limits.max_header_size:
            self._headers_too_large()
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._header_bytes == 0:
            self.reject(414, b"URI Too Long", TOO_LARGE, f"request line longer than {self.MAX_LENGTH} bytes")
        else:
            self._headers_too_large()

    def headerReceived(self, line: bytes) -> bool:
        if self.rejected:
            return False
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self.reject(
                431, b"Request Header Fields Too Large", TOO_LARGE, f"more than {self.limits.max_headers} headers"
            )
            return False
        return super().headerReceived(line)

    def allHeadersReceived(self) -> None:
        if self.rejected:
            return
        # refuse a declared length before reading any of the body (chunked bodies are counted as they come)
        if self.length is not None and self.length > self.limits.max_body_size:
            self.reject(
                413, b"Content Too Large", TOO_LARGE, f"request body larger than {self.limits.max_body_size} bytes"
            )
            return
        super().allHeadersReceived()

    def rawDataReceived(self, data: bytes) -> None:
        if not self.rejected:
            super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if self.rejected:
            return
        self._cancel_timer()
        self._header_bytes = self._header_count = 0
        super().allContentReceived()

    def _headers_too_large(self) -> None:
        self.reject(
            431, b"Request Header Fields Too Large", TOO_LARGE,
            f"request line and headers larger than {self.limits.max_header_size} bytes",
        )

    # --- the request timeout ----------------------------------------------------

    def _start_timer(self) -> None:
        if self._timer is None and self.limits.request_timeout:
            self._timer = self.callLater(self.limits.request_timeout, self._request_timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _request_timed_out(self) -> None:
        self._timer = None
        if not self._handlingRequest:
            self.reject(
                408, b"Request Timeout", TIMEOUT,
                f"the request was not received within {self.limits.request_timeout:g}s",
            )

    # --- answering a broken request -------------------------------------------

    def reject(self, status: int, phrase: bytes, error: ErrorCode, message: str) -> None:
        """Answer C{status} with a JSON error, stop reading and close: the stream is not trustworthy."""
        if self.rejected:
            return
        self.rejected = True
        self._cancel_timer()
        self.factory.count_rejection(status)
        body = error_body(error, message)
        head = (
            b"HTTP/1.1 %d %s\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (status, phrase, len(body))
        )
        self.transport.write(head + body)
        # stop reading: a client sending a huge body should not make us read (and drop) all of it
        self.transport.pauseProducing()
        self.transport.loseConnection()

    # --- shutdown ---------------------------------------------------------------

    def shutting_down(self) -> None:
        if self._handlingRequest or self.requests:
            # let the request in flight finish; the connection closes after its response
            self.persistent = False
        else:
            super().shutting_down()
