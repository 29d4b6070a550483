"""Password hashing with scrypt, on a thread pool of its own, never on the reactor thread.

A stored hash names its own parameters (``scrypt$N$r$p$salt$key``, base64
without padding), so the cost can be raised in the config later: old hashes
still verify, and L{PasswordHasher.needs_rehash} says when to store a new one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredSemaphore, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from myservices.errors import BUSY, SHUTTING_DOWN, RequestError

_SALT_BYTES = 16
_KEY_BYTES = 32


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    # scrypt needs 128 * r * n * p bytes; allow that plus slack instead of hashlib's 32 MiB default
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=_KEY_BYTES, maxmem=256 * r * n * p + 2**20)


def hash_password_blocking(password: str, n: int, r: int = 8, p: int = 1) -> str:
    """The stored form of C{password} (slow: call it from a thread)."""
    salt = os.urandom(_SALT_BYTES)
    key = _scrypt(password.encode("utf-8"), salt, n, r, p)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(key)}"


def verify_password_blocking(password: str, stored: str) -> bool:
    """True if C{password} matches C{stored} (slow: call it from a thread)."""
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(key)
        actual = _scrypt(password.encode("utf-8"), _unb64(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


class PasswordHasher(Service):
    """Hashes and verifies passwords off the reactor thread, at most C{concurrency} at a time.

    Each hash takes tens of milliseconds and 128 * r * N bytes of memory by
    design, so a flood of logins queues here instead of exhausting memory;
    past C{max_waiting} queued requests, new ones fail at once with BUSY. The
    hashes run on a thread pool of their own: a login flood never delays the
    reactor's shared pool (which also resolves host names).
    """

    name = "password-hasher"  # type: ignore[assignment]  # twisted's Service.name is unannotated (inferred as None)

    def __init__(self, reactor: Any, n: int, *, r: int = 8, p: int = 1, concurrency: int = 2, max_waiting: int = 256):
        self._reactor = reactor
        self.n, self.r, self.p = n, r, p
        self.max_waiting = max_waiting
        self.concurrency = concurrency
        self._slots = DeferredSemaphore(concurrency)
        self._threads: ThreadPool | None = None
        self._stopped = False

    def _pool(self) -> ThreadPool:
        # started on first use, so a daemon nobody logs in to runs no extra threads
        if self._threads is None:
            self._threads = ThreadPool(minthreads=0, maxthreads=self.concurrency, name="myservices-passwords")
            self._threads.start()
        return self._threads

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopped = True  # checks still queued are refused, not run on a pool nobody would stop
        threads, self._threads = self._threads, None
        if threads is None:
            return succeed(None)
        # stop() joins the threads: a hash in progress may take a moment, so never on the reactor thread
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), threads.stop)

    def hash(self, password: str) -> Deferred[str]:
        return self._run(hash_password_blocking, password, self.n, self.r, self.p)

    def verify(self, password: str, stored: str | None) -> Deferred[bool]:
        """Fires with True if C{password} matches; with C{stored} None, spends the same time and says False."""
        if stored is None:
            # hashing costs what a real check would, so the time taken does not tell that the user is unknown
            return self._run(hash_password_blocking, password, self.n, self.r, self.p).addCallback(lambda _: False)
        return self._run(verify_password_blocking, password, stored)

    def needs_rehash(self, stored: str) -> bool:
        """True if C{stored} was made with other parameters than the configured ones."""
        return not stored.startswith(f"scrypt${self.n}${self.r}${self.p}$")

    def _run(self, fn: Any, *args: Any) -> Deferred[Any]:
        if len(self._slots.waiting) >= self.max_waiting:
            return fail(RequestError(BUSY, "too many password checks in progress; try again shortly"))
        return self._slots.run(self._in_thread, fn, *args)

    def _in_thread(self, fn: Any, *args: Any) -> Deferred[Any]:
        if self._stopped:
            return fail(RequestError(SHUTTING_DOWN, "the server is shutting down"))
        return deferToThreadPool(self._reactor, self._pool(), fn, *args)
