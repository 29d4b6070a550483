"""Which browser origins may open a WebSocket: the server's own host, plus those the config lists."""

from __future__ import annotations

from urllib.parse import urlsplit


def _hostname(netloc: str) -> str | None:
    try:
        return urlsplit("//" + netloc).hostname
    except ValueError:
        return None


def normalize_origin(origin: str) -> str:
    """C{https://Example.com/} -> C{https://example.com}: the form browsers send and the config may use."""
    return origin.strip().rstrip("/").lower()


def origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Whether a handshake with this C{Origin} and C{Host} header may proceed.

    Browsers always send Origin; programs usually do not, and a program is not
    a browser that another site's script could be borrowing, so no Origin is
    allowed. An origin on the same host name as the one the client connected
    to (any port: the chat page on the HTTP port may open the WebSocket port)
    is allowed, as is any listed in C{allowed} ("*" allows every origin).
    The opaque origin "null" (file: pages, sandboxed frames) is allowed only
    when listed.
    """
    if not origin:  # autobahn reports a missing header as ""
        return True
    if "*" in allowed:
        return True
    origin = normalize_origin(origin)
    if origin in {normalize_origin(a) for a in allowed}:
        return True
    if origin == "null" or not host:
        return False
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    return parts.hostname == _hostname(host.strip().lower())
