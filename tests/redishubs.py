"""What the Redis engine tests share: hubs on their own engines (processes) over one private Redis and one database."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from myservices.db import Database, DatabaseUnavailable
from myservices.db.config import DatabaseConfig
from myservices.errors import ENGINE_UNAVAILABLE, RequestError
from myservices.hub import Event, HistoryStore, Hub, HubConfig, Message, Presence, Session, Subscriber
from myservices.hub.redis import RedisEngine
from myservices.metrics import Metrics
from tests import redisserver
from tests.redisserver import RedisServer
from tests.support import poll_until

TIMEOUT = 0.5  # engine_timeout in these tests: short, so the fault tests are quick


class Seen:
    """What one connection received."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.closed_with: Any = None

    def deliver(self, event: Event) -> None:
        self.events.append(event)

    def close(self, error: Any) -> None:
        self.closed_with = error

    def ids(self) -> list[int]:
        return [e.id for e in self.events if isinstance(e, Message)]

    def texts(self) -> list[str]:
        return [e.text for e in self.events if isinstance(e, Message)]

    def presence(self) -> list[tuple[str, str]]:
        return [(e.kind, e.nick) for e in self.events if isinstance(e, Presence)]

    def accounts(self) -> list[tuple[str, str, bool]]:
        """The presence events with their account flag."""
        return [(e.kind, e.nick, e.account) for e in self.events if isinstance(e, Presence)]


class FlakyStore(HistoryStore):
    """The real history writer, told to refuse (as when its database is down) or to fail its commits."""

    refuse = False
    fail_commits = False

    @property
    def failing(self) -> bool:
        return self.refuse or super().failing

    def commit(self, message: Message) -> Deferred[None]:
        if self.fail_commits:
            return fail(DatabaseUnavailable("the database went away"))
        return super().commit(message)


def _count_txn(txn: Any, room: str) -> list[tuple[int, str]]:
    txn.execute("SELECT id, text FROM chat_messages WHERE room = ? ORDER BY id", (room,))
    return [(int(i), t) for i, t in txn.fetchall()]



class RedisHubs(TestCase):
    """A TestCase with helpers: hubs on their own RedisEngine each, sharing one Redis and one database."""

    timeout = 60

    async def start(self, n: int = 2, **config: Any) -> list[Hub]:
        """C{n} hubs, each on its own RedisEngine (a process each), sharing one Redis and one database."""
        if not hasattr(self, "redis"):
            self.redis: RedisServer = redisserver.start_redis(self)
            path = Path(self.mktemp()).resolve()
            self.db = Database.from_config(DatabaseConfig(url=f"sqlite:///{path}/h.sqlite3"), path, reactor)
            self.db.startService()
            self.addCleanup(lambda: self.db.stopService() if self.db.running else None)
            await self.db.when_ready()
            self.hubs: list[Hub] = []
        options: dict[str, Any] = dict(
            engine="redis", redis_url=self.redis.url, engine_timeout=TIMEOUT, redis_reconnect_delay=0.2,
            publish_burst=1000, publish_rate=1000,
        )
        options.update(config)
        self.config = HubConfig(**options)
        for _ in range(n):
            self.hubs.append(self.hub(self.config))
        for hub in self.hubs[-n:]:
            await self.engine(hub).when_connected(timeout=10)  # a busy machine is slow to connect
        return self.hubs[-n:]

    def hub(self, cfg: HubConfig) -> Hub:
        store = FlakyStore(self.db, reactor, keep=cfg.history_size, flush_interval=0, batch_size=500,
                           max_backlog=1000)
        engine = RedisEngine(cfg, reactor, history=store, metrics=Metrics())
        engine.startService()
        self.addCleanup(lambda: engine.stopService() if engine.running else None)
        return Hub(cfg, reactor, engine, metrics=engine.metrics, node_id=f"n{len(self.hubs)}")

    @staticmethod
    def engine(hub: Hub) -> RedisEngine:
        assert isinstance(hub.engine, RedisEngine)
        return hub.engine

    async def session(self, hub: Hub, nick: str | None = None) -> tuple[Session, Seen]:
        seen = Seen()
        session = await hub.open_session(Subscriber(seen.deliver, seen.close))
        if nick:
            await hub.set_nick(session, nick)
        seen.events.clear()
        return session, seen

    async def until(self, condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
        """Poll C{condition} (bounded): events from the other process arrive when they arrive."""
        await poll_until(condition, what, timeout, interval=0.005)

    async def stored(self, room: str = "lobby") -> list[tuple[int, str]]:
        return await self.db.run(_count_txn, room)

    async def retrying(self, operation: Callable[[], Any]) -> Any:
        """C{await operation()}, again while the engine is unavailable (as a client told retry: true would)."""
        for _ in range(200):
            try:
                return await operation()
            except RequestError as e:
                if e.error is not ENGINE_UNAVAILABLE:
                    raise
                await deferLater(reactor, 0.05, lambda: None)
        self.fail("the engine never came back")

    async def publish_retrying(self, hub: Hub, session: Session, text: str, room: str = "lobby") -> Message:
        message: Message = await self.retrying(lambda: hub.publish(session, room, text))
        return message
