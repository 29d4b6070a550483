"""The daemon as a cluster, end to end: workers and daemons (hosts) sharing one Redis, real processes and sockets.

Every front end of the hub (line chat, WebSocket, framed JSON, PB) has a
member on every worker (which worker serves a connection is read from the
kernel, see tests/cluster.py); they chat, see each other in /who, hold nicks
against each other; then a worker is killed, or Redis is killed and comes back
empty, and the clients go on. The supervisor is started as in
tests/test_workers_processes.py (its NOTIFY_SOCKET says when it is ready), on a
private redis-server (tests/redisserver.py).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests import mysql, redisserver
from tests.cluster import KINDS, Member, Refused, children, register, server_side_owner, until
from tests.test_workers_processes import Daemon

pytestmark = [pytest.mark.workers, pytest.mark.redis]

TTL = 1.0  # [hub] presence_ttl: a killed worker's members leave within it
ENGINE_TIMEOUT = 0.5
ROOM = "lobby"

CONFIG = """
    [daemon]
    workers = {workers}
    data_dir = "state"
    shutdown_timeout = 2
    worker_restart_delay = 0.1
    worker_metrics_interval = 0.1
    [database]
    url = "{database}"
    [hub]
    engine = "redis"
    redis_url = "{redis}"
    presence_ttl = {ttl}
    engine_timeout = {timeout}
    redis_reconnect_delay = 0.2
    publish_rate = 1000.0
    publish_burst = 1000
    [accounts]
    scrypt_cost = 10
    [services.chat]
    endpoint = "tcp:0:interface=127.0.0.1"
    [services.websocket]
    endpoint = "tcp:0:interface=127.0.0.1"
    [services.framed]
    endpoint = "tcp:0:interface=127.0.0.1"
    [services.pb]
    endpoint = "tcp:0:interface=127.0.0.1"
    [services.http]
    endpoint = "tcp:0:interface=127.0.0.1"
"""

SQLITE = "sqlite:///DIR/chat.sqlite3"


def config(redis: str, workers: int, database: str = SQLITE) -> str:
    return CONFIG.format(workers=workers, database=database, redis=redis, ttl=TTL, timeout=ENGINE_TIMEOUT)


def nick_for(kind: str, n: int) -> str:
    return f"{kind[:2]}{n}"


class ClusterTestCase(TestCase):
    timeout = 120

    async def member(self, daemon: Daemon, kind: str, nick: str | None = None) -> Member:
        member = KINDS[kind](self, daemon.port(kind))
        await member.connect()
        if nick:
            await member.take_nick(nick)
        return member

    async def owner(self, daemon: Daemon, member: Member, workers: set[int]) -> int:
        """The worker that serves C{member}'s connection."""
        found: list[int] = []

        def owned() -> bool:
            pid = server_side_owner(member.port, member.local_port(), workers)
            if pid is not None:
                found.append(pid)
            return bool(found)

        await until(owned, f"the worker of {member}'s connection")
        return found[0]

    async def spread(self, daemon: Daemon) -> list[Member]:
        """A member of each front end on each worker, with a nick each; C{member.pid} says which worker."""
        workers = children(daemon.proc.pid)
        self.assertEqual(len(workers), 2)
        order = sorted(workers)
        await register(daemon.port("framed"), [nick_for("pb", i) for i in range(len(order))])
        members = []
        for kind in KINDS:
            placed: dict[int, Member] = {}
            for _ in range(40):  # the kernel spreads by a hash of the client's port: P(one worker 40 times) = 2**-39
                member = await self.member(daemon, kind)
                pid = await self.owner(daemon, member, workers)
                if pid in placed:
                    await member.abort()
                    continue
                member.pid = pid  # type: ignore[attr-defined]
                placed[pid] = member
                if len(placed) == len(workers):
                    break
            self.assertEqual(set(placed), workers, f"{kind}: every connection went to the same worker")
            for pid, member in sorted(placed.items()):
                await member.take_nick(nick_for(kind, order.index(pid)))
                members.append(member)
        return members

    async def publish_from_each(self, members: list[Member], label: str) -> list[tuple[int, str]]:
        acked = []
        for member in members:
            text = f"{label} from {member.nick}"
            acked.append((await member.publish(ROOM, text), text))
        return acked

    async def everyone_saw(self, members: list[Member], expected: list[tuple[int, str]]) -> None:
        """Every member received exactly C{expected}, live, in order: none missed, none twice."""
        try:
            await until(lambda: all(len(m.messages) >= len(expected) for m in members), "every message everywhere")
        except AssertionError as e:
            raise AssertionError(f"{e}: {[(m, getattr(m, 'pid', None), m.messages) for m in members]}") from None
        for member in members:
            self.assertEqual(member.messages, expected, member)

    async def nicks_are_shared(self, members: list[Member]) -> None:
        """A nick held on one worker is NICK_TAKEN on another, ignoring case."""
        for member in members:
            other = next(o for o in members if o.kind != "pb" and getattr(o, "pid", None) != getattr(member, "pid", 0))
            with self.assertRaises(Refused) as refused:
                await other.take_nick(member.nick.upper())
            self.assertEqual(refused.exception.code, "NICK_TAKEN", (member, other))

    async def readyz_settles(self, daemon: Daemon, status: int, in_a_row: int = 8) -> list[dict[str, Any]]:
        """Poll /readyz (a new connection each: any worker) until C{in_a_row} answers in a row are C{status}."""
        answers: list[dict[str, Any]] = []

        def settled() -> bool:
            code, body = daemon.get("/readyz")
            if code != status:
                answers.clear()
            else:
                answers.append(json.loads(body))
            return len(answers) >= in_a_row

        await until(settled, f"/readyz {status} from every worker")
        return answers


def stored_sqlite(daemon: Daemon) -> list[tuple[int, str]]:
    with sqlite3.connect(Path(daemon.dir, "chat.sqlite3")) as db:
        return list(db.execute("SELECT id, text FROM chat_messages WHERE room = ? ORDER BY id", (ROOM,)))


class WorkersOnRedisTests(ClusterTestCase):
    async def test_members_on_every_worker_and_front_end_chat_and_survive_a_killed_worker(self) -> None:
        redis = redisserver.start_redis(self)
        daemon = Daemon(self, config(redis.url, workers=2))
        daemon.ready()
        members = await self.spread(daemon)
        nicks = sorted(m.nick for m in members)
        for member in members:
            self.assertEqual(await member.join(ROOM, since=0), ([], True, 0))
        acked = await self.publish_from_each(members, "hello")
        self.assertEqual([i for i, _ in acked], list(range(1, 9)))  # one room, one sequence across workers
        await self.everyone_saw(members, acked)
        for member in members:
            self.assertEqual(sorted(await member.who(ROOM)), nicks, member)
        await self.nicks_are_shared(members)

        victim = min(m.pid for m in members)  # type: ignore[attr-defined]
        gone = [m for m in members if m.pid == victim]  # type: ignore[attr-defined]
        survivors = [m for m in members if m not in gone]
        replaced = deferToThread(lambda: (
            daemon.next_notification(lambda f: "not ready: " in f.get("STATUS", "")),
            daemon.next_notification(lambda f: f.get("STATUS", "").endswith("; 2 of 2 workers ready")),
        ))
        os.kill(victim, signal.SIGKILL)
        for member in gone:
            await member.closed()
        # every survivor is told each of the dead worker's members left, once, within the presence ttl
        took = await until(lambda: all(len(s.parts) >= len(gone) for s in survivors), "the PARTs of the dead worker's members")
        for survivor in survivors:
            self.assertEqual(sorted(survivor.parts), sorted(m.nick for m in gone), survivor)
        self.assertLess(took, TTL + TTL / 3 + 2.0)  # expiry, the next refresh's reap, and a loaded machine
        for survivor in survivors:
            self.assertEqual(sorted(await survivor.who(ROOM)), sorted(s.nick for s in survivors), survivor)
        await replaced
        workers = children(daemon.proc.pid)
        self.assertEqual(len(workers), 2)
        self.assertNotIn(victim, workers)

        missed = await self.publish_from_each(survivors, "meanwhile")
        self.assertEqual([i for i, _ in missed], list(range(9, 13)))
        await self.everyone_saw(survivors, acked + missed)

        # the dead worker's clients come back (on any worker), with the same nicks, and join with the last id they saw
        back = []
        for member in gone:
            again = await self.member(daemon, member.kind, member.nick)
            self.assertEqual(await again.join(ROOM, since=8), ([9, 10, 11, 12], True, 12), again)
            back.append(again)
        last = await self.publish_from_each(back[:1], "welcome back")
        await self.everyone_saw(back, last)  # live again, and nothing of the history twice
        await self.everyone_saw(survivors, acked + missed + last)
        self.assertEqual(stored_sqlite(daemon), acked + missed + last)
        self.assertNotIn("Traceback", daemon.log())

    async def test_redis_killed_and_restarted_empty_mid_chat(self) -> None:
        redis = redisserver.start_redis(self)
        daemon = Daemon(self, config(redis.url, workers=2))
        daemon.ready()
        members = await self.spread(daemon)
        nicks = sorted(m.nick for m in members)
        for member in members:
            await member.join(ROOM, since=0)
        before = await self.publish_from_each(members, "before")
        await self.everyone_saw(members, before)
        await register(daemon.port("framed"), ["new1"])  # the PB newcomer's account
        away = members.pop()  # a client whose connection drops now: it rejoins with since after the outage
        await away.abort()
        nicks.remove(away.nick)

        redis.kill()
        for answer in await self.readyz_settles(daemon, 503):
            self.assertEqual(answer["checks"]["hub"], "redis unavailable", answer)
        for member in members:
            with self.assertRaises(Refused) as refused:
                await member.publish(ROOM, f"lost by {member.nick}")
            self.assertEqual(refused.exception.code, "ENGINE_UNAVAILABLE", member)
            self.assertIn(refused.exception.retry, (True, None), member)  # None: the front end does not carry it

        newcomers = []
        # a connection opened during the outage: the line chat and WebSocket /chat have no session to open
        # without Redis, so they say so and close (tests/test_redis_tree.py); framed and PB open theirs when
        # first needed: such a connection is told to retry, stays open and is served once Redis is back
        for kind in ("framed", "pb"):
            newcomer = KINDS[kind](self, daemon.port(kind))
            await newcomer.connect()
            newcomers.append(newcomer)
        with self.assertRaises(Refused) as refused:
            await newcomers[0].take_nick("early")
        self.assertEqual((refused.exception.code, refused.exception.retry), ("ENGINE_UNAVAILABLE", True))
        redis.restart()  # on the same port, empty
        await self.readyz_settles(daemon, 200)
        after = []
        for member in members:  # as a client told to retry would
            text = f"after from {member.nick}"
            after.append((await self.retrying(lambda: member.publish(ROOM, text)), text))
        ids = [i for i, _ in after]
        self.assertEqual(ids, list(range(ids[0], ids[0] + len(ids))))
        self.assertGreater(ids[0], 8)  # never an id given before: Redis starts after what the database reserved
        await self.everyone_saw(members, before + after)  # on every worker, on the connections that were open
        self.assertEqual(stored_sqlite(daemon), before + after)
        for member in members:
            self.assertEqual(sorted(await member.who(ROOM)), nicks, member)  # presence restored by each worker
        await self.nicks_are_shared(members)
        back = await self.member(daemon, away.kind, away.nick)
        self.assertEqual(await back.join(ROOM, since=8), (ids, True, ids[-1]))  # the id gap is no gap in history
        for n, newcomer in enumerate(newcomers):
            await self.retrying(lambda: newcomer.take_nick(f"new{n}"))
            self.assertEqual((await newcomer.join(ROOM, since=ids[-1]))[1:], (True, ids[-1]))
        self.assertNotIn("Traceback", daemon.log())

    async def retrying(self, operation: Any) -> Any:
        deadline = reactor.seconds() + 20
        while True:
            try:
                return await operation()
            except Refused as e:
                if e.code != "ENGINE_UNAVAILABLE" or reactor.seconds() > deadline:
                    raise
                await deferLater(reactor, 0.05, lambda: None)


@pytest.mark.mysql
class TwoDaemonsTests(ClusterTestCase):
    async def test_two_daemons_on_one_redis_and_one_mysql_database(self) -> None:
        redis = redisserver.start_redis(self)
        url = mysql.create_database(self)
        daemons = [Daemon(self, config(redis.url, workers=1, database=url)) for _ in range(2)]
        for daemon in daemons:
            daemon.ready()
        await register(daemons[0].port("framed"), ["pb0", "pb1"])
        members = []
        for n, daemon in enumerate(daemons):
            for kind in KINDS:
                member = await self.member(daemon, kind, nick_for(kind, n))
                member.pid = daemon.proc.pid  # type: ignore[attr-defined]
                members.append(member)
        for member in members:
            self.assertEqual(await member.join(ROOM, since=0), ([], True, 0))
        # both directions: each round goes one daemon's front ends, then the other's
        acked = await self.publish_from_each(members, "one") + await self.publish_from_each(members[::-1], "two")
        self.assertEqual([i for i, _ in acked], list(range(1, 17)))
        await self.everyone_saw(members, acked)
        for member in members:
            self.assertEqual(sorted(await member.who(ROOM)), sorted(m.nick for m in members), member)
        await self.nicks_are_shared(members)
        server = mysql.server()
        with server.connect(url.rsplit("/", 1)[1]) as conn, conn.cursor() as cur:
            cur.execute("SELECT id, text FROM chat_messages WHERE room = %s ORDER BY id", (ROOM,))
            self.assertEqual([(int(i), t) for i, t in cur.fetchall()], acked)  # every acknowledged message, once
        for daemon in daemons:
            self.assertNotIn("Traceback", daemon.log())
