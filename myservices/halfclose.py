"""Clients that close their side first (shutdown(SHUT_WR), nc -q, socat) still get every reply."""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from myservices.listeners import TrackedProtocol
from myservices.outbound import Outbound


@implementer(IHalfCloseableProtocol)
class HalfCloseableProtocol(TrackedProtocol):
    """A tracked protocol that answers what its client sent before closing its write side, then closes.

    Such a client has said all it will say. Twisted closes the whole
    connection at that end of input, dropping unsent output, unless the
    protocol provides C{IHalfCloseableProtocol}. This one lets the protocol
    handle what it received, waits until L{answered}, then closes: the
    transport flushes the replies first. A client that does not read them
    has the factory's C{idle_timeout} to do so; then the connection is
    aborted.

    Subclasses override L{answered} (and L{input_ended}, L{stop_timers},
    L{close_after_replies} where needed), call L{close_if_answered} when work
    in flight finishes, and set C{outbound} if they write through an
    L{Outbound}.
    """

    outbound: Outbound | None = None
    read_closed = False  # the client sends nothing more
    _replied = False  # everything is answered: closing
    _linger: IDelayedCall | None = None

    def readConnectionLost(self) -> None:
        if self.read_closed:
            return  # reading resumed after the end of input reports it again
        self.read_closed = True
        self.input_ended()
        self.close_if_answered()

    def writeConnectionLost(self) -> None:
        # follows our own loseWriteConnection, which is never called
        pass

    def input_ended(self) -> None:
        """The client sends nothing more: handle what is left of its input (a last line without newline)."""

    def answered(self) -> bool:
        """True when everything received so far has been answered."""
        return True

    def stop_timers(self) -> None:
        """Stop the protocol's idle (and similar) timers: from now on the close is timed here."""

    def close_if_answered(self) -> None:
        """After the client's half-close, once nothing is left to answer: close after the replies."""
        if not self.read_closed or self._replied or not self.transport.connected or not self.answered():
            return
        self._replied = True
        self.stop_timers()
        timeout = self.factory.idle_timeout
        if timeout:
            self._linger = self.factory.clock.callLater(timeout, self._replies_unread)
        self.close_after_replies()

    def close_after_replies(self) -> None:
        """Close once the replies are written (overrides may say goodbye first)."""
        if self.outbound is not None:
            self.outbound.lose_connection()
        else:
            self.transport.loseConnection()

    def _replies_unread(self) -> None:
        # a graceful close waits for a peer that reads; this one has not, for idle_timeout
        self._linger = None
        self.factory.metrics.closed("idle_timeout")
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        super().connectionLost(reason)
