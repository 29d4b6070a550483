"""A real AccountStore on a private SQLite file, with cheap hashing and a Clock, for the token and limit tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from myservices.accounts import AccountsConfig, AccountStore
from myservices.db import MIGRATIONS, Database
from myservices.db.config import DatabaseConfig
from myservices.passwords import PasswordHasher

NOW = 1_800_000_000.0  # a fixed start for the Clock: tokens carry real-looking epoch times


async def account_store(
    testcase: TestCase, clock: Clock | None = None, url: str | None = None, **config: Any
) -> AccountStore:
    """A started store (database migrated; SQLite unless C{url}) whose services stop when the test ends."""
    directory = Path(testcase.mktemp()).resolve()
    directory.mkdir(parents=True)
    url = url or f"sqlite:///{directory}/accounts.sqlite3"
    database = Database.from_config(DatabaseConfig(url=url), directory, reactor, migrations=MIGRATIONS)
    database.startService()
    testcase.addCleanup(lambda: database.stopService() if database.running else None)
    hasher = PasswordHasher(reactor, 2**10)
    hasher.startService()
    testcase.addCleanup(hasher.stopService)
    await database.when_ready()
    if clock is None:
        clock = Clock()
        clock.advance(NOW)
    cfg = dataclasses.replace(AccountsConfig(), scrypt_cost=10, **config)
    return AccountStore(database, hasher, cfg, clock=clock)
