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

    def allow(self) -> bool:
        """Take one token if there is one."""
        now = self._seconds()
        tokens = self._tokens + (now - self._stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self._stamp = now
        if tokens >= 1:
            self._tokens = tokens - 1
            return True
        self._tokens = tokens
        return False

    def wait(self) -> float:
        """Seconds until the next token (0 if there is one now)."""
        tokens = min(self.burst, self._tokens + (self._seconds() - self._stamp) * self.rate)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate
