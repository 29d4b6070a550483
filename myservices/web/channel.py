"""An HTTP/1.1 channel with the limits twisted.web lacks: body, headers, request time, unread output.

twisted.web buffers any request body, answers header floods with a bare 400,
has only an idle timeout (reset by every byte, so a client sending one byte a
minute holds a connection forever), keeps reading a client that does not read
its responses, and closes on a half-close without answering. Here a request
that breaks a limit is answered with the proper status (413, 431, 414, 408,
400) and a JSON body, and the connection is closed, since the rest of the
stream cannot be trusted; a client that stops reading is not read either; a
client that half-closes gets every answer, then the close.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from zope.interface import implementer

from myservices.errors import BAD_REQUEST, TIMEOUT, TOO_LARGE, ErrorCode
from myservices.listeners import TrackedProtocol, resume_reading_to_close
from myservices.flow import ReadGate
from myservices.web.idle import MovedIdleTimeout
from myservices.web.request import LimitedRequest, error_body

if TYPE_CHECKING:
    from myservices.web.site import HttpSite

# LimitedRequest and error_body live in request.py now; importers of this module still find them
__all__ = ["HttpLimits", "LimitedHTTPChannel", "LimitedRequest", "error_body"]


@dataclass(frozen=True)
class HttpLimits:
    """What one request may be, and what one connection may leave unread."""

    max_body_size: int
    max_header_size: int
    max_headers: int
    request_timeout: float
    max_pending_output: int = 64 * 1024
    max_read_ahead: int = 64 * 1024


def _request_problem(version: bytes, target: bytes, headers: Headers) -> str | None:
    """Why twisted.web's parser should not have let this request through, if it should not have."""
    # it lets bytes 0x7F-0xB0 through (it compares with 176, meant as octal 0o176); code further on
    # takes the target for ASCII, and a URI is ASCII (RFC 3986)
    if not target.isascii() or b"\x7f" in target:
        return "the request target is not ASCII: percent-encode other bytes"
    if version == b"HTTP/1.1":
        hosts = headers.getRawHeaders(b"host")
        if not hosts or len(hosts) > 1:
            return "an HTTP/1.1 request needs exactly one Host header"
    return None


def _head_size(version: bytes, code: bytes, reason: bytes, headers: Any) -> int:
    """Bytes of a response head as HTTPChannel.writeHeaders writes it."""
    pairs = headers.getAllRawHeaders() if isinstance(headers, Headers) else ((n, [v]) for n, v in headers)
    return len(version) + len(code) + len(reason) + 6 + sum(len(n) + len(v) + 4 for n, vs in pairs for v in vs)


@implementer(IHalfCloseableProtocol)
class LimitedHTTPChannel(TrackedProtocol, MovedIdleTimeout, HTTPChannel):
    """HTTPChannel plus limits, flow control, half-close, connection tracking and a graceful close on shutdown.

    The header limits are HTTPChannel's own (C{totalHeadersSize},
    C{maxHeaders}, C{MAX_LENGTH}), which cost nothing extra per request; its
    bare 400 answer is replaced by one that names the limit.

    Flow control: once the transport's buffer is full (the client is not
    reading), response bytes written are counted in C{pending_output}; past
    C{max_pending_output} the channel stops reading and answers no further
    pipelined request until the transport has sent everything. While a
    request is answered, at most C{max_read_ahead} bytes of the following ones
    are read.
    """

    factory: HttpSite
    rejected = False
    _timer: IDelayedCall | None = None
    _timing = False  # a request is being received: its line, headers or body
    _output_full = False  # the transport's buffer is full: the client is not reading
    pending_output = 0  # response bytes written since the transport's buffer filled
    _held = False  # answering and reading wait until the client has read its responses
    _read_ahead = 0  # bytes of later requests read while one is answered
    _read_closed = False  # the client half-closed: answer what it sent, then close

    def connectionMade(self) -> None:
        self.limits: HttpLimits = self.factory.limits
        self.MAX_LENGTH = self.totalHeadersSize = self.limits.max_header_size
        self.maxHeaders = self.limits.max_headers
        super().connectionMade()
        self._networkProducer = self._gate = ReadGate(self._networkProducer)

    def connectionLost(self, reason: Any = None) -> None:
        self._cancel_timer()
        super().connectionLost(reason)

    # --- parsing, with the limits -------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closing_gracefully:
            return  # what TLS still delivers while the close waits for the peer's close_notify
        self.factory.bytes_in += len(data)
        self._parse(data)

    def setLineMode(self, extra: bytes = b"") -> None:
        # HTTPChannel replays what it buffered behind a request through here: parse it, do not count it again
        self.line_mode = 1
        if extra:
            self._parse(extra)

    def _parse(self, data: bytes) -> None:
        if self.rejected:
            return
        if not (self._timing or self._handlingRequest or self._held):
            self._start_timer()
        super().dataReceived(data)
        if self._read_closed:
            self._close_if_done()

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._receivedHeaderSize == 0:  # still in the request line
            self.reject(414, b"URI Too Long", TOO_LARGE, f"request line longer than {self.MAX_LENGTH} bytes")
        else:
            self.reject(
                431, b"Request Header Fields Too Large", TOO_LARGE,
                f"a header line longer than {self.limits.max_header_size} bytes",
            )

    def _respondToBadRequestAndDisconnect(self) -> None:
        # HTTPChannel's answer to any request it cannot parse; say which limit was broken, if one was
        if self._receivedHeaderSize > self.totalHeadersSize:
            self.reject(
                431, b"Request Header Fields Too Large", TOO_LARGE,
                f"request line and headers larger than {self.limits.max_header_size} bytes",
            )
        elif self._receivedHeaderCount > self.maxHeaders:
            self.reject(
                431, b"Request Header Fields Too Large", TOO_LARGE, f"more than {self.limits.max_headers} headers"
            )
        else:
            self.reject(400, b"Bad Request", BAD_REQUEST, "the request is not valid HTTP/1.1")

    def allHeadersReceived(self) -> None:
        if self.rejected:
            return
        problem = _request_problem(self._version, self._path, self.requests[-1].requestHeaders)
        if problem is not None:
            self.reject(400, b"Bad Request", BAD_REQUEST, problem)
            return
        # refuse a declared length before reading any of the body (chunked bodies are counted as they come)
        if self.length is not None and self.length > self.limits.max_body_size:
            self.reject(
                413, b"Content Too Large", TOO_LARGE, f"request body larger than {self.limits.max_body_size} bytes"
            )
            return
        super().allHeadersReceived()

    def rawDataReceived(self, data: bytes) -> None:
        if self.rejected:
            return
        if self._handlingRequest:
            # later requests, read while this one is answered; twisted.web stops bounding these
            # exactly when the client does not read its responses
            self._dataBuffer.append(data)
            self._read_ahead += len(data)
            if self._read_ahead > self.limits.max_read_ahead:
                self._gate.hold("read_ahead")
            return
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if self.rejected:
            return
        self._timing = False  # the timer may stay: it does nothing when it fires between requests
        if self.factory.access_log:
            self.requests[-1].received_at = self.factory.clock.seconds()
        self._request_starts = True
        super().allContentReceived()
        self._request_starts = False  # consumed, or no idle timeout is set

    def requestDone(self, request: Any) -> None:
        if self._held and self._buffer:
            # keep the order: what the parser holds came after what this request's answer waited behind
            self._dataBuffer.append(self.clearLineBuffer())
        if self._read_ahead:
            self._read_ahead = 0
            self._gate.release("read_ahead")
        super().requestDone(request)
        if self._read_closed:
            self._close_if_done()

    # --- flow control: a client that does not read its responses is not read either -----

    def pauseProducing(self) -> None:
        # the transport's buffer is full; count what is written from now on
        if not self._output_full:
            self._output_full = True
            self.pending_output = 0
        super().pauseProducing()

    def resumeProducing(self) -> None:
        # the transport has sent everything: the client reads again
        self._output_full = False
        self.pending_output = 0
        super().resumeProducing()
        if self._held:
            self._go_on()

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        super().writeHeaders(version, code, reason, headers)
        if self._output_full:
            self._count_output(_head_size(version, code, reason, headers))

    def write(self, data: bytes) -> None:
        self.transport.write(data)
        if self._output_full:
            self._count_output(len(data))

    def writeSequence(self, iovec: list[bytes]) -> None:
        self.transport.writeSequence(iovec)
        if self._output_full:
            self._count_output(sum(map(len, iovec)))

    def _count_output(self, n: int) -> None:
        self.pending_output += n
        if self.pending_output > self.limits.max_pending_output and not self._held:
            self._hold()

    def _hold(self) -> None:
        """The client does not read: stop reading it, and parse no further request, until it has read."""
        self._held = True
        self.paused = True  # LineReceiver: leave what is buffered unparsed
        self._gate.hold("output")
        self.factory.metrics.backpressure_pauses.inc()

    def _go_on(self) -> None:
        self._held = False
        self.paused = False
        self._gate.release("output")
        if self._buffer:
            self._parse(b"")  # the requests read before the hold, in order
        self._close_if_done()

    # --- half-close ---------------------------------------------------------------

    def readConnectionLost(self) -> None:
        """The client will send no more (C{shutdown(SHUT_WR)}, C{nc -q}): answer what it sent, then close."""
        if self._read_closed:
            return
        self._read_closed = True
        self._gate.close()
        self._close_if_done()

    def writeConnectionLost(self) -> None:
        """Never happens: the server does not half-close."""

    def _close_if_done(self) -> None:
        # once the parser is done with what it holds, what is left is an incomplete request that can
        # never be completed now
        if self._read_closed and not (
            self._handlingRequest or self._held or self._busyReceiving or self.transport.disconnecting
        ):
            self.loseConnection()

    # --- the request timeout ----------------------------------------------------

    def _start_timer(self) -> None:
        if self._timing:
            return
        self._timing = True
        timeout = self.limits.request_timeout
        if not timeout:
            return
        # one timer per connection, pushed later for each request: moving a timer later is much
        # cheaper than creating and cancelling one per request
        timer = self._timer
        if timer is not None and timer.active():
            timer.reset(timeout)
        else:
            self._timer = self.callLater(timeout, self._request_timed_out)

    def _cancel_timer(self) -> None:
        self._timing = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _request_timed_out(self) -> None:
        self._timer = None
        if self._timing and not self._handlingRequest:
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
        self.factory.count_rejection(status, error)
        body = error_body(error, message)
        head = (
            b"HTTP/1.1 %d %s\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (status, phrase, len(body))
        )
        self.transport.write(head + body)
        # stop reading: a client sending a huge body should not make us read (and drop) all of it
        self._gate.hold("rejected")
        # HTTPChannel's loseConnection leaves the transport's producer first: with a full buffer the
        # transport would otherwise resume this channel when it drains, instead of closing
        self.loseConnection()

    # --- protocol switch ----------------------------------------------------------

    def hand_over(self, protocol: Any, handshake: bytes) -> None:
        """Give this connection to C{protocol} (a WebSocket after an upgrade request), which reads
        C{handshake} first. This channel stops counting, timing and reading the connection."""
        self._cancel_timer()
        self.setTimeout(None)
        self.factory.connection_closed(self)
        transport = self.transport
        # HTTPChannel registered itself to hear when the transport's buffer fills; the new protocol may want to
        self._networkProducer.unregisterProducer()
        # the transport delivers to its protocol; with TLS that is the TLS wrapper's wrapped protocol
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = protocol
        elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
            transport.protocol.wrappedProtocol = protocol
        else:
            transport.protocol = protocol
        protocol.makeConnection(transport)
        transport.resumeProducing()  # HTTPChannel pauses reading while it answers a request
        protocol.dataReceived(handshake)

    # --- closing ------------------------------------------------------------------

    def loseConnection(self) -> None:
        """Every close of this channel (ours, and twisted.web's after a Connection: close response or a
        bad request) is bounded by close_timeout, like every other service's."""
        self.close_gracefully()

    def lose_connection(self) -> None:
        # HTTPChannel's close leaves the transport's producer first: with a full buffer the transport
        # would otherwise resume this channel when it drains, instead of closing
        resume_reading_to_close(self.transport)  # a rejected request stopped reading
        HTTPChannel.loseConnection(self)

    # --- shutdown ---------------------------------------------------------------

    def shutting_down(self) -> None:
        if self._handlingRequest or self.requests:
            # let the request in flight finish; the connection closes after its response
            self.persistent = False
        elif not self.transport.disconnecting:
            self.loseConnection()  # HTTPChannel's: see reject()
