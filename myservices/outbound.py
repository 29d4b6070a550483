"""A connection's outbound path with a bound: what a slow reader can cost the server."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer

from myservices.metrics import ServiceMetrics


def release_if_closing(transport: Any) -> bool:  # a stream transport: IConsumer and ITransport
    """Called by a streaming producer that Twisted resumed after a drain: unregister it if the transport is closing.

    C{loseConnection} waits for a streaming producer it paused: once the
    buffer drains, Twisted resumes it and, if nothing is written then, the
    connection never closes. Checking here, in the producer, makes every
    C{loseConnection} complete, whoever called it.
    """
    if not getattr(transport, "disconnecting", False):
        return False
    # a TLS transport holds small writes back for a turn and would send its close_notify ahead of them once
    # the producer goes: a second loseConnection sends them first (and does nothing else)
    transport.loseConnection()
    transport.unregisterProducer()
    return True


@implementer(IPushProducer)
class Outbound:
    """Writes to a transport; while the transport's buffer is full, queues up to C{max_pending} bytes.

    Registered as the transport's streaming producer: Twisted pauses it when
    the kernel stops taking data from the connection (the peer is not reading)
    and resumes it when the buffer drains. Past C{max_pending} queued bytes,
    C{on_overflow} is called once; the caller disconnects the slow consumer.
    Memory per connection stays at about the transport's buffer plus
    C{max_pending}. Writes are not flushed one by one: the transport sends a turn's writes at once.
    C{on_drained} is called when the peer has caught up (the queue is empty).
    With C{metrics}, every front end counts the same events the same way: each
    pause (the peer stopped reading) in C{backpressure_pauses}, an overflow as a
    slow consumer.
    After C{loseConnection}, writes stay bounded until the last queued byte
    reaches the transport; then it unregisters itself (see
    L{release_if_closing}) and drops later writes.
    """

    def __init__(
        self,
        transport: IConsumer,
        max_pending: int,
        on_overflow: Callable[[], None],
        on_drained: Callable[[], None] | None = None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._transport = transport
        self._metrics = metrics
        self.max_pending = max_pending
        self._on_overflow = on_overflow
        self._on_drained = on_drained
        self._queue: deque[bytes] = deque()
        self.pending = 0
        self.paused = False
        self.overflowed = False
        self._released = False
        self._sealed = False
        transport.registerProducer(self, True)

    def release(self) -> None:
        """The transport is closing: unregister now unless paused (a paused one does so after its last drain).

        TLS sends its close_notify only once no producer is registered (TCP
        only waits for a paused one); one that is not paused has nothing queued.
        Later writes are dropped.
        """
        if not self.paused:
            self.unregister()

    def unregister(self) -> None:
        """Stop being the transport's producer (once); later writes are dropped."""
        if not self._released:
            self._released = True
            self._transport.unregisterProducer()

    def seal(self) -> None:
        """Accept no more writes: what was written so far is the last the peer gets (a closing error, say)."""
        self._sealed = True

    def write(self, data: bytes) -> None:
        if self.overflowed or self._released or self._sealed:
            return
        if not self.paused:
            self._transport.write(data)
            return
        self._queue.append(data)
        self.pending += len(data)
        if self.pending > self.max_pending:
            self.overflowed = True
            self._queue.clear()
            self.pending = 0
            if self._metrics is not None:
                self._metrics.slow_consumer()
            self._on_overflow()

    def pauseProducing(self) -> None:
        if not self.paused and self._metrics is not None:
            self._metrics.backpressure_pauses.inc()
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        # writing may fill the transport again, which pauses us from inside write()
        while self._queue and not self.paused:
            data = self._queue.popleft()
            self.pending -= len(data)
            self._transport.write(data)
        if self.paused:
            return
        if release_if_closing(self._transport):
            self._released = True  # the queue is handed over; later writes would go unbounded
        elif self._on_drained is not None:
            # the peer reads again: a caller that stopped taking requests may go on
            self._on_drained()

    def stopProducing(self) -> None:
        self._queue.clear()
        self.pending = 0
