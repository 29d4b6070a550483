"""Declaring settings: what every module uses to say which config keys it has.

A section is a frozen, ``kw_only`` dataclass; each key is a field declared
with L{setting}, which carries its default, its bounds, its kind of value and
one line of documentation. The loader (L{myservices.config}) derives its
checks and its messages from these declarations.

This module imports nothing else of the project, so any module can declare
its settings here without an import cycle.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# kinds of value, beyond what the type annotation says
STREAM_ENDPOINT = "stream_endpoint"  # a Twisted endpoint string
UDP_ENDPOINT = "udp_endpoint"  # "udp:PORT[:interface=ADDRESS]"
SIZE = "size"  # bytes: 65536 or "64 KiB"
DURATION = "duration"  # seconds
PATH = "path"  # relative to the config file
STRINGS = "strings"  # an array of strings, kept as a tuple
PARSED = "parsed"  # any TOML value, converted by the setting's own parse function (arrays of tables, ...)


def setting(
    default: Any = dataclasses.MISSING,
    *,
    doc: str,
    kind: str | None = None,
    min: float | None = None,
    max: float | None = None,
    secret: bool = False,
    parse: Any = None,
    expected: str | None = None,
) -> Any:
    """Declare a config key: its default (none means required), bounds and one-line doc.

    With C{kind=PARSED}, C{parse(value)} converts the TOML value or raises ValueError saying what is
    wrong (the loader puts the key's path in front); C{expected} describes the value for the docs.
    """
    meta = {"doc": doc, "kind": kind, "min": min, "max": max, "secret": secret, "parse": parse, "expected": expected}
    return field(default=default, metadata=meta, repr=not secret)


KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
_SIZE_UNITS = {"": 1, "b": 1, "kib": KiB, "mib": MiB, "gib": GiB, "kb": 1000, "mb": 1000**2, "gb": 1000**3}


def parse_size(value: Any) -> int:
    """Bytes from an integer or a string such as ``"64 KiB"`` or ``"1MiB"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    raise ValueError('expected a size in bytes, such as 65536 or "64 KiB"')


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    """Keys every ``[services.NAME]`` section has."""

    enabled: bool = setting(True, doc="set false to keep the section but not run the service")
    kind: str = setting(
        "",
        doc='the kind of service, when NAME is not one (e.g. kind = "echo" in [services.echo_tls]); '
        "the loader sets it to NAME otherwise",
    )

    def check_with(self, name: str, services: Mapping[str, ServiceConfig]) -> list[str]:
        """Problems that depend on other service sections (each a "services.NAME.key: ..." line)."""
        return []


@dataclass(frozen=True, kw_only=True)
class StreamServiceConfig(ServiceConfig):
    """Keys of every service that listens on a stream endpoint."""

    endpoint: str = setting(kind=STREAM_ENDPOINT, doc='Twisted endpoint string, e.g. "tcp:1234:interface=127.0.0.1"')
    max_connections: int = setting(
        1000, min=1, max=1_000_000, doc="connections served at once; more are refused with a short message"
    )
    idle_timeout: float = setting(
        300.0, kind=DURATION, min=0, max=86400, doc="seconds without input before a connection is closed (0: never)"
    )
