"""RecentErrors: the last N warnings, errors and critical events of the log, for the operator page.

It keeps each event's formatted text only (what the log file shows: the
codebase keeps secrets out of its log messages), never the event's fields or
a traceback, and at most C{max_length} characters of it.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.logger import ILogObserver, LogEvent, LogLevel, LogPublisher, formatEvent, globalLogPublisher
from zope.interface import implementer

_KEPT = frozenset({LogLevel.warn, LogLevel.error, LogLevel.critical})


@implementer(ILogObserver)
class RecentErrors:
    """A log observer keeping the last C{size} warn/error/critical events as (time, level, namespace, text).

    L{start} adds it to a publisher (the global one by default), L{stop} removes it.
    """

    def __init__(self, size: int, max_length: int = 1000) -> None:
        self.events: deque[dict[str, Any]] = deque(maxlen=size)
        self.max_length = max_length
        self._publisher: LogPublisher | None = None

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level")
        if level is None or level not in _KEPT:
            return
        try:
            text = formatEvent(event)
        except Exception:  # formatEvent already turns bad formats into text; never let an observer raise
            text = "(unformattable log event)"
        if len(text) > self.max_length:
            text = text[: self.max_length - 1] + "\u2026"
        self.events.append({
            "time": float(event.get("log_time") or 0.0),
            "level": level.name,
            "namespace": str(event.get("log_namespace", "")),
            "text": text,
        })

    def recent(self) -> list[dict[str, Any]]:
        """The events kept, oldest first."""
        return list(self.events)

    def start(self, publisher: LogPublisher | None = None) -> None:
        self._publisher = publisher if publisher is not None else globalLogPublisher
        self._publisher.addObserver(self)

    def stop(self) -> None:
        if self._publisher is not None:
            self._publisher.removeObserver(self)
            self._publisher = None
