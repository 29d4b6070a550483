"""Login tokens: issue, verify, expiry, tampering, algorithms, size, revocation by a password change."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from myservices.accounts import AccountStore
from myservices.db.migrations import _password_changed_at
from myservices.errors import BAD_ARGUMENTS, LOGIN_FAILED, TOKEN_EXPIRED, TOKEN_INVALID, RequestError
from myservices.tokens import MAX_TOKEN_LENGTH, TokensConfig, TokenService, check_tokens
from tests import mysql
from tests.accountstore import NOW, account_store
from tests.support import load

SECRET = "s3cret-" * 10  # 70 bytes: long enough for HS512 too, so PyJWT does not warn


class TokenTests(TestCase):
    def database_url(self) -> str | None:
        return None  # SQLite

    async def setup(self, **kw: Any) -> tuple[TokenService, AccountStore, Clock]:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.accounts = await account_store(self, self.clock, url=self.database_url())
        self.alice = await self.accounts.register("alice", "password1")
        self.tokens = TokenService(SECRET, self.accounts, self.clock, kw.get("lifetime", 3600.0), kw.get("leeway", 5.0))
        return self.tokens, self.accounts, self.clock

    async def assert_refused(self, token: Any, error: Any = TOKEN_INVALID, detail: str | None = None) -> None:
        try:
            await self.tokens.verify(token)
        except RequestError as e:
            self.assertIs(e.error, error, e)
            if detail is not None:
                self.assertIn(detail, e.detail)
        else:
            self.fail(f"{token!r} was accepted")

    async def test_issued_token_verifies_with_its_account_rooms_and_expiry(self) -> None:
        tokens, _, _ = await self.setup()
        token, expires_at = tokens.issue(self.alice, rooms=["lobby", "dev"])
        self.assertEqual(expires_at, NOW + 3600)
        verified = await tokens.verify(token)
        self.assertEqual(verified.account, self.alice)
        self.assertEqual(verified.rooms, ("lobby", "dev"))
        self.assertEqual(verified.expires_at, expires_at)
        plain, _ = tokens.issue(self.alice)
        self.assertIsNone((await tokens.verify(plain)).rooms)
        claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False})
        self.assertEqual(set(claims), {"sub", "iat", "exp", "rooms"})
        self.assertEqual((claims["sub"], claims["iat"]), ("alice", NOW))

    async def test_expired_after_lifetime_and_leeway(self) -> None:
        tokens, _, clock = await self.setup(lifetime=60.0, leeway=5.0)
        token, _ = tokens.issue(self.alice)
        clock.advance(64)
        await tokens.verify(token)  # expired a few seconds ago, within the leeway
        clock.advance(1)
        await self.assert_refused(token, TOKEN_EXPIRED)

    async def test_tampered_payload_or_signature_is_refused(self) -> None:
        tokens, _, _ = await self.setup()
        token, _ = tokens.issue(self.alice)
        header, payload, signature = token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
        claims["sub"] = "mallory"
        forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        await self.assert_refused(f"{header}.{forged}.{signature}", detail="bad signature")
        flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
        await self.assert_refused(f"{header}.{payload}.{flipped}", detail="bad signature")
        other = jwt.encode({"sub": "alice", "exp": int(NOW) + 60}, "another-secret-" * 4, algorithm="HS256")
        await self.assert_refused(other, detail="bad signature")

    async def test_only_hs256_is_accepted(self) -> None:
        tokens, _, _ = await self.setup()
        claims = {"sub": "alice", "exp": int(NOW) + 60}
        await self.assert_refused(jwt.encode(claims, None, algorithm="none"), detail="HS256")
        await self.assert_refused(jwt.encode(claims, SECRET, algorithm="HS512"), detail="HS256")
        # "none" written by hand, with the signature part left empty
        header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        await self.assert_refused(f"{header}.{body}.")

    async def test_oversized_malformed_and_incomplete_tokens_are_refused(self) -> None:
        tokens, _, _ = await self.setup()
        await self.assert_refused("x" * (MAX_TOKEN_LENGTH + 1), detail="longer than")
        big = jwt.encode({"sub": "alice", "exp": int(NOW) + 60, "pad": "x" * MAX_TOKEN_LENGTH}, SECRET)
        await self.assert_refused(big, detail="longer than")
        for junk in ("", "abc", "a.b.c", None, 42):
            await self.assert_refused(junk)
        await self.assert_refused(jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"), detail="exp")
        await self.assert_refused(jwt.encode({"exp": int(NOW) + 60}, SECRET, algorithm="HS256"), detail="sub")
        await self.assert_refused(jwt.encode({"sub": "alice", "exp": "soon"}, SECRET, algorithm="HS256"))
        # Python's JSON reads NaN and Infinity: a token that never expires is refused, not kept forever
        for never in ("NaN", "Infinity", "1e999"):
            body = base64.urlsafe_b64encode(f'{{"sub": "alice", "exp": {never}}}'.encode()).rstrip(b"=").decode()
            header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
            mac = hmac.new(SECRET.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
            signature = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
            await self.assert_refused(f"{header}.{body}.{signature}", detail="exp")
        bad_rooms = {"sub": "alice", "exp": int(NOW) + 60, "rooms": "lobby"}
        await self.assert_refused(jwt.encode(bad_rooms, SECRET, algorithm="HS256"), detail="rooms")
        future = {"sub": "alice", "exp": int(NOW) + 600, "iat": NOW + 60}
        await self.assert_refused(jwt.encode(future, SECRET, algorithm="HS256"), detail="future")

    async def test_unknown_account_is_refused(self) -> None:
        tokens, _, _ = await self.setup()
        token = jwt.encode({"sub": "nobody", "exp": int(NOW) + 60}, SECRET, algorithm="HS256")
        await self.assert_refused(token, detail="no such account")
        await self.assert_refused(jwt.encode({"sub": "Not A Name!", "exp": int(NOW) + 60}, SECRET), detail="sub")

    async def test_backend_minted_token_without_iat_is_accepted_until_a_password_change(self) -> None:
        tokens, accounts, clock = await self.setup()
        minted = jwt.encode({"sub": "Alice", "exp": int(NOW) + 600, "rooms": ["vip"]}, SECRET, algorithm="HS256")
        verified = await tokens.verify(minted)
        self.assertEqual((verified.account, verified.rooms), (self.alice, ("vip",)))
        clock.advance(1)
        await accounts.change_password("alice", "password1", "password2")
        await self.assert_refused(minted, detail="revoked")

    async def test_a_password_change_revokes_tokens_issued_before_it_not_after(self) -> None:
        tokens, accounts, clock = await self.setup()
        before, _ = tokens.issue(self.alice)
        clock.advance(0.001)
        await accounts.change_password(self.alice, "password1", "password2")
        clock.advance(0.001)
        after, _ = tokens.issue(self.alice)
        await self.assert_refused(before, detail="revoked")
        self.assertEqual((await tokens.verify(after)).account, self.alice)
        # the new password logs in, the old one no longer does
        self.assertEqual(await accounts.authenticate("alice", "password2"), self.alice)
        try:
            await accounts.authenticate("alice", "password1")
        except RequestError as e:
            self.assertIs(e.error, LOGIN_FAILED)
        else:
            self.fail("the old password still logs in")

    async def test_change_password_checks_the_old_one_and_the_new_ones_rules(self) -> None:
        _, accounts, _ = await self.setup()
        with self.assertRaises(RequestError) as wrong:
            await accounts.change_password("alice", "not-it-at-all", "password2")
        self.assertIs(wrong.exception.error, LOGIN_FAILED)
        with self.assertRaises(RequestError) as short:
            await accounts.change_password("alice", "password1", "short")
        self.assertIs(short.exception.error, BAD_ARGUMENTS)
        record = await accounts.record("alice")
        self.assertIsNone(record.password_changed_at)

    async def test_rooms_are_bounded_when_issuing(self) -> None:
        tokens, _, _ = await self.setup()
        for rooms in ([f"r{i}" for i in range(101)], "lobby", [""], [1]):
            with self.assertRaises(RequestError) as e:
                tokens.issue(self.alice, rooms=rooms)  # type: ignore[arg-type]
            self.assertIs(e.exception.error, BAD_ARGUMENTS)
        token, _ = tokens.issue(self.alice, rooms=())
        self.assertEqual((await tokens.verify(token)).rooms, ())

    async def test_neither_secret_nor_token_is_logged_or_in_reprs(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        tokens, accounts, _ = await self.setup()
        generated = TokenService.from_config(TokensConfig(), accounts, Clock())
        token, _ = tokens.issue(self.alice)
        await tokens.verify(token)
        await self.assert_refused(token[:-3] + "abc")
        self.assertTrue(any("random" in str(e.get("log_format")) for e in events), "no warning about the secret")
        text = repr(events) + repr(tokens) + repr(generated) + repr(TokensConfig(secret=SECRET))
        for secret in (SECRET, generated._key.decode(), token):
            self.assertNotIn(secret, text)


@pytest.mark.mysql
class MySQLRevocationTests(TestCase):
    """The time of a password change keeps its sub-second precision in MySQL's DOUBLE."""

    timeout = 30

    async def test_a_password_change_revokes_tokens_issued_a_millisecond_before_it(self) -> None:
        clock = Clock()
        clock.advance(NOW + 0.123456)
        accounts = await account_store(self, clock, url=mysql.create_database(self))
        alice = await accounts.register("alice", "password1")
        tokens = TokenService(SECRET, accounts, clock, 3600.0, 5.0)
        before, _ = tokens.issue(alice)
        clock.advance(0.001)
        await accounts.change_password("alice", "password1", "password2")
        self.assertEqual((await accounts.record("alice")).password_changed_at, NOW + 0.124456)
        clock.advance(0.001)
        after, _ = tokens.issue(alice)
        self.assertEqual((await tokens.verify(after)).account, alice)
        with self.assertRaises(RequestError) as e:
            await tokens.verify(before)
        self.assertIs(e.exception.error, TOKEN_INVALID)

    async def test_the_migration_can_run_again(self) -> None:
        accounts = await account_store(self, url=mysql.create_database(self))
        await accounts.database.run(_password_changed_at)
        self.assertIsNone(await accounts.record("nobody"))


class MigrationTests(TestCase):
    async def test_the_migration_can_run_again_on_sqlite(self) -> None:
        accounts = await account_store(self)
        await accounts.database.run(_password_changed_at)
        await accounts.register("alice", "password1")
        self.assertIsNone((await accounts.record("alice")).password_changed_at)


class TokenConfigTests(TestCase):
    def test_secret_from_the_environment_and_its_minimum_length(self) -> None:
        config = load(self, "", environ={"MYSERVICES_TOKEN_SECRET": SECRET})
        self.assertEqual(config.tokens.secret, SECRET)
        self.assertEqual(check_tokens(config), [])
        self.assertEqual(config.tokens.lifetime, 3600.0)
        generic = load(self, "", environ={"MYSERVICES__TOKENS__SECRET": SECRET})
        self.assertEqual(generic.tokens.secret, SECRET)
        from myservices.config import ConfigError

        secret_file = self.mktemp()
        with open(secret_file, "w") as f:
            f.write(SECRET + "\n")
        from_file = load(self, "", environ={"MYSERVICES_TOKEN_SECRET_FILE": secret_file, "MYSERVICES_TOKEN_SECRET": "x"})
        self.assertEqual(from_file.tokens.secret, SECRET)  # the file wins, as for the database password
        with self.assertRaises(ConfigError) as missing:
            load(self, "", environ={"MYSERVICES_TOKEN_SECRET_FILE": "/nonexistent/secret"})
        self.assertIn("MYSERVICES_TOKEN_SECRET_FILE: cannot read /nonexistent/secret", str(missing.exception))
        with self.assertRaises(ConfigError) as e:
            load(self, '[tokens]\nsecret = "short"\n')
        self.assertIn("tokens.secret: expected at least 32 characters", str(e.exception))
        self.assertNotIn("short\"", str(e.exception))


class WorkersShareOneSecretTests(TestCase):
    def test_the_supervisor_gives_its_workers_one_random_secret_when_none_is_configured(self) -> None:
        from myservices.workers.supervisor import Supervisor

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        config = load(self, "[daemon]\nworkers = 2\n")
        supervisor = Supervisor(config, Clock(), 2, command=["true"], environ={"PATH": "/bin"})
        generated = supervisor.environ["MYSERVICES_TOKEN_SECRET"]
        self.assertGreaterEqual(len(generated), 32)
        self.assertNotIn(generated, repr(events))
        self.assertTrue(any("share a random one" in str(e.get("log_format")) for e in events))
        # a worker reads it as its configured secret, so every worker signs and accepts the same tokens
        self.assertEqual(load(self, "", environ=supervisor.environ).tokens.secret, generated)
        other = Supervisor(config, Clock(), 2, command=["true"], environ={})
        self.assertNotEqual(other.environ["MYSERVICES_TOKEN_SECRET"], generated)  # per supervisor start

    def test_a_configured_secret_is_left_alone(self) -> None:
        from myservices.workers.supervisor import Supervisor

        config = load(self, "[daemon]\nworkers = 2\n", environ={"MYSERVICES_TOKEN_SECRET": SECRET})
        supervisor = Supervisor(config, Clock(), 2, command=["true"], environ={"MYSERVICES_TOKEN_SECRET": SECRET})
        self.assertEqual(supervisor.environ["MYSERVICES_TOKEN_SECRET"], SECRET)
        configured = load(self, f'[daemon]\nworkers = 2\n[tokens]\nsecret = "{SECRET}"\n')
        self.assertNotIn("MYSERVICES_TOKEN_SECRET", Supervisor(configured, Clock(), 2, command=["true"], environ={}).environ)
