"""The database layer: one connection pool, ``*_txn`` functions, schema migrations."""

from myservices.db.database import Database, DatabaseTimeout, DatabaseUnavailable
from myservices.db.migrations import MIGRATIONS, Migration
from myservices.db.pool import Txn

__all__ = ["Database", "DatabaseTimeout", "DatabaseUnavailable", "MIGRATIONS", "Migration", "Txn"]
