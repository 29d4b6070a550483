"""A token bucket on an injected clock."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime


class TokenBucket:
    """Allows C{rate} events per second on average and bursts of up to C{burst}."""

    def __init__(self, rate: float, burst: int, clock: IReactorTime) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._seconds = clock.seconds  # looked up once: allow() runs for every request
        self._tokens = float(burst)
        self._stamp = clock.seconds()

    def allow(self, cost: int = 1) -> bool:
        """Take C{cost} tokens (one event) if there are that many."""
        now = self._seconds()
        tokens = self._tokens + (now - self._stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self._stamp = now
        if tokens >= cost:
            self._tokens = tokens - cost
            return True
        self._tokens = tokens
        return False

    def wait(self, cost: int = 1) -> float:
        """Seconds until C{cost} tokens are there (0 if they are now)."""
        tokens = min(self.burst, self._tokens + (self._seconds() - self._stamp) * self.rate)
        return 0.0 if tokens >= cost else (cost - tokens) / self.rate
