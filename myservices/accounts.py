"""User accounts: registration and login against the accounts table, shared by the framed and PB services."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.logger import Logger

from myservices.db.pool import Txn, is_duplicate_key
from myservices.errors import BAD_ARGUMENTS, LOGIN_FAILED, USERNAME_TAKEN, RequestError
from myservices.passwords import PasswordHasher
from myservices.settings import setting

if TYPE_CHECKING:
    from myservices.db import Database


@dataclass(frozen=True, kw_only=True)
class AccountsConfig:
    """[accounts]: password rules and the cost of the password hash."""

    min_password_length: int = setting(8, min=1, max=1024, doc="shortest password accepted at registration (characters)")
    max_password_length: int = setting(
        1024, min=8, max=4096, doc="longest password accepted (characters); bounds the work one login costs"
    )
    scrypt_cost: int = setting(
        14, min=10, max=20,
        doc="scrypt N = 2**scrypt_cost; each check takes 128 * 8 * N bytes (16 MiB at 14) and tens of ms;"
        " raising it later re-hashes each password at its next login",
    )
    hash_concurrency: int = setting(2, min=1, max=64, doc="password checks run at once (threads of their own pool)")
    max_hash_queue: int = setting(
        256, min=1, max=100_000, doc="password checks queued before new logins fail with BUSY"
    )


@dataclass(frozen=True)
class Account:
    """A registered user."""

    id: int
    username: str


_USERNAME_RE = re.compile(r"[a-z][a-z0-9_-]{2,31}")
_GUEST_RE = re.compile(r"guest[0-9]*")  # the hub's guest nicks


def check_username(username: str) -> str:
    """The canonical (lower case) username, or RequestError; usernames are valid nicks too."""
    canonical = username.lower()
    if not _USERNAME_RE.fullmatch(canonical):
        raise RequestError(
            BAD_ARGUMENTS, "username: 3 to 32 letters, digits, _ or -, starting with a letter (case does not matter)"
        )
    if _GUEST_RE.fullmatch(canonical):
        raise RequestError(BAD_ARGUMENTS, 'username: "guest" followed by digits is how guests are named')
    return canonical


def _find_txn(txn: Txn, username: str) -> tuple[int, str] | None:
    txn.execute("SELECT id, password_hash FROM accounts WHERE username = ?", (username,))
    row = txn.fetchone()
    return (int(row[0]), str(row[1])) if row else None


def _create_txn(txn: Txn, username: str, password_hash: str) -> int | None:
    """The new account's id, or None if the username is taken."""
    try:
        txn.execute(
            "INSERT INTO accounts (username, password_hash, created_at) VALUES (?, ?, ?)",
            (username, password_hash, int(time.time())),
        )
    except Exception as e:
        if is_duplicate_key(e):
            return None
        raise
    if txn.lastrowid:
        return int(txn.lastrowid)
    return _find_txn(txn, username)[0]  # type: ignore[index]


def _set_hash_txn(txn: Txn, account_id: int, password_hash: str) -> None:
    txn.execute("UPDATE accounts SET password_hash = ? WHERE id = ?", (password_hash, account_id))


class AccountStore:
    """Registers and authenticates accounts; passwords are hashed with scrypt off the reactor thread.

    A password is never stored, logged or kept after the call. A failed login
    says only "wrong username or password" and takes as long whether or not
    the user exists, so it does not reveal which usernames are registered.
    """

    log = Logger()

    def __init__(self, database: Database, hasher: PasswordHasher, config: AccountsConfig) -> None:
        self.database = database
        self.hasher = hasher
        self.config = config

    def check_password(self, password: str) -> str:
        lo, hi = self.config.min_password_length, self.config.max_password_length
        if not lo <= len(password) <= hi:
            raise RequestError(BAD_ARGUMENTS, f"password: {lo} to {hi} characters")
        return password

    async def exists(self, username: str) -> bool:
        """Whether C{username} (lower case) is a registered account: its nick is reserved."""
        try:
            check_username(username)
        except RequestError:
            return False  # not even a possible username
        return await self.database.run(_find_txn, username) is not None

    async def register(self, username: str, password: str, address: str | None = None) -> Account:
        """Create an account; USERNAME_TAKEN if the name is in use."""
        username = check_username(username)
        self.check_password(password)
        # a cheap look first, so a taken name costs no hashing; the unique key settles races
        if await self.database.run(_find_txn, username) is not None:
            raise RequestError(USERNAME_TAKEN, f'username "{username}" is taken')
        password_hash = await self.hasher.hash(password)
        account_id = await self.database.run(_create_txn, username, password_hash)
        if account_id is None:
            raise RequestError(USERNAME_TAKEN, f'username "{username}" is taken')
        self.log.info("account {username} registered", username=username)
        return Account(account_id, username)

    async def authenticate(self, username: str, password: str, address: str | None = None) -> Account:
        """The account if the password matches; LOGIN_FAILED otherwise (unknown user included)."""
        try:
            username = check_username(username)
            self.check_password(password)
        except RequestError:
            raise RequestError(LOGIN_FAILED) from None
        found = await self.database.run(_find_txn, username)
        stored = found[1] if found else None
        if not await self.hasher.verify(password, stored) or found is None:
            self.log.info("login failed for {username}", username=username, code="LOGIN_FAILED")
            raise RequestError(LOGIN_FAILED)
        account = Account(found[0], username)
        if self.hasher.needs_rehash(found[1]):
            try:
                await self.database.run(_set_hash_txn, account.id, await self.hasher.hash(password))
            except Exception:
                # the login itself succeeded; the old hash still works
                self.log.failure("re-hashing the password of {username} failed", username=username)
        return account
