"""[rooms]: who may do what in which room: admin accounts, rules by room-name pattern, private-room limits.

A rule is one table of the array ``[[rooms.rules]]``: a C{pattern} (fnmatch
style, matched against the canonical lower-case room name; the first rule
that matches wins) and, for each action (join, subscribe, publish, read),
who may: "anyone", "accounts" (logged in), "admins", or a list of account
usernames. An action a rule leaves out is open to anyone; a room no rule
matches is open to anyone. Admin accounts may do everything everywhere.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from myservices.settings import DURATION, PARSED, setting

ANYONE = "anyone"
ACCOUNTS = "accounts"
ADMINS = "admins"
RULE_ACTIONS = ("join", "subscribe", "publish", "read")

# an account username, as myservices.accounts checks it (lower case, 3 to 32 characters)
_USERNAME_RE = re.compile(r"[a-z][a-z0-9_-]{2,31}")
MAX_RULES = 1000
MAX_NAMES = 10_000  # account names in one rule's list


Who = str | frozenset[str]  # "anyone", "accounts", "admins", or the account usernames allowed


@dataclass(frozen=True)
class Rule:
    """Who may join, subscribe, publish and read (history, who) in the rooms matching C{pattern}."""

    pattern: str
    join: Who = ANYONE
    subscribe: Who = ANYONE
    publish: Who = ANYONE
    read: Who = ANYONE

    def matches(self, room: str) -> bool:
        return fnmatch.fnmatchcase(room, self.pattern)

    def who(self, action: str) -> Who:
        value: Who = getattr(self, action)
        return value


def _who(value: Any, where: str) -> Who:
    if isinstance(value, str):
        if value in (ANYONE, ACCOUNTS, ADMINS):
            return value
        raise ValueError(f'{where}: expected "anyone", "accounts", "admins" or an array of usernames, got {value!r}')
    if isinstance(value, list):
        if len(value) > MAX_NAMES:
            raise ValueError(f"{where}: at most {MAX_NAMES} usernames")
        names = []
        for name in value:
            if not isinstance(name, str) or not _USERNAME_RE.fullmatch(name.lower()):
                raise ValueError(f"{where}: {name!r} is not an account username (3 to 32 letters, digits, _ or -)")
            names.append(name.lower())
        return frozenset(names)
    raise ValueError(f'{where}: expected "anyone", "accounts", "admins" or an array of usernames')


def parse_rules(value: Any) -> tuple[Rule, ...]:
    """The rules of an array of tables (C{[[rooms.rules]]}); ValueError names the rule and key at fault."""
    if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
        raise ValueError("expected an array of tables ([[rooms.rules]])")
    if len(value) > MAX_RULES:
        raise ValueError(f"at most {MAX_RULES} rules")
    rules = []
    for i, table in enumerate(value, 1):
        where = f"rule {i}"
        unknown = sorted(set(table) - {"pattern", *RULE_ACTIONS})
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r} (expected pattern, {', '.join(RULE_ACTIONS)})")
        pattern = table.get("pattern")
        if not isinstance(pattern, str) or not pattern or len(pattern) > 255:
            raise ValueError(f'{where}: "pattern" must be a non-empty string such as "staff-*"')
        where = f"rule {i} ({pattern})"
        actions = {a: _who(table[a], f"{where}.{a}") for a in RULE_ACTIONS if a in table}
        # an action the rule leaves out is as closed as its "join": a rule that keeps people out of a room
        # keeps them from subscribing to it and reading it too, unless it says otherwise
        gate = actions.get("join", ANYONE)
        actions = {a: actions.get(a, gate) for a in RULE_ACTIONS}
        rules.append(Rule(pattern=pattern.lower(), **actions))
    return tuple(rules)


def _usernames(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected an array of account usernames")
    out = []
    for name in value:
        if not _USERNAME_RE.fullmatch(name.lower()):
            raise ValueError(f"{name!r} is not an account username (3 to 32 letters, digits, _ or -)")
        out.append(name.lower())
    return tuple(out)


@dataclass(frozen=True, kw_only=True)
class RoomsConfig:
    """[rooms]: admins, rules by room-name pattern, and the limits of private rooms."""

    admins: tuple[str, ...] = setting(
        (), kind=PARSED, parse=_usernames, expected="an array of account usernames",
        doc="account usernames that are admins: they may kick, ban, close and reopen rooms, and do anything anywhere",
    )
    rules: tuple[Rule, ...] = setting(
        (), kind=PARSED, parse=parse_rules, expected="an array of tables ([[rooms.rules]])",
        doc="rules by room-name pattern (first match wins): pattern, and join, subscribe, publish, read, each "
        '"anyone", "accounts", "admins" or an array of usernames (see below)',
    )
    private_rooms: bool = setting(True, doc="whether logged-in users may create private rooms (admins always may)")
    max_private_rooms_per_account: int = setting(
        10, min=0, max=100_000, doc="private rooms one account may own"
    )
    max_private_members: int = setting(
        100, min=1, max=100_000, doc="members (invited accounts) of one private room, its owner not counted"
    )
    max_ban_duration: float = setting(
        30 * 86400.0, kind=DURATION, min=1, max=10 * 365 * 86400, doc="longest ban, in seconds"
    )
    cache_ttl: float = setting(
        5.0, kind=DURATION, min=0, max=3600,
        doc="seconds a process trusts what it read of a room's privacy, members, bans and closing; changes made"
        " by another process take effect here within this time (0: read the database on every check)",
    )
    max_cached_rooms: int = setting(10_000, min=1, max=10_000_000, doc="rooms whose policy state one process caches")

    def is_admin(self, account: str | None) -> bool:
        """Whether C{account} is one of the configured admins."""
        return account is not None and account in self.admins

    def rule_for(self, room: str) -> Rule | None:
        """The first rule whose pattern matches C{room}, or None."""
        for rule in self.rules:
            if rule.matches(room):
                return rule
        return None
