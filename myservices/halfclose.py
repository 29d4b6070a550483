"""Clients that close their side first (shutdown(SHUT_WR), nc -q, socat) still get every reply."""

from __future__ import annotations

from twisted.internet.interfaces import IHalfCloseableProtocol
from zope.interface import implementer

from myservices.listeners import TrackedProtocol


@implementer(IHalfCloseableProtocol)
class HalfCloseableProtocol(TrackedProtocol):
    """A tracked protocol that answers what its client sent before closing its write side, then closes.

    Such a client has said all it will say. Twisted closes the whole
    connection at that end of input, dropping unsent output, unless the
    protocol provides C{IHalfCloseableProtocol}. This one lets the protocol
    handle what it received, waits until L{answered}, then closes gracefully:
    the transport flushes the replies first, and a client that does not read
    them is aborted after the factory's C{close_timeout} like any other.

    Subclasses override L{answered} (and L{input_ended}, C{stop_timers},
    L{close_after_replies} where needed) and call L{close_if_answered} when
    work in flight finishes.
    """

    read_closed = False  # the client sends nothing more

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

    def close_if_answered(self) -> None:
        """After the client's half-close, once nothing is left to answer: close after the replies."""
        if not self.read_closed or self.closing_gracefully or not self.transport.connected or not self.answered():
            return
        self.close_after_replies()

    def close_after_replies(self) -> None:
        """Close once the replies are written (overrides may say goodbye first)."""
        self.close_gracefully()
