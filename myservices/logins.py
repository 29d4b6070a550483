"""Logging a hub session in and out: one way for every front end (line chat, WebSocket, framed JSON, PB).

A front end parses its login command (a password, or a token) and calls
L{Logins}; the account becomes the session's identity in the hub (its
username is the nick, reserved everywhere), so every front end checks
passwords, tokens and their limits the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from myservices.accounts import Account, AccountStore, check_username
from myservices.errors import TOKEN_INVALID, UNAUTHENTICATED, RequestError
from myservices.hub import Hub, Session
from myservices.tokens import TokenService


@dataclass(frozen=True)
class LoggedIn:
    """A successful login: the account, and the rooms a token limits it to (None: any room)."""

    account: Account
    rooms: tuple[str, ...] | None = None
    expires_at: float | None = None  # a token's expiry


class Logins:
    """Registration, login (password or token), logout, password change and tokens, on a hub session."""

    def __init__(self, hub: Hub, accounts: AccountStore, tokens: TokenService | None = None) -> None:
        self.hub = hub
        self.accounts = accounts
        self.tokens = tokens

    async def register(self, session: Session | None, username: str, password: str, address: str | None) -> Account:
        """Create an account; its username is reserved as a nick from then on (not logged in by this)."""
        name = check_username(username)
        owner = await self.hub.reserve_for_registration(name, session)
        try:
            return await self.accounts.register(name, password, address=address)
        finally:
            await self.hub.end_registration(name, owner)

    async def login(self, session: Session, username: str, password: str, address: str | None) -> LoggedIn:
        """Check the password; the session becomes the account's (nick = username)."""
        account = await self.accounts.authenticate(username, password, address=address)
        await self.hub.login(session, account.username)
        return LoggedIn(account)

    async def check_token(self, token: str) -> LoggedIn:
        """Who the token names, if its signature, expiry and account hold (TOKEN_INVALID, TOKEN_EXPIRED)."""
        verified = await self._tokens().verify(token)
        rooms = None
        if verified.rooms is not None:
            # as the hub names rooms ("#Support" is "support"), so the claim means what its minter meant
            try:
                rooms = tuple(dict.fromkeys(self.hub.check_room(r) for r in verified.rooms))
            except RequestError as e:
                raise RequestError(TOKEN_INVALID, f"rooms: {e.detail}") from None
        return LoggedIn(verified.account, rooms, verified.expires_at)

    async def login_token(self, session: Session, token: str, address: str | None) -> LoggedIn:
        """Check the token (signature, expiry, revocation); the session becomes its account's."""
        done = await self.check_token(token)
        await self.hub.login(session, done.account.username, done.rooms)
        return done

    async def logout(self, session: Session) -> None:
        await self.hub.logout(session)

    async def change_password(self, session: Session, old: str, new: str, address: str | None) -> None:
        """Change the logged-in account's password; tokens issued before it stop working."""
        username = self._account(session)
        await self.accounts.change_password(username, old, new, address=address)
        # whoever else is logged in as this account here (a stolen password?) is not any more; other
        # processes' connections keep their login until they reconnect, but can mint no token (below)
        await self.hub.logout_account(username, keep=session)

    async def issue_token(
        self, session: Session, account: Account, rooms: Sequence[str] | None = None
    ) -> tuple[str, float]:
        """A new token for the logged-in account (and its expiry, seconds since the epoch).

        TOKEN_INVALID if the password changed since this session logged in: a
        login the change revoked must not outlive it through a fresh token.
        """
        self._account(session)
        record = await self.accounts.record(account.username)
        changed = record.password_changed_at if record is not None else None
        if record is None or changed is not None and (session.logged_in_at or 0) < changed:
            raise RequestError(TOKEN_INVALID, "the password changed since this login: log in again")
        if session.token_rooms is not None:
            # a login limited to some rooms hands out tokens limited to (some of) them, never more
            allowed = session.token_rooms
            rooms = [r for r in rooms if r in allowed] if rooms is not None else sorted(allowed)
        token, expires_at = self._tokens().issue(account, rooms=list(rooms) if rooms is not None else None)
        return token, float(expires_at)

    @staticmethod
    def _account(session: Session) -> str:
        if session.account is None:
            raise RequestError(UNAUTHENTICATED, "log in first")
        return session.account

    def _tokens(self) -> TokenService:
        if self.tokens is None:
            raise RequestError(UNAUTHENTICATED, "tokens are not enabled on this server")
        return self.tokens
