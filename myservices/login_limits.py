"""Limits on password guessing and account creation: failures per client address and per account.

Each limit is a sliding window log (L{WindowLimit}): a key (an address, a
username) may have at most C{limit} events in any C{window} seconds; the
timestamps kept per key are at most C{limit}, and the keys tracked at most
C{max_keys} (the least recently touched is forgotten first), so memory is
bounded whatever a client sends. Time comes from the clock passed in.

L{LoginLimits} applies them the way fail2ban and django-axes do:

- a login is refused with RATE_LIMITED, before any password check, while its
  address or its username has too many recent failures;
- a failure counts against the address and the username, whether or not
  the username exists (the answers are the same, so they tell nothing). A
  login counts as a failure from the moment it is let through until it
  succeeds, so a burst of concurrent guesses cannot all pass the check while
  the first ones are still being hashed;
- a success forgets the failures of that username, not those of the
  address (other accounts guessed from there stay counted);
- every registration attempt that reaches the database counts against its
  address (created or "taken": both would tell an enumerator something).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Protocol

from myservices.errors import RATE_LIMITED, RequestError


class SecondsClock(Protocol):
    def seconds(self) -> float: ...


def peer_host(address: object) -> str | None:
    """The IP address of a peer (an IPv4Address or IPv6Address) as limits key it; None for other kinds (Unix)."""
    host = getattr(address, "host", None)
    return host if isinstance(host, str) and host else None


class WindowLimit:
    """At most C{limit} events per key in any C{window} seconds, for at most C{max_keys} keys."""

    def __init__(self, clock: SecondsClock, limit: int, window: float, max_keys: int) -> None:
        self.clock = clock
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._events)

    def _recent(self, key: str, now: float) -> deque[float] | None:
        events = self._events.get(key)
        if events is None:
            return None
        while events and events[0] <= now - self.window:
            events.popleft()
        if not events:
            del self._events[key]
            return None
        return events

    def retry_after(self, key: str) -> float | None:
        """Seconds until C{key} may act again, or None if it may now."""
        now = self.clock.seconds()
        events = self._recent(key, now)
        if events is None or len(events) < self.limit:
            return None
        return events[0] + self.window - now

    def hit(self, key: str, now: float | None = None) -> float:
        """Record one event of C{key} at C{now} (default: the clock's now); return its time (for L{unhit})."""
        if now is None:
            now = self.clock.seconds()
        events = self._recent(key, now)
        if events is None:
            events = self._events[key] = deque(maxlen=self.limit)
            while len(self._events) > self.max_keys:
                self._events.popitem(last=False)
        else:
            self._events.move_to_end(key)
        events.append(now)
        return now

    def unhit(self, key: str, when: float) -> None:
        """Take back the event of C{key} recorded at C{when} by L{hit}, if it is still kept."""
        events = self._events.get(key)
        if events is not None and when in events:
            events.remove(when)
            if not events:
                del self._events[key]

    def reset(self, key: str) -> None:
        """Forget C{key}'s events."""
        self._events.pop(key, None)


@dataclass(frozen=True)
class LimitSettings:
    """The numbers of L{LoginLimits} (from [accounts]); a limit of 0 turns that limit off."""

    failures_per_address: int = 10
    failures_per_account: int = 20
    failure_window: float = 300.0
    registrations_per_address: int = 10
    registration_window: float = 3600.0
    max_tracked: int = 10_000


def _retry_error(what: str, seconds: float) -> RequestError:
    wait = max(1, math.ceil(seconds))
    return RequestError(RATE_LIMITED, f"{what}; retry in {wait} s", retry_after=wait)


class LoginLimits:
    """Failed logins per address and per account, registrations per address (see the module)."""

    def __init__(self, clock: SecondsClock, settings: LimitSettings) -> None:
        s = settings
        self.settings = s
        self.address_failures = WindowLimit(clock, s.failures_per_address, s.failure_window, s.max_tracked)
        self.account_failures = WindowLimit(clock, s.failures_per_account, s.failure_window, s.max_tracked)
        self.registrations = WindowLimit(clock, s.registrations_per_address, s.registration_window, s.max_tracked)

    def check_login(self, username: str | None, address: str | None) -> None:
        """Raise RATE_LIMITED if a login from C{address} as C{username} must not be tried now."""
        waits = []
        if address is not None and self.settings.failures_per_address:
            waits.append(self.address_failures.retry_after(address))
        if username is not None and self.settings.failures_per_account:
            waits.append(self.account_failures.retry_after(username))
        longest = max((w for w in waits if w is not None), default=None)
        if longest is not None:
            raise _retry_error("too many failed logins", longest)

    def login_attempted(self, username: str | None, address: str | None) -> float:
        """Count a login about to be checked as a failure (L{login_succeeded} takes it back); return its time."""
        # both recorded at the time returned: a clock that moves between two reads would leave L{unhit} nothing
        when = self.address_failures.clock.seconds()
        if address is not None and self.settings.failures_per_address:
            self.address_failures.hit(address, when)
        if username is not None and self.settings.failures_per_account:
            self.account_failures.hit(username, when)
        return when

    def login_unchecked(self, username: str, address: str | None, attempted_at: float) -> None:
        """The login counted at C{attempted_at} could not be checked (the server failed): take it back."""
        self.account_failures.unhit(username, attempted_at)
        if address is not None:
            self.address_failures.unhit(address, attempted_at)

    def login_succeeded(self, username: str, address: str | None, attempted_at: float) -> None:
        """The login counted at C{attempted_at} succeeded: forget the username's failures, and that attempt."""
        self.account_failures.reset(username)
        if address is not None:
            self.address_failures.unhit(address, attempted_at)

    def check_registration(self, address: str | None) -> None:
        """Raise RATE_LIMITED if C{address} has created (or tried to create) too many accounts lately."""
        if address is None or not self.settings.registrations_per_address:
            return
        wait = self.registrations.retry_after(address)
        if wait is not None:
            raise _retry_error("too many accounts created from this address", wait)

    def registration_attempted(self, address: str | None) -> None:
        if address is not None and self.settings.registrations_per_address:
            self.registrations.hit(address)
