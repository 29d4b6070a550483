"""The framed JSON wire format: a 12-byte header (version, body length, command id), then a JSON body.

Both the server and the Python client use this module; docs/protocols.md
describes the same format byte by byte for clients in other languages.
"""

from __future__ import annotations

import json
import json.encoder
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

from myservices.errors import TOO_LARGE, UNSUPPORTED_VERSION, ErrorCode

VERSION = 1
HEADER = struct.Struct("!III")  # network byte order: version, body length, command id
HEADER_SIZE = HEADER.size
MAX_ID = 2**53 - 1  # request ids stay exact in every JSON implementation, JavaScript's included


class Frame(NamedTuple):
    """One decoded frame; C{body} is the raw (not yet decoded) JSON body (a tuple: one per request, made cheaply)."""

    version: int
    command: int
    body: bytes


class FrameError(Exception):
    """The stream cannot be trusted any more (wrong version, oversize body): answer, then close.

    C{command} is the header's command id, so the error reply can carry it.
    """

    def __init__(self, error: ErrorCode, detail: str, command: int) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail
        self.command = command


class FrameDecoder:
    """Turns a byte stream, split or coalesced in any way, into L{Frame}s.

    A header is checked as soon as its 12 bytes are in: a wrong version or a
    declared length over C{max_body_size} raises L{FrameError} before any of
    the body is buffered. The buffer never holds more than what was fed and
    not yet taken: the caller stops reading from the socket when it has
    enough frames to work on.
    """

    def __init__(self, max_body_size: int) -> None:
        self.max_body_size = max_body_size
        self._buffer = bytearray()
        self._pos = 0
        self._header: tuple[int, int, int] | None = None

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as part of a frame."""
        return len(self._buffer) - self._pos

    @property
    def incomplete(self) -> bool:
        """Part of a frame has arrived, and not the rest (once L{next_frame} has returned None)."""
        return self._header is not None or self.buffered > 0

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes are fed."""
        buf, pos = self._buffer, self._pos
        header = self._header
        if header is None:
            if len(buf) - pos < HEADER_SIZE:
                self._compact()
                return None
            header = HEADER.unpack_from(buf, pos)
            version, length, command = header
            if version != VERSION:
                raise FrameError(
                    UNSUPPORTED_VERSION, f"protocol version {version} is not supported (this server speaks {VERSION})",
                    command,
                )
            if length > self.max_body_size:
                raise FrameError(
                    TOO_LARGE, f"body of {length} bytes is over the limit of {self.max_body_size} bytes", command
                )
            pos += HEADER_SIZE
            self._pos = pos
            self._header = header
        version, length, command = header
        end = pos + length
        if len(buf) < end:
            self._compact()
            return None
        body = bytes(buf[pos:end])
        self._pos = end
        self._header = None
        return Frame(version, command, body)

    def _compact(self) -> None:
        # drop what was consumed, so a long-lived connection does not keep it
        if self._pos:
            del self._buffer[: self._pos]
            self._pos = 0


def encode_frame(command: int, body: bytes) -> bytes:
    """A whole frame: header and C{body} (already UTF-8 JSON)."""
    return HEADER.pack(VERSION, len(body), command) + body


def _not_json(o: Any) -> Any:
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


_dumps: Callable[[Any], str] = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)  # None without the C accelerator
if _c_make_encoder is not None:
    # what the encoder above does, without building the C encoder anew for every call; no circular check
    # (markers=None): values come from JSON text or from our handlers, and a cycle would end in
    # RecursionError instead of ValueError
    _c_encode = _c_make_encoder(None, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, False)

    def _dumps(obj: Any) -> str:
        return "".join(_c_encode(obj, 0))


def encode_json(command: int, obj: dict[str, Any]) -> bytes:
    """A whole frame carrying C{obj} as compact UTF-8 JSON."""
    return encode_frame(command, _dumps(obj).encode("utf-8"))


def encode_reply(command: int, request_id: int, result: Any) -> bytes:
    """The frame of a successful reply, byte for byte C{encode_json(command, {"id": ..., "ok": True, "result": ...})}.

    Only the result goes through the encoder (every reply is one, so this is the hot path).
    """
    body = b'{"id":%d,"ok":true,"result":%b}' % (request_id, _dumps(result).encode("utf-8"))
    return HEADER.pack(VERSION, len(body), command) + body


