"""Limits on failed logins (per address, per account) and on registrations (per address), driven by a Clock."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from myservices.accounts import AccountStore
from myservices.errors import LOGIN_FAILED, RATE_LIMITED, USERNAME_TAKEN, RequestError
from myservices.login_limits import WindowLimit
from tests.accountstore import NOW, account_store


class WindowLimitTests(TestCase):
    def test_limit_per_window_then_free_again(self) -> None:
        clock = Clock()
        limit = WindowLimit(clock, limit=3, window=10, max_keys=100)
        for _ in range(3):
            self.assertIsNone(limit.retry_after("a"))
            limit.hit("a")
            clock.advance(1)
        self.assertEqual(limit.retry_after("a"), 7)  # the first of the three leaves the window at t=10
        self.assertIsNone(limit.retry_after("b"))
        clock.advance(7)
        self.assertIsNone(limit.retry_after("a"))
        limit.hit("a")
        self.assertEqual(limit.retry_after("a"), 1)  # the second and third are still in the window
        limit.reset("a")
        self.assertIsNone(limit.retry_after("a"))

    def test_memory_is_bounded(self) -> None:
        clock = Clock()
        limit = WindowLimit(clock, limit=5, window=60, max_keys=100)
        for i in range(10_000):
            for _ in range(10):
                limit.hit(f"10.0.{i // 256}.{i % 256}")
        self.assertEqual(len(limit), 100)
        self.assertTrue(all(len(events) <= 5 for events in limit._events.values()))
        self.assertIsNotNone(limit.retry_after("10.0.39.15"))  # the most recent are the ones kept
        clock.advance(61)
        self.assertIsNone(limit.retry_after("10.0.39.15"))
        self.assertEqual(len(limit), 99)  # expired keys are dropped as they are looked at


class AccountLimitTests(TestCase):
    async def store(self, **config: int) -> AccountStore:
        self.clock = Clock()
        self.clock.advance(NOW)
        store = await account_store(self, self.clock, **config)
        await store.register("alice", "password1")
        await store.register("bob", "password1")
        return store

    async def error(self, store: AccountStore, username: str, password: str, address: str | None) -> RequestError:
        try:
            await store.authenticate(username, password, address=address)
        except RequestError as e:
            return e
        self.fail("the login succeeded")

    async def test_failures_per_address_then_rate_limited_even_with_the_right_password(self) -> None:
        store = await self.store(login_failures_per_address=3, login_failure_window=60)
        for username in ("alice", "bob", "nobody"):  # unknown users count the same
            self.assertIs((await self.error(store, username, "wrong-password", "10.0.0.1")).error, LOGIN_FAILED)
        self.clock.advance(18)
        limited = await self.error(store, "alice", "password1", "10.0.0.1")
        self.assertIs(limited.error, RATE_LIMITED)
        self.assertEqual(limited.retry_after, 42)
        self.assertEqual(limited.detail, "too many failed logins; retry in 42 s")
        # another address, and no address at all, are not limited by this one
        self.assertEqual((await store.authenticate("alice", "password1", address="10.0.0.2")).username, "alice")
        self.assertEqual((await store.authenticate("alice", "password1")).username, "alice")
        self.clock.advance(42)
        self.assertEqual((await store.authenticate("alice", "password1", address="10.0.0.1")).username, "alice")

    async def test_failures_per_account_from_many_addresses(self) -> None:
        store = await self.store(login_failures_per_account=3, login_failure_window=60)
        for i in range(3):
            await self.error(store, "alice", "wrong-password", f"10.0.1.{i}")
        limited = await self.error(store, "alice", "password1", "10.0.2.1")
        self.assertIs(limited.error, RATE_LIMITED)
        self.assertEqual((await store.authenticate("bob", "password1", address="10.0.2.1")).username, "bob")

    async def test_unknown_and_known_usernames_get_the_same_answers(self) -> None:
        store = await self.store(login_failures_per_account=2)
        answers = {}
        for username in ("alice", "nobody"):
            errors = [await self.error(store, username, "wrong-password", None) for _ in range(3)]
            answers[username] = [(e.error.code, e.detail, e.retry_after) for e in errors]
        self.assertEqual(answers["alice"], answers["nobody"])
        self.assertEqual([code for code, _, _ in answers["alice"]], ["LOGIN_FAILED", "LOGIN_FAILED", "RATE_LIMITED"])

    async def test_a_success_clears_the_accounts_failures_not_the_addresses(self) -> None:
        store = await self.store(login_failures_per_address=4, login_failures_per_account=2)
        await self.error(store, "bob", "wrong-password", "10.0.0.1")
        await self.error(store, "alice", "wrong-password", "10.0.0.1")
        await store.authenticate("alice", "password1", address="10.0.0.1")
        await self.error(store, "alice", "wrong-password", "10.0.0.1")  # alice's count starts again: 1 of 2
        self.assertIs((await self.error(store, "alice", "wrong-password", "10.0.0.1")).error, LOGIN_FAILED)
        # the address has 4 failures (bob's, alice's three): limited for every account
        self.assertIs((await self.error(store, "bob", "password1", "10.0.0.1")).error, RATE_LIMITED)

    async def test_successful_logins_do_not_count_with_a_clock_that_moves(self) -> None:
        # the reactor's clock moves between any two reads; a success must take back its own attempt
        store = await self.store(login_failures_per_address=2)

        class Ticking(Clock):
            def seconds(self) -> float:
                self.advance(0.001)
                return super().seconds()

        ticking = Ticking()
        ticking.advance(NOW)
        store.limits.address_failures.clock = store.limits.account_failures.clock = ticking
        for _ in range(3):
            await store.authenticate("alice", "password1", address="10.0.0.3")
        self.assertEqual(len(store.limits.address_failures), 0)

    async def test_malformed_usernames_count_against_the_address(self) -> None:
        store = await self.store(login_failures_per_address=2)
        for _ in range(2):
            self.assertIs((await self.error(store, "NO SUCH!", "x", "10.0.0.9")).error, LOGIN_FAILED)
        self.assertIs((await self.error(store, "alice", "password1", "10.0.0.9")).error, RATE_LIMITED)

    async def test_registrations_per_address(self) -> None:
        store = await self.store(registrations_per_address=2, registration_window=3600)
        await store.register("carol", "password1", address="10.0.0.1")
        with self.assertRaises(RequestError) as taken:
            await store.register("carol", "password1", address="10.0.0.1")  # taken: still an attempt
        self.assertIs(taken.exception.error, USERNAME_TAKEN)
        with self.assertRaises(RequestError) as limited:
            await store.register("dave", "password1", address="10.0.0.1")
        self.assertIs(limited.exception.error, RATE_LIMITED)
        self.assertEqual(limited.exception.retry_after, 3600)
        self.assertIn("too many accounts created from this address", limited.exception.detail)
        self.assertIsNone(await store.record("dave"))
        await store.register("dave", "password1", address="10.0.0.2")
        self.clock.advance(3600)
        await store.register("erin", "password1", address="10.0.0.1")

    async def test_zero_turns_a_limit_off(self) -> None:
        store = await self.store(login_failures_per_address=0, login_failures_per_account=0)
        for _ in range(30):
            await self.error(store, "alice", "wrong-password", "10.0.0.1")
        self.assertEqual((await store.authenticate("alice", "password1", address="10.0.0.1")).username, "alice")


class PBLoginLimitTests(TestCase):
    """The PB gateway hands the client's address to the limits."""

    timeout = 20

    async def test_failed_pb_logins_from_one_address_are_limited(self) -> None:
        import os

        from myservices.pb.errors import error_code
        from tests.pbclient import failure_of, pb_connect
        from tests.support import load, port_of, start_tree
        from tests.test_pb import pb_config

        url = f"sqlite:///{os.path.abspath(self.mktemp())}.sqlite3"
        tree = await start_tree(self, load(self, pb_config(url, extra="login_failures_per_address = 2")))
        port = port_of(tree, "pb")
        await tree.listeners["pb"].factory.services.accounts.register("alice", "correct horse")
        codes = []
        for _ in range(3):
            client = await pb_connect(self, port)
            codes.append(error_code(await failure_of(client.root.callRemote("login", "alice", "wrong password"))))
        self.assertEqual(codes, ["LOGIN_FAILED", "LOGIN_FAILED", "RATE_LIMITED"])
        client = await pb_connect(self, port)
        failure = await failure_of(client.root.callRemote("login", "alice", "correct horse"))
        self.assertEqual(error_code(failure), "RATE_LIMITED")
        self.assertIn("too many failed logins; retry in 300 s", failure.getErrorMessage())


class ConcurrentGuessTests(TestCase):
    async def test_a_burst_of_concurrent_guesses_gets_only_the_limit_checked(self) -> None:
        from twisted.internet.defer import Deferred, gatherResults

        clock = Clock()
        clock.advance(NOW)
        store = await account_store(self, clock, login_failures_per_address=3)
        await store.register("alice", "password1")

        async def attempt() -> str:
            try:
                await store.authenticate("alice", "wrong-password", address="10.0.0.1")
            except RequestError as e:
                return e.error.code
            return "OK"

        codes = await gatherResults([Deferred.fromCoroutine(attempt()) for _ in range(10)])
        self.assertEqual(sorted(codes), ["LOGIN_FAILED"] * 3 + ["RATE_LIMITED"] * 7)

    async def test_a_server_failure_is_not_counted_as_a_guess(self) -> None:
        from myservices.errors import BUSY

        clock = Clock()
        clock.advance(NOW)
        store = await account_store(self, clock, login_failures_per_address=1, login_failures_per_account=1)
        await store.register("alice", "password1")
        verify = store.hasher.verify

        def busy(password: str, stored: str | None) -> Any:
            from twisted.internet.defer import fail

            return fail(RequestError(BUSY))

        store.hasher.verify = busy  # type: ignore[method-assign]
        for _ in range(3):
            with self.assertRaises(RequestError) as e:
                await store.authenticate("alice", "password1", address="10.0.0.1")
            self.assertIs(e.exception.error, BUSY)
        store.hasher.verify = verify  # type: ignore[method-assign]
        self.assertEqual((await store.authenticate("alice", "password1", address="10.0.0.1")).username, "alice")
