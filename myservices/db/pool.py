"""Connection pools for the two backends, and the cursor wrapper every ``*_txn`` function gets.

SQL in this project is written once, with ``?`` placeholders; L{Txn} converts
it for pymysql's ``%s`` style. This is the only place that knows the drivers'
placeholder styles.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import pymysql
from twisted.enterprise import adbapi
from twisted.internet import threads
from twisted.internet.defer import Deferred

from myservices.db.config import DatabaseConfig, DatabaseUrl
from myservices.db.sqlite_files import DatabaseFileError, explain, is_file_error, prepare_directory

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
        row: tuple[Any, ...] | None = self._cursor.fetchone()
        return row

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(self._cursor.fetchall())

    @property
    def rowcount(self) -> int:
        count: int = self._cursor.rowcount
        return count

    @property
    def lastrowid(self) -> int | None:
        rowid: int | None = self._cursor.lastrowid
        return rowid

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


class Abandoned(Exception):
    """The caller stopped waiting before the transaction committed: it was rolled back or never started."""


class Ticket:
    """What the caller and the worker thread of one transaction share: whether the caller still waits.

    Set on the reactor thread (a deadline passed, or the caller cancelled)
    and read in the worker thread, which then skips the work or rolls it
    back instead of committing. Only a transaction already committing when
    the caller gave up can still commit.
    """

    __slots__ = ("abandoned",)

    def __init__(self) -> None:
        self.abandoned = False

    def abandon(self) -> None:
        self.abandoned = True

    def check(self) -> None:
        """Raise L{Abandoned} if the caller has stopped waiting."""
        if self.abandoned:
            raise Abandoned()


class Pool(adbapi.ConnectionPool):
    """adbapi's pool, with transactions that their caller can abandon."""

    def __init__(self, dbapiName: str, *connargs: Any, **connkw: Any) -> None:
        super().__init__(dbapiName, *connargs, **connkw)  # type: ignore[no-untyped-call]  # adbapi is unannotated

    def run_transaction(self, ticket: Ticket, interaction: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Like C{runInteraction}, but skipped if C{ticket} is abandoned before a thread takes it up.

        A caller that gave up while every thread was busy (a hung server)
        leaves no work behind to run when the server answers again.
        """
        return threads.deferToThreadPool(
            self._reactor, self.threadpool, self._run_transaction, ticket, interaction, args
        )

    def _run_transaction(self, ticket: Ticket, interaction: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        ticket.check()
        return self._runInteraction(interaction, *args)  # type: ignore[no-untyped-call]  # adbapi is unannotated


class SQLitePool(Pool):
    """The pool of one SQLite file: its directory is created, and a file it cannot use is explained.

    Both happen in the pool's thread (file system calls block). SQLite's
    "unable to open database file" becomes a L{DatabaseFileError} that names
    the path, this process's uid and gid, and what to do.
    """

    def __init__(self, path: str, **kw: Any) -> None:
        super().__init__("sqlite3", path, **kw)
        self.path = path
        self._directory_ready = path == ":memory:"

    def _run_transaction(self, ticket: Ticket, interaction: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        try:
            if not self._directory_ready:
                prepare_directory(self.path)
                self._directory_ready = True
            return super()._run_transaction(ticket, interaction, args)
        except DatabaseFileError:
            raise
        except sqlite3.OperationalError as e:
            if not is_file_error(e):
                raise
            # a file opened read-only stays so: open it again next time (the owner may have been fixed)
            conn = self.connections.pop(self.threadID(), None)
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            raise DatabaseFileError(explain(self.path, e)) from e


@contextlib.contextmanager
def _io_timeout(conn: pymysql.connections.Connection, seconds: float) -> Iterator[None]:
    # pymysql applies _read_timeout / _write_timeout to the socket before each read and write
    read, write = conn._read_timeout, conn._write_timeout
    conn._read_timeout = conn._write_timeout = seconds
    try:
        yield
    finally:
        conn._read_timeout, conn._write_timeout = read, write


class _MySQLConnection(pymysql.connections.Connection):  # type: ignore[misc]  # pymysql has no type hints
    """pymysql's connection, with the whole connect (not only TCP) bounded by C{connect_timeout}.

    pymysql reads the server's greeting with C{read_timeout} (our
    C{query_timeout}): the kernel completes the TCP handshake for a server
    that is stopped or hung, and the greeting would then hold the thread
    for the whole query timeout.
    """

    def connect(self, sock: Any = None) -> None:
        with _io_timeout(self, self.connect_timeout):
            super().connect(sock)

    def ping_within(self, seconds: float) -> None:
        """C{ping()}, failing if the server does not answer within C{seconds}."""
        with _io_timeout(self, seconds):
            self.ping(reconnect=False)


class _PooledMySQLConnection(adbapi.Connection):
    """adbapi's connection wrapper, quiet when rolling back on a connection that has died.

    adbapi logs "Rollback failed" tracebacks and raises C{ConnectionLost}
    when the connection died in the transaction (a statement timed out, the
    server went away), although the transaction's own error says so already.
    """

    def rollback(self) -> None:
        try:
            self._connection.rollback()
        except pymysql.err.Error:
            self._pool.forget(self._connection)  # this thread opens a new one for its next transaction


class MySQLPool(Pool):
    """A pymysql pool that pings (and reconnects) each connection when a transaction checks it out.

    With only C{cp_reconnect}, every connection made stale by a server restart
    fails one query before it is replaced; the ping costs one round trip and
    means only transactions started while the server is down fail. The ping
    and a reconnect each take at most C{ping_timeout} (C{connect_timeout}),
    so a thread comes back soon from a server that stopped answering.
    """

    connectionFactory = _PooledMySQLConnection
    ping_timeout = 5.0

    def connect(self) -> Any:
        conn = self.connections.get(self.threadID())
        if conn is not None:
            try:
                conn.ping_within(self.ping_timeout)
                return conn
            except pymysql.err.Error:
                # stale (restart, wait_timeout, KILL) or not answering: open a new one, which fails
                # clearly if the server is down
                self.forget(conn)
        conn = _MySQLConnection(*self.connargs, **self.connkw)
        self.connections[self.threadID()] = conn
        return conn

    def forget(self, conn: Any) -> None:
        """Drop this thread's connection C{conn} without a word (it is dead or about to be)."""
        if self.connections.get(self.threadID()) is conn:
            del self.connections[self.threadID()]
        with contextlib.suppress(Exception):
            conn.close()


def make_pool(url: DatabaseUrl, cfg: DatabaseConfig, reactor: Any) -> tuple[Pool, Dialect]:
    """Create (but do not start) the pool for C{url}."""
    if url.scheme == "sqlite":
        # exactly one connection: with several, a file database lost updates silently
        sqlite_pool = SQLitePool(
            url.path,
            check_same_thread=False,  # the pool closes it from the reactor thread
            cp_min=1,
            cp_max=1,
            cp_openfun=_sqlite_setup,
            cp_reactor=reactor,
            cp_noisy=False,
        )
        return sqlite_pool, "sqlite"
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
    pool.ping_timeout = cfg.connect_timeout
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
        return is_file_error(error) or "locked" in str(error)
    return False
