"""The server API's keys and limits: C{[api]}, the bearer-key check and one token bucket per key.

A key is compared with C{hmac.compare_digest} against every configured key
(their SHA-256 digests, so every comparison takes the same time whatever the
lengths), without stopping at a match: the time does not tell which key
matched, nor how much of one. Keys are never logged and never shown by a
config dump (the setting is secret); only their digests are kept here.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass
from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

from myservices.config import Config
from myservices.config_env import ENV_API_KEY, MIN_API_KEY_LENGTH
from myservices.errors import FORBIDDEN, NICK_INVALID, RATE_LIMITED, UNAUTHENTICATED, RequestError
from myservices.hub.rules import check_nick
from myservices.ratelimit import TokenBucket
from myservices.settings import SIZE, STRINGS, KiB, MiB, setting

MIN_KEY_LENGTH = MIN_API_KEY_LENGTH
NO_KEY_MESSAGE = (
    f"the server API has no key configured: set [api] keys or {ENV_API_KEY} (see docs/api.md)"
)


@dataclass(frozen=True, kw_only=True)
class ApiConfig:
    """[api]: the server API on the HTTP service (/api/publish, /api/rooms, ...): its keys and limits."""

    keys: tuple[str, ...] = setting(
        (), kind=STRINGS, secret=True,
        doc=f"bearer keys, each at least {MIN_KEY_LENGTH} characters (prefer {ENV_API_KEY}, which adds one); "
        "none: the key-protected routes answer 403",
    )
    nick: str = setting("api", doc="the nick of messages published without one")
    rate: float = setting(50.0, min=0.01, max=1_000_000, doc="requests per second per key, on average")
    burst: int = setting(
        100, min=1, max=1_000_000, doc="requests a key may make at once; a broadcast costs one per room"
    )
    max_body_size: int = setting(64 * KiB, kind=SIZE, min=256, max=16 * MiB, doc="largest request body; larger get 413")
    max_broadcast_rooms: int = setting(100, min=1, max=10_000, doc="most rooms in one broadcast")


def check_api(config: Config) -> list[str]:
    """Problems of [api] that its declaration cannot say (a Schema check); never shows a key."""
    api: ApiConfig = config.api
    problems = []
    for i, key in enumerate(api.keys):
        if len(key) < MIN_KEY_LENGTH or key != key.strip():
            problems.append(
                f"api.keys: key {i + 1} of {len(api.keys)}: expected at least {MIN_KEY_LENGTH} characters, "
                "without spaces around them"
            )
    try:
        check_nick(config.hub, api.nick)
    except RequestError as e:
        problems.append(f"api.nick: {e.detail}" if e.error is NICK_INVALID else f"api.nick: {e}")
    if api.max_broadcast_rooms > api.burst:
        problems.append("api.max_broadcast_rooms: expected at most api.burst (a broadcast costs one token per room)")
    return problems


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def bearer(request: Request) -> bytes | None:
    """The credentials of an C{Authorization: Bearer ...} header, or None."""
    header = request.getHeader(b"authorization")
    if header is None:
        return None
    scheme, _, credentials = header.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not credentials.strip():
        return None
    return credentials.strip()


class ApiKeys:
    """Checks the bearer key of a request and charges it: one L{TokenBucket} per key, on C{clock}."""

    def __init__(self, keys: tuple[str, ...], rate: float, burst: int, clock: IReactorTime) -> None:
        self._digests = [_digest(k.encode("utf-8")) for k in keys]
        self._buckets = [TokenBucket(rate, burst, clock) for _ in keys]
        self.rate = rate

    def __repr__(self) -> str:
        return f"<ApiKeys {len(self._digests)} keys>"  # never a key

    @property
    def configured(self) -> bool:
        return bool(self._digests)

    def authenticate(self, request: Request) -> int:
        """The index of the request's key; FORBIDDEN when none is configured, UNAUTHENTICATED if it is wrong."""
        if not self._digests:
            raise RequestError(FORBIDDEN, NO_KEY_MESSAGE)
        given = bearer(request)
        if given is None:
            raise RequestError(UNAUTHENTICATED, "send the API key as Authorization: Bearer KEY")
        digest = _digest(given)
        found = -1
        for i, known in enumerate(self._digests):
            # every key is compared, with no early exit
            match = hmac.compare_digest(digest, known)
            found = i if match else found
        if found < 0:
            raise RequestError(UNAUTHENTICATED, "wrong API key")
        return found

    def charge(self, key: int, cost: int = 1) -> None:
        """Take C{cost} tokens from the bucket of key number C{key}, or RATE_LIMITED with when to retry."""
        bucket = self._buckets[key]
        if not bucket.allow(cost):
            wait = bucket.wait(cost)
            raise RequestError(
                RATE_LIMITED, f"at most {self.rate:g} requests per second per key (a broadcast costs one per room)",
                retry_after=max(1, math.ceil(wait)),
            )
