"""Reading from an HTTP connection, paused for several reasons at once."""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class ReadGate:
    """Stands in for the transport as the producer HTTPChannel pauses and resumes.

    twisted.web pauses and resumes reading for its own reasons and resumes it
    after every request; the channel also holds it while the client does not
    read its responses or sends too far ahead. Reading resumes only when no
    reason holds, and never after the client has half-closed.
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
        """The client sent its last byte: reading again would only report the end again."""
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
