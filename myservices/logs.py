"""Where the daemon's log goes when ``[daemon] log_format`` or ``log_level`` asks for more than twistd's default.

twistd picks the log observer after building the service: one set as the
application's ILogObserver component wins over ``--logfile``. The service
tree sets it (see L{ServiceTree.setServiceParent}) only when the
configuration asks for JSON or a level other than info, so a plain
``twistd myservices`` logs exactly as twistd always does.
"""

from __future__ import annotations

import sys
from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}


class LogOutput:
    """The observer for a log format and level; the level can change while running (SIGHUP)."""

    def __init__(self, log_format: str, log_level: str, stream: IO[str] | None = None) -> None:
        self.log_format = log_format
        self.predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[log_level])
        stream = sys.stdout if stream is None else stream
        inner = jsonFileLogObserver(stream, recordSeparator="") if log_format == "json" else textFileLogObserver(stream)
        self.observer: ILogObserver = FilteringLogObserver(inner, [self.predicate])

    @staticmethod
    def wanted(log_format: str, log_level: str) -> bool:
        """Whether the daemon should replace twistd's own observer."""
        return log_format != "text" or log_level != "info"

    @property
    def level(self) -> str:
        return next(name for name, level in LEVELS.items() if level is self.predicate.defaultLogLevel)

    def set_level(self, log_level: str) -> None:
        self.predicate.defaultLogLevel = LEVELS[log_level]
        self.predicate.clearLogLevels()  # drops the per-namespace cache computed from the old default
