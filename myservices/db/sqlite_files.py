"""Why a SQLite file cannot be opened or written, in words an operator can act on.

SQLite says only "unable to open database file" or "attempt to write a
readonly database". The usual causes are in the deployment: a data
directory (a Docker volume, a bind mount) owned by another user, a
directory that does not exist and cannot be created, a file in the way, a
read-only file system. L{explain} looks (with blocking file system calls:
call it in a pool thread) and names the path, this process's uid and gid
and what to do.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

# the messages of sqlite3.OperationalError that mean the file, not the SQL
_FILE_ERRORS = ("unable to open database file", "attempt to write a readonly database", "readonly database")


class DatabaseFileError(sqlite3.OperationalError):
    """The SQLite file cannot be opened or written; the message says why and what to do."""


def is_file_error(error: BaseException) -> bool:
    """Whether C{error} is SQLite failing to open or write its file (not a bad query)."""
    return isinstance(error, sqlite3.OperationalError) and any(m in str(error) for m in _FILE_ERRORS)


def prepare_directory(path: str) -> None:
    """Create the directory of the SQLite file C{path} if it is missing; L{DatabaseFileError} if that fails."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as e:
        raise DatabaseFileError(explain(path, e)) from e


def _owner(path: Path) -> str:
    st = path.stat()
    return f"owned by uid {st.st_uid}, gid {st.st_gid}, mode {st.st_mode & 0o7777:04o}"


def _can(path: Path, mode: int) -> bool:
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


def explain(path: str, error: BaseException) -> str:
    """Why the SQLite file C{path} cannot be opened or written (C{error} is SQLite's word for it), and the fix."""
    try:
        return _explain(path, error)
    except OSError as e:  # looking was refused too (a directory on the way this process may not search)
        return (
            f"cannot open the SQLite database {path} ({error}); looking at its directory failed too ({e}): "
            f"make the directory and its parents searchable and writable by uid {os.geteuid()}, or point "
            "[daemon] data_dir (MYSERVICES_DATA_DIR) at a directory that is"
        )


def _explain(path: str, error: BaseException) -> str:
    uid, gid = os.geteuid(), os.getegid()
    me = f"this process (uid {uid}, gid {gid})"
    file = Path(path)
    directory = file.parent
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    fix = (
        f"make it writable by uid {uid} (e.g. chown {uid}:{gid} {{where}}; in Docker, mount a volume or "
        f"directory writable by uid {uid} at {directory}), or point [daemon] data_dir (MYSERVICES_DATA_DIR) "
        f"at a directory that is"
    )
    prefix = f"cannot open the SQLite database {path} ({error})"
    if not existing.is_dir():
        return (
            f"{prefix}: {existing} is not a directory, so {directory} cannot be created; "
            f"remove it or point [daemon] data_dir (MYSERVICES_DATA_DIR) elsewhere"
        )
    try:
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        return (
            f"{prefix}: {existing} is on a read-only file system; mount a writable volume at {directory} "
            f"(docker run --read-only needs one) or point [daemon] data_dir (MYSERVICES_DATA_DIR) elsewhere"
        )
    if existing != directory:
        return (
            f"{prefix}: the directory {directory} does not exist and {me} cannot create it in {existing} "
            f"({_owner(existing)}); create it and " + fix.format(where=directory)
        )
    if not _can(directory, os.W_OK | os.X_OK):
        return (
            f"{prefix}: the directory {directory} is not writable by {me}; it is {_owner(directory)}; "
            + fix.format(where=directory)
        )
    if file.exists() and not _can(file, os.R_OK | os.W_OK):
        return (
            f"{prefix}: the file {file} is not readable and writable by {me}; it is {_owner(file)}; "
            + fix.format(where=f"{directory} {file}*")
        )
    return f"{prefix}; {me} can write {directory}: check the disk (space, errors) and the file ({file})"
