"""The hub's naming and text rules: pure checks, the same on every front end and in every process."""

from __future__ import annotations

import re

from myservices.errors import NICK_INVALID, ROOM_INVALID, TEXT_INVALID, RequestError
from myservices.hub.config import HubConfig

# message ids are BIGINT in the database: a "since" past this names no message a room can have
MAX_MESSAGE_ID = 2**63 - 1

_NICK_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_ROOM_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*")


def check_nick(config: HubConfig, nick: str) -> str:
    """C{nick}, or RequestError(NICK_INVALID)."""
    if len(nick) > config.max_nick_length or not _NICK_RE.fullmatch(nick):
        raise RequestError(
            NICK_INVALID,
            f'nick "{nick}": 1 to {config.max_nick_length} letters, digits, _ or -, starting with a letter',
        )
    return nick


def check_room(config: HubConfig, name: str) -> str:
    """The canonical room name (lower case, without a leading #), or RequestError(ROOM_INVALID)."""
    canonical = name[1:] if name.startswith("#") else name
    canonical = canonical.lower()
    if len(canonical) > config.max_room_length or not _ROOM_RE.fullmatch(canonical):
        raise RequestError(
            ROOM_INVALID,
            f"room \"{name}\": 1 to {config.max_room_length} letters, digits, _, . or -"
            " (case does not matter, a leading # is optional)",
        )
    return canonical


def check_text(config: HubConfig, text: str) -> str:
    """C{text}, or RequestError(TEXT_INVALID): not empty, no control characters, valid Unicode, not too long."""
    if not text or not text.strip() or any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in text):
        raise RequestError(TEXT_INVALID, "text must be non-empty, without control characters")
    if len(text) > config.max_text_length:
        raise RequestError(TEXT_INVALID, f"text is longer than {config.max_text_length} characters")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # a lone surrogate (a JSON "\ud800"): no front end could send it on, no database store it
            raise RequestError(TEXT_INVALID, "text must be valid Unicode (no unpaired surrogates)") from None
    return text
