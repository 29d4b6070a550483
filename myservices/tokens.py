"""Signed, expiring login tokens: JWT (RFC 7519) signed with HMAC-SHA256 (HS256) and a shared secret.

A token proves "this is account C{sub} until C{exp}" to any process that
holds the secret, so an application backend can mint tokens for its own users
with the same secret (docs/security.md shows how, with PyJWT). Claims:

- C{sub} (required): the username;
- C{exp} (required): expiry, seconds since the epoch;
- C{iat} (optional): issue time; tokens issued here carry it with sub-second
  precision. A token issued before the account's last password change is
  refused; a token without C{iat} is refused once the password has ever
  changed;
- C{rooms} (optional): the rooms the holder may use, carried for the hub.

Only HS256 is accepted (never C{none}, never another algorithm), a token
longer than L{MAX_TOKEN_LENGTH} is refused before it is parsed, and neither
the secret nor a token is ever logged.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt
from twisted.logger import Logger

from myservices.accounts import Account, check_username
from myservices.errors import BAD_ARGUMENTS, TOKEN_EXPIRED, TOKEN_INVALID, RequestError
from myservices.settings import DURATION, setting

if TYPE_CHECKING:
    from myservices.accounts import AccountStore
    from myservices.config import Config
    from myservices.login_limits import SecondsClock

ALGORITHM = "HS256"
MAX_TOKEN_LENGTH = 4096  # what a cookie can hold, and far more than sub, exp, iat and a few rooms need
MAX_ROOMS = 100
MAX_ROOM_LENGTH = 255
MIN_SECRET_LENGTH = 32  # HS256 wants a key of at least 256 bits (RFC 7518 section 3.2)
ENV_TOKEN_SECRET = "MYSERVICES_TOKEN_SECRET"


@dataclass(frozen=True, kw_only=True)
class TokensConfig:
    """[tokens]: the secret that signs login tokens, and how long they last."""

    secret: str = setting(
        "", secret=True,
        doc=f"HS256 key, at least {MIN_SECRET_LENGTH} characters (prefer {ENV_TOKEN_SECRET}); empty: a random one "
        "per start (tokens do not survive a restart)",
    )
    lifetime: float = setting(
        3600.0, kind=DURATION, min=1, max=86400 * 365, doc="seconds a token issued by the server stays valid"
    )
    leeway: float = setting(
        5.0, kind=DURATION, min=0, max=300, doc="seconds of clock difference tolerated on exp and iat"
    )


def check_tokens(config: Config) -> list[str]:
    """Problems of [tokens] that its declaration cannot say (a Schema check)."""
    secret = config.tokens.secret
    if secret and len(secret) < MIN_SECRET_LENGTH:
        return [f"tokens.secret: expected at least {MIN_SECRET_LENGTH} characters (HS256 needs a 256-bit key)"]
    return []


def generate_secret() -> str:
    """A fresh random secret (for a daemon whose config names none)."""
    return secrets.token_urlsafe(48)


@dataclass(frozen=True)
class VerifiedToken:
    """What a valid token says."""

    account: Account
    rooms: tuple[str, ...] | None
    expires_at: float


def _invalid(detail: str) -> RequestError:
    return RequestError(TOKEN_INVALID, detail)


def _rooms(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list) or len(value) > MAX_ROOMS
        or not all(isinstance(r, str) and 0 < len(r) <= MAX_ROOM_LENGTH for r in value)
    ):
        raise _invalid(f"rooms: expected a list of at most {MAX_ROOMS} room names")
    return tuple(value)


def _number(claims: dict[str, Any], name: str, required: bool) -> float | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _invalid(f"{name}: expected a number (seconds since the epoch)")
    return float(value)


class TokenService:
    """Issues and verifies login tokens (see the module); C{clock} gives the time of both."""

    log = Logger()

    def __init__(
        self, secret: str, accounts: AccountStore, clock: SecondsClock, lifetime: float, leeway: float
    ) -> None:
        self._key = secret.encode("utf-8")
        self.accounts = accounts
        self.clock = clock
        self.lifetime = lifetime
        self.leeway = leeway

    def __repr__(self) -> str:
        return f"<TokenService lifetime={self.lifetime}>"  # never the secret

    @classmethod
    def from_config(cls, config: TokensConfig, accounts: AccountStore, clock: SecondsClock) -> TokenService:
        """The service for C{config}; with no secret configured, a random one and a warning."""
        secret = config.secret
        if not secret:
            secret = generate_secret()
            cls.log.warn(
                "tokens: no secret configured ([tokens] secret or {variable}): using a random one; tokens "
                "do not survive a restart and no other process accepts them",
                variable=ENV_TOKEN_SECRET,
            )
        return cls(secret, accounts, clock, config.lifetime, config.leeway)

    def issue(self, account: Account, rooms: Sequence[str] | None = None) -> tuple[str, int]:
        """A token for C{account} (limited to C{rooms} if given) and when it expires (epoch seconds)."""
        now = self.clock.seconds()
        expires_at = int(now + self.lifetime)  # whole seconds, as most JWT libraries expect of exp
        claims: dict[str, Any] = {"sub": account.username, "iat": now, "exp": expires_at}
        if rooms is not None:
            try:
                if isinstance(rooms, str):
                    raise TypeError("a string is not a list of rooms")
                claims["rooms"] = list(_rooms(list(rooms)) or ())
            except (RequestError, TypeError):
                raise RequestError(BAD_ARGUMENTS, f"rooms: a list of at most {MAX_ROOMS} room names") from None
        return jwt.encode(claims, self._key, algorithm=ALGORITHM), expires_at

    def decode(self, token: str) -> dict[str, Any]:
        """The claims of C{token} if its signature and times are valid (not yet its account)."""
        if not isinstance(token, str) or not token:
            raise _invalid("expected a token (a string)")
        if len(token) > MAX_TOKEN_LENGTH:
            raise _invalid(f"token longer than {MAX_TOKEN_LENGTH} characters")
        try:
            claims = jwt.decode(
                token, self._key, algorithms=[ALGORITHM],
                # times are checked below, against our clock; sub and exp must be there
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False, "require": ["sub", "exp"]},
            )
        except jwt.InvalidAlgorithmError:
            raise _invalid(f"only {ALGORITHM} tokens are accepted") from None
        except jwt.InvalidSignatureError:
            raise _invalid("bad signature") from None
        except jwt.MissingRequiredClaimError as e:
            raise _invalid(f"the {e.claim} claim is missing") from None
        except jwt.InvalidTokenError:
            raise _invalid("malformed token") from None
        if not isinstance(claims, dict):
            raise _invalid("malformed token")
        now = self.clock.seconds()
        expires = _number(claims, "exp", required=True)
        issued = _number(claims, "iat", required=False)
        assert expires is not None
        if expires + self.leeway <= now:
            raise RequestError(TOKEN_EXPIRED)
        if issued is not None and issued > now + self.leeway:
            raise _invalid("issued in the future (iat)")
        return claims

    async def verify(self, token: str) -> VerifiedToken:
        """The account, rooms and expiry of a valid token; TOKEN_EXPIRED or TOKEN_INVALID (with why) otherwise.

        Invalid: malformed, too long, not HS256, a bad signature, an unknown
        account, or issued before the account's last password change.
        """
        claims = self.decode(token)
        sub = claims["sub"]
        if not isinstance(sub, str):
            raise _invalid("sub: expected a username")
        try:
            username = check_username(sub)
        except RequestError:
            raise _invalid("sub: not a valid username") from None
        rooms = _rooms(claims.get("rooms"))
        issued = _number(claims, "iat", required=False)
        record = await self.accounts.record(username)
        if record is None:
            raise _invalid("no such account")
        changed = record.password_changed_at
        if changed is not None and (issued is None or issued < changed):
            raise _invalid("revoked: the password changed after the token was issued")
        return VerifiedToken(record.account, rooms, float(claims["exp"]))
