"""[database]: the one connection pool every persistent handler uses, and its URL."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from myservices.settings import DURATION, setting


@dataclass(frozen=True, kw_only=True)
class DatabaseConfig:
    """The one connection pool every persistent handler uses."""

    url: str = setting(
        "sqlite:///myservices.sqlite3",
        secret=True,  # may hold a password; kept out of reprs
        doc='"sqlite:///PATH" (relative to data_dir) or "mysql://USER:PASSWORD@HOST:PORT/DATABASE"',
    )
    password: str | None = setting(
        None, secret=True, doc="MySQL password; overrides the one in url (prefer the environment)"
    )
    pool_min: int = setting(1, min=1, max=100, doc="connections kept open (MySQL)")
    pool_max: int = setting(5, min=1, max=100, doc="most connections open at once (MySQL; SQLite uses one)")
    connect_timeout: float = setting(
        5.0, kind=DURATION, min=0.1, max=300,
        doc="seconds to connect and log in, and for the ping before each transaction (MySQL)",
    )
    query_timeout: float = setting(
        30.0, kind=DURATION, min=0.1, max=3600, doc="seconds a MySQL read or write may take (per statement)"
    )
    request_timeout: float = setting(
        10.0, kind=DURATION, min=0.1, max=3600,
        doc="seconds a request waits for the database in all (a pool thread, reconnecting, retries);"
        " then it fails with DATABASE_UNAVAILABLE",
    )
    counter_block: int = setting(
        1000, min=1, max=1_000_000,
        doc="numbers of the request counter a process reserves in one transaction; a crash skips at most this many"
        " (1: one transaction per batch of requests, numbers ordered across processes)",
    )


@dataclass(frozen=True, kw_only=True)
class DatabaseUrl:
    """A parsed database URL; C{password} never appears in C{safe}."""

    scheme: Literal["sqlite", "mysql"]
    path: str = ""  # sqlite: file path or ":memory:"
    host: str = ""
    port: int = 3306
    user: str = ""
    password: str = field(default="", repr=False)
    database: str = ""

    @property
    def safe(self) -> str:
        """The URL with any password masked, for logs and --check."""
        if self.scheme == "sqlite":
            return f"sqlite:///{self.path}"
        auth = self.user + (":***" if self.password else "")
        return f"mysql://{auth}@{self.host}:{self.port}/{self.database}"


def parse_database_url(url: str, data_dir: Path, password: str | None = None) -> DatabaseUrl:
    """Parse C{url}; relative SQLite paths are resolved against C{data_dir}."""
    if url.startswith("sqlite:"):
        rest = url[len("sqlite:"):]
        if not rest.startswith("///") or len(rest) == 3:
            raise ValueError('expected "sqlite:///relative/path", "sqlite:////absolute/path" or "sqlite:///:memory:"')
        path = rest[3:]
        if path != ":memory:":
            path = str((data_dir / path).resolve()) if not os.path.isabs(path) else path
        return DatabaseUrl(scheme="sqlite", path=path)
    parts = urlsplit(url)
    if parts.scheme in ("mysql", "mariadb", "mysql+pymysql"):
        try:
            port = parts.port or 3306
        except ValueError:
            raise ValueError("expected a port number between 1 and 65535 in the MySQL URL") from None
        database = parts.path.lstrip("/")
        if not parts.hostname or not database or "/" in database:
            raise ValueError('expected "mysql://USER:PASSWORD@HOST:PORT/DATABASE"')
        return DatabaseUrl(
            scheme="mysql",
            host=parts.hostname,
            port=port,
            user=unquote(parts.username or "root"),
            password=password if password is not None else unquote(parts.password or ""),
            database=unquote(database),
        )
    raise ValueError('expected a URL starting with "sqlite:///" or "mysql://"')
