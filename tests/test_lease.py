"""One daemon per database for the memory engine: the hub's lease.

The lease's own behaviour runs on a L{Clock} over a real SQLite database; two
real service trees on one database (SQLite, and MySQL) show what an operator
and a client see.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.trial.unittest import TestCase

from myservices.db import Database
from myservices.db.config import DatabaseConfig
from myservices.errors import RequestError
from myservices.hub.lease import HubLease, claim_lease_txn
from tests import mysql
from tests.support import HttpClient, chat_client, framed_client, load, port_of, start_tree
from tests.test_bad_input import Alarms

TIMEOUT = 9.0


class LeaseTests(TestCase):
    """HubLease on a Clock: what each daemon does with the one row."""

    timeout = 20

    async def database(self) -> Database:
        url = f"sqlite:///{os.path.abspath(self.mktemp())}.sqlite3"
        db = Database.from_config(DatabaseConfig(url=url), Path(self.mktemp()), reactor)
        db.startService()
        self.addCleanup(db.stopService)
        await db.when_ready()
        self.clock = Clock()
        self.clock.advance(1_000_000)
        return db

    def lease(self, db: Database, owner: str) -> HubLease:
        lease = HubLease(db, self.clock, TIMEOUT, owner=owner, host="testhost", pid=7)
        lease.startService()
        self.addCleanup(lambda: lease.stopService() if lease.running else None)
        return lease

    async def advance(self, lease: HubLease, seconds: float) -> None:
        """Move time on and wait for the claim that falls due (C{lease}'s)."""
        d = lease.next_claim()
        self.clock.advance(seconds)
        await d

    async def refused(self, lease: HubLease) -> RequestError:
        failure = await self.assertFailure(Deferred.fromCoroutine(lease.ensure()), RequestError)
        return failure

    async def test_a_second_daemon_waits_once_then_is_refused_while_the_first_refreshes(self) -> None:
        db = await self.database()
        alarms = Alarms(self)
        first = self.lease(db, "first")
        await first.settled()
        self.assertEqual((first.held(), first.status()), (True, "ok"))

        second = self.lease(db, "second")
        await second.settled()
        self.assertEqual((second.held(), second.state), (False, "waiting"))
        self.assertEqual(second.status(), "waiting for the previous daemon's hub lease to expire")
        request = Deferred.fromCoroutine(second.ensure())  # a hub request meanwhile waits
        self.assertNoResult(request)
        for _ in range(2):
            await self.advance(first, TIMEOUT / 3)  # the first daemon refreshes every third of the timeout
        self.assertNoResult(request)
        # the second looks again once the lease it saw would have expired: refreshed, so its holder is alive
        await self.advance(second, TIMEOUT / 3 + TIMEOUT / 100)
        error = await self.assertFailure(request, RequestError)
        self.assertEqual((error.error.code, error.detail),
                         ("HUB_UNAVAILABLE", "another daemon serves the hub on this server's database"))
        self.assertEqual(second.state, "refused")
        self.assertEqual((await self.refused(second)).error.code, "HUB_UNAVAILABLE")  # at once from now on
        self.assertTrue(first.held())
        [logged] = [formatEvent(e) for e in alarms.events]
        self.assertIn("refusing to serve the hub: another daemon (testhost pid 7 (owner first)) is using this"
                      ' database', logged)
        self.assertIn('with [hub] engine = "memory" only one daemon may use a database', logged)

        # the first stops and releases the lease: the second takes over when it looks again
        await first.stopService()
        await self.advance(second, TIMEOUT)
        self.assertEqual((second.held(), second.state), (True, "held"))
        await second.ensure()

    async def test_a_restart_after_a_crash_waits_for_the_old_lease_at_most_the_timeout(self) -> None:
        db = await self.database()
        now = self.clock.seconds()
        await db.run(claim_lease_txn, "crashed", "testhost", 6, now, now + TIMEOUT)  # and never refreshed again
        self.clock.advance(TIMEOUT / 4)
        restarted = self.lease(db, "restarted")
        request = Deferred.fromCoroutine(restarted.ensure())  # a client that was quicker than the first claim
        await restarted.settled()
        self.assertEqual(restarted.state, "waiting")
        self.assertNoResult(request)
        later = Deferred.fromCoroutine(restarted.ensure())
        [due] = [call.getTime() - self.clock.seconds() for call in self.clock.getDelayedCalls()]
        self.assertLessEqual(due, TIMEOUT)
        await self.advance(restarted, due)
        await request  # served, not refused: the old lease expired
        await later
        self.assertTrue(restarted.held())

    async def test_a_clean_stop_lets_the_next_daemon_serve_at_once(self) -> None:
        db = await self.database()
        first = self.lease(db, "first")
        await first.settled()
        await first.stopService()
        second = self.lease(db, "second")
        await second.settled()
        self.assertTrue(second.held())

    async def test_a_lease_not_refreshed_in_time_stops_the_hub_until_it_is_again(self) -> None:
        db = await self.database()
        lease = self.lease(db, "slow")
        await lease.settled()
        d = lease.next_claim()
        self.clock.advance(TIMEOUT + 1)  # the refresh falls due only now (a stalled reactor, a slow database)
        self.assertFalse(lease.held())  # another daemon could take it from now on: this one stops minting ids
        self.assertEqual(lease.status(), "the hub's lease could not be refreshed (database unavailable)")
        request = Deferred.fromCoroutine(lease.ensure())
        await d
        await request  # nobody took it meanwhile: it is this daemon's again
        self.assertTrue(lease.held())

    async def test_a_daemon_whose_lease_was_taken_stops_serving_the_hub_for_good(self) -> None:
        db = await self.database()
        alarms = Alarms(self)
        lease = self.lease(db, "first")
        await lease.settled()
        # another daemon, to which the lease looked expired, took it
        later = self.clock.seconds() + 2 * TIMEOUT
        await db.run(claim_lease_txn, "intruder", "otherhost", 8, later, later + TIMEOUT)
        await self.advance(lease, TIMEOUT / 3)
        self.assertEqual((lease.held(), lease.state), (False, "lost"))
        error = await self.refused(lease)
        self.assertEqual((error.error.code, error.detail),
                         ("HUB_UNAVAILABLE", "another daemon took over this server's database; it must be restarted"))
        self.assertEqual(self.clock.getDelayedCalls(), [])  # it never claims again: its rooms' ids may be stale
        [logged] = [formatEvent(e) for e in alarms.events]
        self.assertIn("another daemon (otherhost pid 8 (owner intruder)) took this daemon's lease", logged)


CONFIG = """
[daemon]
shutdown_timeout = 2
[database]
url = "{url}"
[hub]
lease_timeout = 1
[services.chat]
endpoint = "tcp:0:interface=127.0.0.1"
[services.framed]
endpoint = "tcp:0:interface=127.0.0.1"
[services.http]
endpoint = "tcp:0:interface=127.0.0.1"
"""


class TwoDaemonsMixin:
    """Two real trees on one database: the second is refused the hub, and only the hub."""

    timeout = 30

    def database_url(self) -> str:
        raise NotImplementedError

    async def test_a_second_memory_engine_daemon_on_one_database_is_refused_the_hub(self) -> None:
        t: Any = self
        url = self.database_url()
        first = await start_tree(t, load(t, CONFIG.format(url=url)))
        one = await chat_client(t, port_of(first, "chat"))
        t.assertEqual((await one.command("/join lobby 0"))[-1], "OK join lobby 0")
        t.assertEqual((await one.command("/msg lobby from the first"))[-1], "OK msg lobby 1")

        alarms = Alarms(t)
        second = await start_tree(t, load(t, CONFIG.format(url=url)))
        two = await chat_client(t, port_of(second, "chat"))
        # its first hub request waits once for the first daemon's lease to expire; it was refreshed: refused
        t.assertEqual(await two.command("/join lobby"),
                      ["ERR HUB_UNAVAILABLE another daemon serves the hub on this server's database"])
        [logged] = [formatEvent(e) for e in alarms.events]
        t.assertIn('refusing to serve the hub: another daemon', logged)
        t.assertIn('with [hub] engine = "memory" only one daemon may use a database', logged)
        ready = await HttpClient(t, port_of(second, "http")).get("/readyz")
        t.assertEqual((ready.code, ready.json()["failed"]), (503, ["hub"]))
        # the rest of the second daemon is not slowed down, and the first serves on
        framed = await framed_client(t, port_of(second, "framed"))
        t.assertEqual((await framed.call("counter.increment"))["value"], 1)
        t.assertEqual((await one.command("/msg lobby still the first"))[-1], "OK msg lobby 2")

        # the first stops (and lets the lease go): the second takes over and continues the room's ids
        await first.stopService()
        lease = second.getServiceNamed("hub-lease")
        while not lease.held():
            await lease.next_claim()
        lines = await two.command("/join lobby 1")
        t.assertEqual([ln.split(" ")[:3] for ln in lines[1:]], [["HISTORY", "lobby", "2"], ["OK", "join", "lobby"]])
        t.assertEqual(lines[-1], "OK join lobby 2")
        t.assertEqual((await two.command("/msg lobby from the second"))[-1], "OK msg lobby 3")


class SQLiteTwoDaemonsTests(TwoDaemonsMixin, TestCase):
    def database_url(self) -> str:
        return f"sqlite:///{os.path.abspath(self.mktemp())}.sqlite3"


@pytest.mark.mysql
class MySQLTwoDaemonsTests(TwoDaemonsMixin, TestCase):
    def database_url(self) -> str:
        return mysql.create_database(self)
