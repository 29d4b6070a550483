"""User accounts: registration, login and password changes against the accounts table, shared by the front ends.

Logins and registrations are limited per client address and per account
(L{myservices.login_limits}); a password change records its time, which
revokes the tokens issued before it (L{myservices.tokens}).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from myservices.db.pool import Txn, is_duplicate_key
from myservices.errors import BAD_ARGUMENTS, LOGIN_FAILED, USERNAME_TAKEN, RequestError
from myservices.login_limits import LimitSettings, LoginLimits, SecondsClock
from myservices.passwords import PasswordHasher
from myservices.settings import DURATION, setting

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
    login_failures_per_address: int = setting(
        10, min=0, max=1_000_000,
        doc="failed logins from one client address within login_failure_window before its logins get "
        "RATE_LIMITED (0: no limit)",
    )
    login_failures_per_account: int = setting(
        20, min=0, max=1_000_000,
        doc="failed logins as one username (existing or not) within login_failure_window before its logins get "
        "RATE_LIMITED (0: no limit)",
    )
    login_failure_window: float = setting(
        300.0, kind=DURATION, min=1, max=86400 * 7, doc="seconds a failed login counts against its address and account"
    )
    registrations_per_address: int = setting(
        10, min=0, max=1_000_000,
        doc="registration attempts from one client address within registration_window (0: no limit)",
    )
    registration_window: float = setting(
        3600.0, kind=DURATION, min=1, max=86400 * 7, doc="seconds a registration attempt counts against its address"
    )
    max_tracked_clients: int = setting(
        10_000, min=100, max=10_000_000,
        doc="addresses (and usernames) each limit remembers; the least recently seen are forgotten first",
    )

    def limit_settings(self) -> LimitSettings:
        return LimitSettings(
            failures_per_address=self.login_failures_per_address,
            failures_per_account=self.login_failures_per_account,
            failure_window=self.login_failure_window,
            registrations_per_address=self.registrations_per_address,
            registration_window=self.registration_window,
            max_tracked=self.max_tracked_clients,
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


@dataclass(frozen=True)
class AccountRecord:
    """An account as stored: its password hash, and when its password last changed (None: never)."""

    account: Account
    password_hash: str
    password_changed_at: float | None


def _find_txn(txn: Txn, username: str) -> tuple[int, str] | None:
    txn.execute("SELECT id, password_hash FROM accounts WHERE username = ?", (username,))
    row = txn.fetchone()
    return (int(row[0]), str(row[1])) if row else None


def _record_txn(txn: Txn, username: str) -> AccountRecord | None:
    txn.execute("SELECT id, password_hash, password_changed_at FROM accounts WHERE username = ?", (username,))
    row = txn.fetchone()
    if row is None:
        return None
    return AccountRecord(Account(int(row[0]), username), str(row[1]), None if row[2] is None else float(row[2]))


def _change_txn(txn: Txn, account_id: int, old_hash: str, new_hash: str, changed_at: float) -> bool:
    """Store the new hash if the old one is still current (a concurrent change wins otherwise)."""
    txn.execute(
        "UPDATE accounts SET password_hash = ?, password_changed_at = ? WHERE id = ? AND password_hash = ?",
        (new_hash, changed_at, account_id, old_hash),
    )
    return txn.rowcount == 1


def _create_txn(txn: Txn, username: str, password_hash: str, created_at: int) -> int | None:
    """The new account's id, or None if the username is taken."""
    try:
        txn.execute(
            "INSERT INTO accounts (username, password_hash, created_at) VALUES (?, ?, ?)",
            (username, password_hash, created_at),
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

    def __init__(
        self, database: Database, hasher: PasswordHasher, config: AccountsConfig, clock: SecondsClock | None = None
    ) -> None:
        self.database = database
        self.hasher = hasher
        self.config = config
        self.clock: Any = clock if clock is not None else _WallClock()
        self.limits = LoginLimits(self.clock, config.limit_settings())

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
        """Create an account; USERNAME_TAKEN if the name is in use, RATE_LIMITED if C{address}
        (the client's IP, None: not limited by address) has tried too many registrations lately."""
        username = check_username(username)
        self.check_password(password)
        self.limits.check_registration(address)
        self.limits.registration_attempted(address)
        # a cheap look first, so a taken name costs no hashing; the unique key settles races
        if await self.database.run(_find_txn, username) is not None:
            raise RequestError(USERNAME_TAKEN, f'username "{username}" is taken')
        password_hash = await self.hasher.hash(password)
        account_id = await self.database.run(_create_txn, username, password_hash, int(self.clock.seconds()))
        if account_id is None:
            raise RequestError(USERNAME_TAKEN, f'username "{username}" is taken')
        self.log.info("account {username} registered", username=username)
        return Account(account_id, username)

    async def authenticate(self, username: str, password: str, address: str | None = None) -> Account:
        """The account if the password matches; LOGIN_FAILED otherwise (unknown user included).

        RATE_LIMITED, before any check, while C{address} (the client's IP; None: not limited by
        address) or the username has had too many failed logins lately (L{myservices.login_limits}).
        """
        try:
            username = check_username(username)
        except RequestError:
            self.limits.check_login(None, address)
            self.limits.login_attempted(None, address)
            raise RequestError(LOGIN_FAILED) from None
        self.limits.check_login(username, address)
        # a failure until it succeeds: concurrent guesses are counted before their hashes are done
        attempted_at = self.limits.login_attempted(username, address)
        try:
            self.check_password(password)
        except RequestError:
            raise RequestError(LOGIN_FAILED) from None
        try:
            found = await self.database.run(_find_txn, username)
            matches = await self.hasher.verify(password, found[1] if found else None)
        except BaseException:
            self.limits.login_unchecked(username, address, attempted_at)  # BUSY, the database down: not a guess
            raise
        if not matches or found is None:
            self.log.info("login failed for {username}", username=username, address=address, code="LOGIN_FAILED")
            raise RequestError(LOGIN_FAILED)
        self.limits.login_succeeded(username, address, attempted_at)
        account = Account(found[0], username)
        if self.hasher.needs_rehash(found[1]):
            try:
                await self.database.run(_set_hash_txn, account.id, await self.hasher.hash(password))
            except Exception:
                # the login itself succeeded; the old hash still works
                self.log.failure("re-hashing the password of {username} failed", username=username)
        return account

    async def change_password(
        self, account: Account | str, old_password: str, new_password: str, address: str | None = None
    ) -> Account:
        """Check C{old_password}, store a hash of C{new_password} and the time of the change.

        The tokens issued before the change are refused from then on. A wrong
        old password is a failed login (LOGIN_FAILED, counted by the limits).
        """
        username = account.username if isinstance(account, Account) else account
        checked = await self.authenticate(username, old_password, address)
        self.check_password(new_password)
        record = await self.database.run(_record_txn, checked.username)
        if record is None or record.account.id != checked.id:
            raise RequestError(LOGIN_FAILED)
        new_hash = await self.hasher.hash(new_password)
        # never earlier than the last change: a clock stepping back must not un-revoke tokens
        changed_at = max(self.clock.seconds(), record.password_changed_at or 0.0)
        if not await self.database.run(_change_txn, checked.id, record.password_hash, new_hash, changed_at):
            raise RequestError(LOGIN_FAILED, "the password was changed meanwhile; log in again")
        self.log.info("password of {username} changed", username=checked.username)
        return checked

    async def record(self, username: str) -> AccountRecord | None:
        """The stored account named C{username} (canonical form), or None."""
        return await self.database.run(_record_txn, username)


class _WallClock:
    """time.time() as a clock, for stores built without one (scripts, tests)."""

    def seconds(self) -> float:
        return time.time()
