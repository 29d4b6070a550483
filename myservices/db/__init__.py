"""The database layer: one connection pool, ``*_txn`` functions, schema migrations.

L{DatabaseUnavailable} and L{DatabaseTimeout} live in L{myservices.errors}, so that code
classifying errors needs no import of the database layer; they are re-exported here.
"""

from myservices.db.database import Database
from myservices.db.migrations import MIGRATIONS, Migration
from myservices.db.pool import Txn
from myservices.errors import DatabaseTimeout, DatabaseUnavailable  # defined in a leaf module, for the front ends

__all__ = ["Database", "DatabaseTimeout", "DatabaseUnavailable", "MIGRATIONS", "Migration", "Txn"]
