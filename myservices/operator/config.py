"""[admin]: the operator page's sampling interval and the bounds of what it holds and sends."""

from __future__ import annotations

from dataclasses import dataclass

from myservices.settings import DURATION, setting


@dataclass(frozen=True, kw_only=True)
class AdminConfig:
    """[admin]: how often the statistics admins watch are taken, and how much each snapshot may hold."""

    interval: float = setting(
        1.0, kind=DURATION, min=0.1, max=60,
        doc="seconds between snapshots pushed to the admins watching (sampled only while one watches)",
    )
    max_rooms: int = setting(
        100, min=1, max=10_000, doc="most rooms listed in one snapshot (the busiest first); the rest are counted"
    )
    max_errors: int = setting(50, min=1, max=1000, doc="recent warnings and errors kept for the page")
    max_error_length: int = setting(1000, min=80, max=10_000, doc="longest text kept of one log event (characters)")
    max_watchers: int = setting(16, min=1, max=1000, doc="connections that may watch the statistics at once")
    health_timeout: float = setting(
        2.0, kind=DURATION, min=0.01, max=60, doc="seconds the database has to answer the health check of a snapshot"
    )
