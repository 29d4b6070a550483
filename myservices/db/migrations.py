"""Versioned schema migrations, applied at startup on SQLite and MySQL alike.

A migration is applied once: its version is recorded in ``schema_version``.
Append new migrations with the next version number; never edit one that has
shipped. MySQL commits DDL implicitly, so write each statement to be safe to
run again (``CREATE TABLE IF NOT EXISTS``) in case a migration is interrupted
before its version is recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from myservices.db.pool import Txn


@dataclass(frozen=True)
class Migration:
    """One schema step: C{apply(txn)} may branch on C{txn.dialect}."""

    version: int
    name: str
    apply: Callable[[Txn], None]


class SchemaTooNew(Exception):
    """The database was migrated by a newer myservices; running on it could corrupt data."""


def _chat_messages(txn: Txn) -> None:
    # the last N messages of each room or topic; (room, id) is unique and ids increase per room
    table_options = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4" if txn.dialect == "mysql" else ""
    txn.execute(
        "CREATE TABLE IF NOT EXISTS chat_messages ("
        " room VARCHAR(255) NOT NULL,"
        " id BIGINT NOT NULL,"
        " ts DOUBLE NOT NULL,"
        " nick VARCHAR(255) NOT NULL,"
        " text TEXT NOT NULL,"
        " PRIMARY KEY (room, id))" + table_options
    )


def _counters(txn: Txn) -> None:
    # named durable counters (the HTTP request counter is "http_requests")
    table_options = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4" if txn.dialect == "mysql" else ""
    txn.execute(
        "CREATE TABLE IF NOT EXISTS counters ("
        " name VARCHAR(64) NOT NULL PRIMARY KEY,"
        " value BIGINT NOT NULL)" + table_options
    )
    # created here so daemons starting together do not race to create it
    txn.execute("SELECT 1 FROM counters WHERE name = ?", ("http_requests",))
    if txn.fetchone() is None:
        txn.execute("INSERT INTO counters (name, value) VALUES (?, 0)", ("http_requests",))


def _accounts_and_kv(txn: Txn) -> None:
    # usernames are stored in lower case; keys compare exactly (binary collation on MySQL)
    if txn.dialect == "mysql":
        table_options = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        auto_id = "id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY"
        binary = " COLLATE utf8mb4_bin"
        text = "MEDIUMTEXT"
    else:
        table_options, auto_id, binary, text = "", "id INTEGER PRIMARY KEY AUTOINCREMENT", "", "TEXT"
    txn.execute(
        "CREATE TABLE IF NOT EXISTS accounts ("
        f" {auto_id},"
        f" username VARCHAR(64){binary} NOT NULL UNIQUE,"
        " password_hash VARCHAR(255) NOT NULL,"
        " created_at BIGINT NOT NULL)" + table_options
    )
    txn.execute(
        "CREATE TABLE IF NOT EXISTS kv_items ("
        " account_id BIGINT NOT NULL,"
        f" item_key VARCHAR(255){binary} NOT NULL,"
        f" item_value {text} NOT NULL,"
        " updated_at DOUBLE NOT NULL,"
        " PRIMARY KEY (account_id, item_key),"
        " FOREIGN KEY (account_id) REFERENCES accounts (id) ON DELETE CASCADE)" + table_options
    )


def _chat_rooms(txn: Txn) -> None:
    # each room's highest message id ever given, written with the messages: ids never repeat after a
    # restart, even when history is off or trimmed
    table_options = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4" if txn.dialect == "mysql" else ""
    txn.execute(
        "CREATE TABLE IF NOT EXISTS chat_rooms ("
        " room VARCHAR(255) NOT NULL PRIMARY KEY,"
        " last_id BIGINT NOT NULL)" + table_options
    )
    verb = "INSERT OR IGNORE" if txn.dialect == "sqlite" else "INSERT IGNORE"
    txn.execute(f"{verb} INTO chat_rooms (room, last_id) SELECT room, MAX(id) FROM chat_messages GROUP BY room")


def _hub_lease(txn: Txn) -> None:
    # the memory engine's claim on this database: one row, held by one daemon at a time (myservices/hub/lease.py)
    table_options = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4" if txn.dialect == "mysql" else ""
    txn.execute(
        "CREATE TABLE IF NOT EXISTS hub_lease ("
        " name VARCHAR(64) NOT NULL PRIMARY KEY,"
        " owner VARCHAR(64) NOT NULL,"
        " host VARCHAR(255) NOT NULL,"
        " pid BIGINT NOT NULL,"
        " expires DOUBLE NOT NULL)" + table_options
    )
    # the row exists from the start, so taking the lease is one conditional UPDATE
    verb = "INSERT OR IGNORE" if txn.dialect == "sqlite" else "INSERT IGNORE"
    txn.execute(f"{verb} INTO hub_lease (name, owner, host, pid, expires) VALUES (?, '', '', 0, 0)", ("memory",))


def _room_policy(txn: Txn) -> None:
    # private rooms, their members, bans and closed rooms (myservices/hub/policy_store.py); usernames in lower case
    if txn.dialect == "mysql":
        table_options, binary = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4", " COLLATE utf8mb4_bin"
    else:
        table_options, binary = "", ""
    owner_index = ", INDEX room_private_owner (owner)" if txn.dialect == "mysql" else ""
    txn.execute(
        "CREATE TABLE IF NOT EXISTS room_private ("
        " room VARCHAR(255) NOT NULL PRIMARY KEY,"
        f" owner VARCHAR(64){binary} NOT NULL,"
        f" created_at DOUBLE NOT NULL{owner_index})" + table_options
    )
    if txn.dialect == "sqlite":
        txn.execute("CREATE INDEX IF NOT EXISTS room_private_owner ON room_private (owner)")
    txn.execute(
        "CREATE TABLE IF NOT EXISTS room_members ("
        " room VARCHAR(255) NOT NULL,"
        f" username VARCHAR(64){binary} NOT NULL,"
        " added_at DOUBLE NOT NULL,"
        " PRIMARY KEY (room, username))" + table_options
    )
    txn.execute(
        "CREATE TABLE IF NOT EXISTS room_bans ("
        " room VARCHAR(255) NOT NULL,"
        f" username VARCHAR(64){binary} NOT NULL,"
        " until DOUBLE NOT NULL,"
        f" banned_by VARCHAR(64){binary} NOT NULL,"
        " PRIMARY KEY (room, username))" + table_options
    )
    txn.execute(
        "CREATE TABLE IF NOT EXISTS room_closed ("
        " room VARCHAR(255) NOT NULL PRIMARY KEY,"
        " closed_at DOUBLE NOT NULL,"
        f" closed_by VARCHAR(64){binary} NOT NULL)" + table_options
    )


def has_column(txn: Txn, table: str, column: str) -> bool:
    """Whether C{table} has C{column} (so a migration that adds one can run again after an interruption)."""
    if txn.dialect == "mysql":
        txn.execute(
            "SELECT COUNT(*) FROM information_schema.columns"
            " WHERE table_schema = DATABASE() AND table_name = ? AND column_name = ?",
            (table, column),
        )
    else:
        txn.execute("SELECT COUNT(*) FROM pragma_table_info(?) WHERE name = ?", (table, column))
    row = txn.fetchone()
    return row is not None and bool(row[0])


def _password_changed_at(txn: Txn) -> None:
    # when an account's password last changed (NULL: never): tokens issued before it are refused
    if not has_column(txn, "accounts", "password_changed_at"):  # MySQL commits DDL at once: safe to run again
        txn.execute("ALTER TABLE accounts ADD COLUMN password_changed_at DOUBLE NULL")


def _chat_message_account(txn: Txn) -> None:
    # 1: the nick was a logged-in account's when the message was published (0 for older messages)
    if not has_column(txn, "chat_messages", "account"):
        txn.execute("ALTER TABLE chat_messages ADD COLUMN account SMALLINT NOT NULL DEFAULT 0")


MIGRATIONS: Sequence[Migration] = (
    Migration(1, "chat history", _chat_messages),
    Migration(2, "counters", _counters),
    Migration(3, "accounts and key-value items", _accounts_and_kv),
    Migration(4, "chat room ids", _chat_rooms),
    Migration(5, "the memory engine's lease", _hub_lease),
    Migration(6, "accounts: time of the last password change", _password_changed_at),
    Migration(7, "whether a chat message came from a logged-in account", _chat_message_account),
    Migration(8, "room policy: private rooms, members, bans, closed rooms", _room_policy),
)

_LOCK_NAME = "myservices.schema_migration"
_LOCK_WAIT_SECONDS = 60


def migrate_txn(txn: Txn, migrations: Sequence[Migration]) -> list[int]:
    """Apply the migrations not yet recorded; return the versions applied now."""
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise ValueError("migration versions must be unique and increasing")
    if txn.dialect == "sqlite":
        # several processes (workers) may start on one file at once: the first migrates, the others wait
        # (busy_timeout) and then find it done; the whole migration is one transaction
        txn.execute("BEGIN IMMEDIATE")
    txn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER NOT NULL PRIMARY KEY,"
        " name VARCHAR(200) NOT NULL,"
        " applied_at BIGINT NOT NULL)"
    )
    if txn.dialect == "mysql":
        # several daemons may start against one database at once
        txn.execute("SELECT GET_LOCK(?, ?)", (_LOCK_NAME, _LOCK_WAIT_SECONDS))
        row = txn.fetchone()
        if not row or row[0] != 1:
            raise RuntimeError("timed out waiting for another process's schema migration")
    try:
        txn.execute("SELECT version FROM schema_version")
        applied = {row[0] for row in txn.fetchall()}
        known = set(versions)
        unknown = sorted(v for v in applied if v not in known)
        if unknown and unknown[-1] > max(known, default=0):
            raise SchemaTooNew(
                f"database schema version {unknown[-1]} is newer than this myservices knows"
                f" ({max(known, default=0)}); upgrade myservices or use another database"
            )
        done = []
        for m in migrations:
            if m.version in applied:
                continue
            m.apply(txn)
            txn.execute(
                "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                (m.version, m.name, int(time.time())),
            )
            done.append(m.version)
        if txn.dialect == "mysql":
            # before the lock goes: a daemon waiting for it must find these versions applied, not apply them again
            txn.execute("COMMIT")
        return done
    finally:
        if txn.dialect == "mysql":
            txn.execute("SELECT RELEASE_LOCK(?)", (_LOCK_NAME,))
            txn.fetchone()
