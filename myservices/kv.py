"""Per-account key-value storage in the database, shared by the framed and PB services.

Values are any JSON value, stored as compact JSON text; keys are strings
compared exactly (case matters). Every size has a limit in ``[kv]``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from myservices.db.pool import Txn
from myservices.errors import BAD_ARGUMENTS, NOT_FOUND, QUOTA_EXCEEDED, TOO_LARGE, RequestError
from myservices.settings import SIZE, KiB, MiB, setting

if TYPE_CHECKING:
    from myservices.db import Database


@dataclass(frozen=True, kw_only=True)
class KeyValueConfig:
    """[kv]: limits of the per-account key-value store."""

    max_key_length: int = setting(255, min=1, max=255, doc="longest key (characters)")
    max_value_size: int = setting(
        64 * KiB, kind=SIZE, min=16, max=16 * MiB, doc="largest value, as UTF-8 JSON text"
    )
    max_keys_per_account: int = setting(1000, min=1, max=10_000_000, doc="keys one account may hold")
    max_list: int = setting(1000, min=1, max=100_000, doc="most keys one list request returns")


def _get_txn(txn: Txn, account_id: int, key: str) -> str | None:
    txn.execute("SELECT item_value FROM kv_items WHERE account_id = ? AND item_key = ?", (account_id, key))
    row = txn.fetchone()
    return str(row[0]) if row else None


def _set_txn(txn: Txn, account_id: int, key: str, value: str, max_keys: int) -> str:
    """"created", "updated" or "quota"."""
    if txn.dialect == "mysql":
        # serialises this account's writers, so two new keys cannot both pass the quota check
        txn.execute("SELECT id FROM accounts WHERE id = ? FOR UPDATE", (account_id,))
        txn.fetchone()
    now = time.time()
    txn.execute(
        "UPDATE kv_items SET item_value = ?, updated_at = ? WHERE account_id = ? AND item_key = ?",
        (value, now, account_id, key),
    )
    if txn.rowcount:
        return "updated"
    txn.execute("SELECT COUNT(*) FROM kv_items WHERE account_id = ?", (account_id,))
    row = txn.fetchone()
    if row is not None and int(row[0]) >= max_keys:
        return "quota"
    txn.execute(
        "INSERT INTO kv_items (account_id, item_key, item_value, updated_at) VALUES (?, ?, ?, ?)",
        (account_id, key, value, now),
    )
    return "created"


def _delete_txn(txn: Txn, account_id: int, key: str) -> bool:
    txn.execute("DELETE FROM kv_items WHERE account_id = ? AND item_key = ?", (account_id, key))
    return txn.rowcount > 0


def _list_txn(txn: Txn, account_id: int, prefix: str, limit: int) -> list[str]:
    # not LIKE: SQLite's LIKE ignores case, and keys are exact
    txn.execute(
        "SELECT item_key FROM kv_items WHERE account_id = ? AND SUBSTR(item_key, 1, ?) = ? ORDER BY item_key LIMIT ?",
        (account_id, len(prefix), prefix, limit),
    )
    return [str(row[0]) for row in txn.fetchall()]


class KeyValueStore:
    """Get, set, delete and list one account's keys."""

    def __init__(self, database: Database, config: KeyValueConfig) -> None:
        self.database = database
        self.config = config

    def check_key(self, key: str) -> str:
        if not key or len(key) > self.config.max_key_length or any(ord(c) < 32 or ord(c) == 127 for c in key):
            raise RequestError(
                BAD_ARGUMENTS, f"key: 1 to {self.config.max_key_length} characters, without control characters"
            )
        return key

    def encode_value(self, value: Any) -> str:
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise RequestError(BAD_ARGUMENTS, f"value must be representable as JSON: {e}") from None
        if len(text.encode("utf-8")) > self.config.max_value_size:
            raise RequestError(TOO_LARGE, f"value: at most {self.config.max_value_size} bytes as JSON")
        return text

    async def get(self, account_id: int, key: str) -> Any:
        """The value under C{key}; NOT_FOUND if there is none."""
        text = await self.database.run(_get_txn, account_id, self.check_key(key))
        if text is None:
            raise RequestError(NOT_FOUND, f'no key "{key}"')
        return json.loads(text)

    async def set(self, account_id: int, key: str, value: Any) -> bool:
        """Store C{value} under C{key}; True if the key is new. QUOTA_EXCEEDED past max_keys_per_account."""
        outcome = await self.database.run(
            _set_txn, account_id, self.check_key(key), self.encode_value(value), self.config.max_keys_per_account
        )
        if outcome == "quota":
            raise RequestError(QUOTA_EXCEEDED, f"at most {self.config.max_keys_per_account} keys per account")
        return outcome == "created"

    async def delete(self, account_id: int, key: str) -> bool:
        """Remove C{key}; True if it existed."""
        return await self.database.run(_delete_txn, account_id, self.check_key(key))

    async def list(self, account_id: int, prefix: str = "", limit: int | None = None) -> list[str]:
        """Keys starting with C{prefix}, sorted, at most C{limit} (and max_list)."""
        if prefix:
            self.check_key(prefix)
        limit = self.config.max_list if limit is None else max(0, min(limit, self.config.max_list))
        return await self.database.run(_list_txn, account_id, prefix, limit) if limit else []
