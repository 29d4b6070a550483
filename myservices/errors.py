"""The error codes every front end shares: a stable code, a short message, whether retrying can help."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorCode:
    """One entry of the shared error table."""

    code: str
    message: str
    retry: bool


BUSY = ErrorCode("BUSY", "too many connections, try again later", retry=True)
DATABASE_UNAVAILABLE = ErrorCode("DATABASE_UNAVAILABLE", "the database is not available", retry=True)
SHUTTING_DOWN = ErrorCode("SHUTTING_DOWN", "the server is shutting down", retry=True)

ERRORS: dict[str, ErrorCode] = {e.code: e for e in (BUSY, DATABASE_UNAVAILABLE, SHUTTING_DOWN)}
