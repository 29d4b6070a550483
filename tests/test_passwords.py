"""Password hashing: scrypt off the reactor thread, on a bounded pool of its own."""

from __future__ import annotations

import threading

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from myservices import passwords
from myservices.errors import RequestError
from myservices.passwords import PasswordHasher


class PasswordHasherTests(TestCase):
    async def test_hash_and_verify_run_on_the_hashers_own_threads_and_stop_with_it(self) -> None:
        hasher = PasswordHasher(reactor, 2**10, concurrency=2)
        hasher.startService()
        self.addCleanup(lambda: hasher.stopService() if hasher.running else None)
        seen: list[str] = []
        real = passwords.hash_password_blocking

        def spy(*args: object) -> str:
            seen.append(threading.current_thread().name)
            return real(*args)  # type: ignore[arg-type]

        self.patch(passwords, "hash_password_blocking", spy)
        stored = await hasher.hash("correct horse")
        self.assertTrue(await hasher.verify("correct horse", stored))
        self.assertFalse(await hasher.verify("wrong", stored))
        self.assertFalse(await hasher.verify("anything", None))  # unknown user: same work, False
        self.assertEqual(len(seen), 2)
        self.assertTrue(all("myservices-passwords" in name for name in seen), seen)
        self.assertNotIn(threading.current_thread().name, seen)
        pool = hasher._threads
        await hasher.stopService()
        self.assertIsNotNone(pool)
        self.assertFalse(any(t.is_alive() for t in pool.threads))  # joined (off the reactor thread)

    async def test_a_full_queue_answers_busy_at_once(self) -> None:
        hasher = PasswordHasher(reactor, 2**10, concurrency=1, max_waiting=1)
        hasher.startService()
        self.addCleanup(lambda: hasher.stopService() if hasher.running else None)
        running = [hasher.hash(f"p{i}") for i in range(2)]  # one runs, one waits
        with self.assertRaises(RequestError) as caught:
            await hasher.hash("one too many")
        self.assertEqual(caught.exception.error.code, "BUSY")
        for d in running:
            await d

    async def test_checks_still_queued_at_stop_are_refused_and_start_no_threads(self) -> None:
        hasher = PasswordHasher(reactor, 2**10, concurrency=1, max_waiting=10)
        hasher.startService()
        running = hasher.hash("first")
        queued = hasher.hash("second")  # waits for the one slot
        stopping = hasher.stopService()
        await running
        with self.assertRaises(RequestError) as caught:
            await queued
        self.assertEqual(caught.exception.error.code, "SHUTTING_DOWN")
        await stopping
        self.assertIsNone(hasher._threads)  # no pool was started after the stop
