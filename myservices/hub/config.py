"""[hub]: the rules and limits every front end of the hub shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from myservices.settings import DURATION, SIZE, MiB, setting


@dataclass(frozen=True, kw_only=True)
class HubConfig:
    """[hub]: rules and limits shared by every front end."""

    engine: Literal["memory"] = setting(
        "memory", doc="where the hub's shared state lives: memory (this process; ids and history in the database)"
    )

    history_size: int = setting(50, min=0, max=10_000, doc="messages kept per room and sent on join (0: no history)")
    max_pending: int = setting(
        1 * MiB, kind=SIZE, min=4096, max=1024 * MiB,
        doc="unread output a connection may queue before it is dropped as a slow consumer",
    )
    publish_rate: float = setting(10.0, min=0.01, max=1_000_000, doc="messages per second a connection may publish")
    publish_burst: int = setting(20, min=1, max=1_000_000, doc="messages a connection may publish at once")
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
