"""Where the daemon's log goes when ``[daemon] log_format`` or ``log_level`` asks for more than twistd's default.

twistd picks the log observer after building the service: one set as the
application's ILogObserver component wins over ``--logfile``. The service
tree sets it (see L{ServiceTree.setServiceParent}) only when the
configuration asks for JSON or a level other than info, so a plain
``twistd myservices`` logs exactly as twistd always does.

JSON lines (L{JsonLines}) are for log shippers (Loki, Elasticsearch,
journald, Docker): each holds the rendered C{message}, the C{level} by name,
the C{time} in ISO-8601 UTC, the C{namespace}, the template as
C{log_format}, a failure's C{traceback} as text, and the event's own
structured fields beside them.
"""

from __future__ import annotations

import json
import math
import string
import sys
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from zope.interface import implementer

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
        inner = JsonLines(stream) if log_format == "json" else textFileLogObserver(stream)
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


# the keys of a JSON line that the daemon sets; an event field of the same name is left out
OWN_KEYS = ("time", "level", "message", "namespace", "system", "log_format", "traceback")
# what twisted.python.log's observers add to an event (a copy of ours, or legacy noise)
_LEGACY_KEYS = frozenset({"message", "time", "system", "format", "isError", "why", "failure", "log_legacy", "log_text"})


def iso_time(seconds: float) -> str:
    """``2026-12-03T15:04:05.123Z``: UTC, milliseconds."""
    millis = math.floor(seconds * 1000)
    when = datetime.fromtimestamp(millis // 1000, timezone.utc)
    return f"{when:%Y-%m-%dT%H:%M:%S}.{millis % 1000:03d}Z"


def _plain(value: Any) -> bool:
    """Whether C{value} is JSON as it is (no objects, no NaN)."""
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _named_in(template: str) -> set[str]:
    """The fields a twisted.logger format string renders (``{peer}``, ``{peer.host}``, ``{f()}``: peer, f)."""
    names = set()
    try:
        for _, field, _, _ in string.Formatter().parse(template):
            if field:
                names.add(field.split(".")[0].split("[")[0].rstrip("()"))
    except ValueError:  # not a valid format string: formatEvent says so in the message
        pass
    return names


def event_as_json(event: LogEvent) -> dict[str, Any]:
    """One event as the object of a JSON line (see the module's docstring).

    Structured fields go in as they are when they are plain JSON values
    (strings, numbers, lists, ...). Any other object (an address, a
    request) goes in as its text only when the message renders it anyway,
    so that a line never shows more of an object than the text log does.
    """
    template = event.get("log_format")
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": iso_time(event.get("log_time") or 0.0),
        "level": getattr(level, "name", "info"),  # a NamedConstant of LogLevel
        "message": formatEvent(event),
        "namespace": event.get("log_namespace", "-"),
    }
    system = event.get("log_system")
    if system not in (None, "-"):
        record["system"] = str(system)
    if template is not None:
        record["log_format"] = str(template)
    failure = event.get("log_failure", event.get("failure"))  # "failure": twisted.python.log.err's
    if isinstance(failure, Failure):
        record["traceback"] = failure.getTraceback()
        if template == "{log_text}":  # a legacy error: its text holds the traceback already
            record["message"] = event.get("why") or failure.getErrorMessage()
        if not record["message"]:
            record["message"] = f"{failure.type.__name__}: {failure.getErrorMessage()}"
    rendered = _named_in(template) if isinstance(template, str) else set()
    for key, value in event.items():
        if key.startswith("log_") or key in record or key in OWN_KEYS or key in _LEGACY_KEYS:
            continue
        if _plain(value):
            record[key] = value
        elif key in rendered:
            record[key] = str(value)
    return record


@implementer(ILogObserver)
class JsonLines:
    """Writes each event as one line of JSON (L{event_as_json}) to C{stream}."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, event: LogEvent) -> None:
        try:
            # ASCII (\\u escapes): a stdout that is not UTF-8, or a lone surrogate, cannot make the write fail
            line = json.dumps(event_as_json(event), separators=(",", ":"))
        except Exception as e:  # never lose the event: say what could not be written
            line = json.dumps({
                "time": iso_time(event.get("log_time") or 0.0), "level": "error", "namespace": __name__,
                "message": f"a log event could not be written as JSON: {type(e).__name__}: {e}",
            })
        self.stream.write(line + "\n")
        self.stream.flush()
