"""[hub]: the rules and limits every front end of the hub shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from myservices.settings import DURATION, SIZE, MiB, setting


AnonymousMode = Literal["chat", "read", "none"]


def anonymous_setting(default: str = "chat") -> Any:
    """The [services.NAME] key of every chat front end: what a connection may do before it logs in."""
    return setting(
        default,
        doc='what a connection that has not logged in may do: "chat" (everything), "read" (join, subscribe and '
        'read, not publish, direct-message or pick a nick) or "none" (only log in)',
    )


@dataclass(frozen=True, kw_only=True)
class HubConfig:
    """[hub]: rules and limits shared by every front end."""

    engine: Literal["memory", "redis"] = setting(
        "memory",
        doc="where the hub's shared state lives: memory (this process; ids and history in the database) "
        "or redis (every process sharing redis_url)",
    )
    redis_url: str = setting(
        "redis://127.0.0.1:6379/0",
        secret=True,  # may hold a password; kept out of reprs
        doc='the Redis of engine = "redis": "redis://HOST:PORT/DB" (a password is better in the environment)',
    )
    redis_password: str | None = setting(
        None, secret=True, doc="Redis password; overrides the one in redis_url (prefer the environment)"
    )
    redis_prefix: str = setting("myservices:", doc="prefix of every Redis key and channel of this hub")
    engine_timeout: float = setting(
        2.0, kind=DURATION, min=0.05, max=60,
        doc="seconds any engine request may take (Redis); then it fails with ENGINE_UNAVAILABLE",
    )
    presence_ttl: float = setting(
        30.0, kind=DURATION, min=0.3, max=3600,
        doc="seconds a process's members stay in Redis without a refresh (each process refreshes every ttl/3)",
    )
    id_block: int = setting(
        1000, min=1, max=1_000_000_000, doc="message ids a process reserves in the database at a time (Redis engine)"
    )
    redis_reconnect_delay: float = setting(
        5.0, kind=DURATION, min=0.01, max=300, doc="longest wait between two attempts to reconnect to Redis"
    )

    history_size: int = setting(50, min=0, max=10_000, doc="messages kept per room and sent on join (0: no history)")
    max_pending: int = setting(
        1 * MiB, kind=SIZE, min=4096, max=1024 * MiB,
        doc="unread output a connection may queue before it is dropped as a slow consumer",
    )
    publish_rate: float = setting(10.0, min=0.01, max=1_000_000, doc="messages per second a connection may publish")
    publish_burst: int = setting(20, min=1, max=1_000_000, doc="messages a connection may publish at once")
    churn_rate: float = setting(
        1.0, min=0.01, max=1_000_000, doc="nick changes, joins and parts per second a connection may make"
    )
    churn_burst: int = setting(
        40, min=1, max=1_000_000, doc="nick changes, joins and parts a connection may make at once"
    )
    max_rooms_per_session: int = setting(20, min=1, max=10_000, doc="rooms joined plus topics subscribed, per connection")
    max_nick_length: int = setting(32, min=1, max=255, doc="longest nick")
    max_room_length: int = setting(64, min=1, max=255, doc="longest room or topic name")
    max_text_length: int = setting(
        4000, min=1, max=16_000, doc="longest message text (characters; history stores up to 16,000)"
    )
    history_flush_interval: float = setting(
        0.0, kind=DURATION, min=0, max=60,
        doc="seconds a message waits for others to share its transaction (0: the next one starts at once)",
    )
    history_batch_size: int = setting(500, min=1, max=100_000, doc="most messages written in one transaction")
    lease_timeout: float = setting(
        10.0, kind=DURATION, min=1, max=600,
        doc="memory engine: how long this daemon's claim on the database outlives its last refresh"
        " (refreshed every third of it); a restart after a crash waits at most this long to serve the hub",
    )
    max_history_backlog: int = setting(
        10_000, min=1, max=10_000_000,
        doc="messages waiting to be committed; a publish beyond it is answered DATABASE_UNAVAILABLE",
    )

    def problems(self) -> list[str]:
        """What is wrong across keys (each a "hub.key: ..." line)."""
        if self.engine != "redis":
            return []
        try:
            parse_redis_url(self.redis_url)
        except ValueError as e:
            return [f"hub.redis_url: {e}"]
        if not self.redis_prefix:
            return ["hub.redis_prefix: expected a non-empty prefix"]
        return []


@dataclass(frozen=True)
class RedisAddress:
    """A parsed C{redis_url}; C{password} never appears in C{safe}."""

    host: str
    port: int
    db: int
    password: str | None = None

    @property
    def safe(self) -> str:
        """The URL without its password, for logs."""
        return f"redis://{self.host}:{self.port}/{self.db}"


def parse_redis_url(url: str, password: str | None = None) -> RedisAddress:
    """C{redis://[:PASSWORD@]HOST[:PORT][/DB]}; C{password}, when given, wins over the URL's."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise ValueError('expected "redis://HOST:PORT/DB"')
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("expected a port number between 1 and 65535 in the Redis URL") from None
    path = parts.path.lstrip("/")
    if path and not (path.isascii() and path.isdigit() and int(path) < 10_000):
        raise ValueError("expected a database number after the host, e.g. redis://127.0.0.1:6379/0")
    if parts.query or parts.fragment:
        raise ValueError("expected no query or fragment in the Redis URL")
    if password is None and parts.password:
        password = unquote(parts.password)
    return RedisAddress(parts.hostname, port, int(path or 0), password or None)
