"""This process's share of presence in Redis: its members, subscribers and nicks, refreshed in batches.

Each entry in Redis expires (``[hub] presence_ttl``) unless the process that
owns it refreshes it; every process refreshes its own every ttl/3 with one
script call per batch, which also re-adds what a Redis that lost its data no
longer has (a member's joining order then starts again; no JOIN is sent) and
reaps the expired entries of its rooms, publishing their PART. So a crashed
process's members disappear within the ttl, and a restarted Redis gets this
process's presence and nicks back at the next refresh.
"""

from __future__ import annotations

from collections.abc import Iterator

from twisted.logger import Logger

import myservices.hub.redis.scripts as scripts
from myservices.hub.redis.client import RedisLink
from myservices.metrics import Metrics

BATCH = 500  # entries per script call: one call stays short for Redis, which runs scripts one at a time


class LocalPresence:
    """What this process has in Redis, to refresh it: members (with nick), subscribers and nicks held."""

    log = Logger()

    def __init__(self, prefix: str, link: RedisLink, ttl: float, metrics: Metrics, process: str) -> None:
        self.prefix = prefix
        self.process = process  # this process's id: it holds its nicks in Redis under it
        self.link = link
        self.ttl_ms = max(1, int(ttl * 1000))
        self.metrics = metrics
        self.members: dict[tuple[str, str], tuple[str, bool]] = {}  # (room, member id) -> (nick, an account's)
        self.subscribers: set[tuple[str, str]] = set()  # (room, member id)
        self.nicks: dict[str, str] = {}  # lower-case nick -> member id

    @property
    def count(self) -> int:
        return len(self.members) + len(self.subscribers)

    def renamed(self, member_id: str, nick: str, rooms: list[str], account: bool = False) -> None:
        for room in rooms:
            if (room, member_id) in self.members:
                self.members[(room, member_id)] = (nick, account)

    def _entries(self) -> Iterator[tuple[str, str, str, bool]]:
        for (room, member), (nick, account) in list(self.members.items()):
            yield room, member, nick, account
        for room, member in list(self.subscribers):
            yield room, member, "", False

    def _holds(self, entry: tuple[str, str, str, bool]) -> bool:
        room, member, nick, account = entry
        return self.members.get((room, member)) == (nick, account) if nick else (room, member) in self.subscribers

    async def refresh(self, announce: bool = True) -> None:
        """Refresh (or re-add) everything this process holds; raises EngineUnavailable if Redis does not answer.

        With C{announce}, a member Redis no longer has (reaped: this process
        stalled past the ttl, and the others saw its PART) gets a JOIN; not
        after Redis lost its data (nobody was told it left).
        """
        entries = list(self._entries())
        nicks = list(self.nicks.items())
        conflicts = 0
        while True:
            batch, entries = entries[:BATCH], entries[BATCH:]
            batch = [e for e in batch if self._holds(e)]  # not one that left while an earlier batch ran
            held, nicks = nicks[: BATCH - len(batch)], nicks[BATCH - len(batch) :]
            held = [(lower, member) for lower, member in held if self.nicks.get(lower) == member]  # not one let go
            args: list[str | int] = [self.prefix, self.ttl_ms, int(announce), len(batch), self.process]
            for room, member, nick, account in batch:
                args += [room, member, nick, int(account)]
            for lower, member in held:
                args += [lower, member]
            conflicts += int(await self.link.eval(scripts.REFRESH, args))
            if not entries and not nicks:
                break
        if conflicts:
            # only after Redis lost its data (or this process stalled past the ttl): another took the nick meanwhile
            self.log.warn("redis: {count} nicks held here are held by another connection now", count=conflicts)
