"""Replies in the order their requests arrived, whichever request finishes first."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred

T = TypeVar("T")


class _Pending(Generic[T]):
    __slots__ = ("done", "outcome")

    def __init__(self) -> None:
        self.done = False
        self.outcome: T | None = None


class OrderedReplies(Generic[T]):
    """Requests running at once on one connection, answered in arrival order.

    L{add} takes a request's outcome (a Deferred that never fails: the caller
    turned errors into outcomes); C{emit} is called with each outcome once it
    and every outcome before it are known. C{drained} is called each time a
    reply goes out, so the caller can read again or close.
    """

    def __init__(self, emit: Callable[[T], None], drained: Callable[[], None]) -> None:
        self._emit = emit
        self._drained = drained
        self._pending: deque[_Pending[T]] = deque()

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, outcome: Deferred[T]) -> None:
        """Answer C{outcome} after every request added before it."""
        pending: _Pending[T] = _Pending()
        self._pending.append(pending)
        outcome.addCallback(self._settled, pending)

    def _settled(self, outcome: T, pending: _Pending[T]) -> None:
        pending.done, pending.outcome = True, outcome
        if self._pending[0] is not pending:
            return  # an earlier request is still running: its reply goes first
        while self._pending and self._pending[0].done:
            self._emit(self._pending.popleft().outcome)  # type: ignore[arg-type]
        self._drained()
