"""Connection pools for the two backends, and the cursor wrapper every ``*_txn`` function gets.

SQL in this project is written once, with ``?`` placeholders; L{Txn} converts
it for pymysql's ``%s`` style. This is the only place that knows the drivers'
placeholder styles.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import pymysql
from twisted.enterprise import adbapi

from myservices.config import DatabaseConfig, DatabaseUrl

Dialect = Literal["sqlite", "mysql"]


class Txn:
    """What a ``*_txn(txn, ...)`` function receives: a cursor taking ``?`` placeholders.

    Parameters are always passed separately from the SQL text; never format
    values into C{sql}.
    """

    def __init__(self, cursor: Any, dialect: Dialect) -> None:
        self._cursor = cursor
        self.dialect: Dialect = dialect

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._cursor.execute(self._sql(sql), tuple(params))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._cursor.executemany(self._sql(sql), [tuple(r) for r in rows])

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._cursor.fetchone()

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self._cursor.fetchall())

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    def _sql(self, sql: str) -> str:
        return _to_format_style(sql) if self.dialect == "mysql" else sql


@functools.lru_cache(maxsize=512)
def _to_format_style(sql: str) -> str:
    # pymysql applies %-formatting whenever parameters are given, so a literal % doubles
    return sql.replace("%", "%%").replace("?", "%s")


def _sqlite_setup(conn: sqlite3.Connection) -> None:
    cur = conn.cursor()
    cur.execute("PRAGMA foreign_keys = ON")
    cur.execute("PRAGMA busy_timeout = 5000")
    # WAL lets readers outside the daemon (backups, the sqlite3 shell) work while it writes
    cur.execute("PRAGMA journal_mode = WAL")
    cur.execute("PRAGMA synchronous = NORMAL")
    cur.close()


class MySQLPool(adbapi.ConnectionPool):
    """A pymysql pool that pings (and reconnects) each connection when a transaction checks it out.

    With only C{cp_reconnect}, every connection made stale by a server restart
    fails one query before it is replaced; the ping costs one round trip and
    means only transactions started while the server is down fail.
    """

    def connect(self) -> Any:
        conn = super().connect()
        try:
            conn.ping(reconnect=False)
        except pymysql.err.Error:
            # stale: forget it and open a new one (which fails clearly if the server is down)
            self.connections.pop(self.threadID(), None)
            with contextlib.suppress(Exception):
                conn.close()
            conn = super().connect()
        return conn


def make_pool(url: DatabaseUrl, cfg: DatabaseConfig, reactor: Any) -> tuple[adbapi.ConnectionPool, Dialect]:
    """Create (but do not start) the pool for C{url}."""
    if url.scheme == "sqlite":
        # exactly one connection: with several, a file database lost updates silently
        pool = adbapi.ConnectionPool(
            "sqlite3",
            url.path,
            check_same_thread=False,  # the pool closes it from the reactor thread
            cp_min=1,
            cp_max=1,
            cp_openfun=_sqlite_setup,
            cp_reactor=reactor,
            cp_noisy=False,
        )
        return pool, "sqlite"
    pool = MySQLPool(
        "pymysql",
        host=url.host,
        port=url.port,
        user=url.user,
        password=url.password,
        database=url.database,
        charset="utf8mb4",
        autocommit=False,
        connect_timeout=cfg.connect_timeout,
        read_timeout=cfg.query_timeout,
        write_timeout=cfg.query_timeout,
        cp_min=cfg.pool_min,
        cp_max=cfg.pool_max,
        cp_reconnect=True,
        cp_reactor=reactor,
        cp_noisy=False,
    )
    return pool, "mysql"


def is_transient_conflict(error: BaseException) -> bool:
    """True for a transaction the server rolled back and asks to be retried (deadlock, lock wait)."""
    if isinstance(error, pymysql.err.OperationalError):
        return bool(error.args) and error.args[0] in (1205, 1213)
    return False


def is_duplicate_key(error: BaseException) -> bool:
    """True for an insert that broke a unique key."""
    if isinstance(error, pymysql.err.IntegrityError):
        return bool(error.args) and error.args[0] == 1062
    return isinstance(error, sqlite3.IntegrityError) and "UNIQUE" in str(error)


def is_connection_error(error: BaseException) -> bool:
    """True for errors that mean the database could not be reached (not a bad query)."""
    if isinstance(error, (adbapi.ConnectionLost, pymysql.err.InterfaceError)):
        return True
    if isinstance(error, pymysql.err.OperationalError):
        # 2003: can't connect, 2006: server gone away, 2013: lost connection during query
        code = error.args[0] if error.args else None
        return code in (1040, 1053, 2003, 2006, 2013, 2055)
    if isinstance(error, sqlite3.OperationalError):
        return "unable to open" in str(error) or "locked" in str(error)
    return False
