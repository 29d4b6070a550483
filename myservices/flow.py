"""The connection helpers every request/reply front end shares: reading paused for several reasons, and an idle timer."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer


@implementer(IPushProducer)
class ReadGate:
    """Pauses reading from a transport while any reason holds; resumes when the last one is released.

    A connection stops reading for several reasons at once (too many requests
    in flight, a client that does not read its replies, a barrier command, and
    for HTTP twisted.web's own pauses); without one place to keep them, one
    reason's resume undoes another's pause. Also the producer twisted.web's
    channel pauses and resumes ("twisted.web" is its reason). Reading never
    resumes after L{close}.
    """

    def __init__(self, producer: IPushProducer) -> None:
        self._producer = producer
        self._holds: set[str] = set()
        self.closed = False

    @property
    def held(self) -> bool:
        return bool(self._holds)

    def hold(self, reason: str) -> None:
        if not self._holds:
            self._producer.pauseProducing()
        self._holds.add(reason)

    def release(self, reason: str) -> None:
        if reason in self._holds:
            self._holds.discard(reason)
            if not self._holds and not self.closed:
                self._producer.resumeProducing()

    def close(self) -> None:
        """No more reading: the client sent its last byte, or the connection is closing."""
        self.closed = True

    # what HTTPChannel calls on its network producer

    def pauseProducing(self) -> None:
        self.hold("twisted.web")

    def resumeProducing(self) -> None:
        self.release("twisted.web")

    def stopProducing(self) -> None:
        self._producer.stopProducing()

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self._producer.registerProducer(producer, streaming)  # type: ignore[attr-defined]

    def unregisterProducer(self) -> None:
        self._producer.unregisterProducer()  # type: ignore[attr-defined]


class IdleTimer:
    """Calls C{on_idle} once nothing happened for C{timeout()} seconds (0: never).

    L{touch} only records the time: the timer looks at it when it fires and
    sleeps again for what is left, which is cheaper than moving a timer on
    every request. C{timeout} is read each time, so a reload applies to open
    connections.
    """

    def __init__(self, clock: IReactorTime, timeout: Callable[[], float], on_idle: Callable[[], None]) -> None:
        self._clock = clock
        self._timeout = timeout
        self._on_idle = on_idle
        self._last = clock.seconds()
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        self._last = self._clock.seconds()
        if self._timeout() and self._call is None:
            self._call = self._clock.callLater(self._timeout(), self._check)

    def touch(self) -> None:
        self._last = self._clock.seconds()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _check(self) -> None:
        self._call = None
        timeout = self._timeout()
        if not timeout:
            return
        left = self._last + timeout - self._clock.seconds()
        if left > 0:
            self._call = self._clock.callLater(left, self._check)
        else:
            self._on_idle()
