"""The HTTP channel's idle timeout: one timer per connection, moved around each request instead of replaced."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall


class MovedIdleTimeout:
    """Mixin for an C{HTTPChannel} (before it in the bases): TimeoutMixin's C{setTimeout} and C{resetTimeout}
    keeping one DelayedCall per connection.

    The channel sets C{_request_starts} just before twisted.web's
    C{allContentReceived}, whose C{setTimeout(None)} then only pauses the timer.
    """

    # the channel's (TimeoutMixin, HTTPChannel)
    timeOut: Any
    callLater: Any
    timeoutConnection: Any
    _idle_call: IDelayedCall | None = None  # the idle timer
    _idle_paused = False  # a request is being answered: the idle timer does nothing if it fires
    _request_starts = False  # the next setTimeout(None) is twisted.web's at the start of a request

    def setTimeout(self, period: float | None) -> float | None:
        """TimeoutMixin's, moving one timer instead of replacing it around every request.

        twisted.web cancels the idle timer as each request starts and creates
        a new one once it is answered; here the start only pauses it (if it
        fires meanwhile it does nothing), and setting it again moves the same
        timer. Any other C{setTimeout(None)} (connection lost, handed over)
        cancels it.
        """
        previous: float | None = self.timeOut
        self.timeOut = period
        call = self._idle_call
        if period is None:
            if self._request_starts:
                self._request_starts = False
                self._idle_paused = True
                return previous
            self._idle_paused = False
            if call is not None and call.active():
                call.cancel()
            self._idle_call = None
            return previous
        self._idle_paused = False
        if call is not None and call.active():
            call.reset(period)
        else:
            self._idle_call = self.callLater(period, self._idle_fired)
        return previous

    def resetTimeout(self) -> None:
        call = self._idle_call
        if call is not None and self.timeOut is not None and not self._idle_paused:
            call.reset(self.timeOut)

    def _idle_fired(self) -> None:
        self._idle_call = None
        if not self._idle_paused:
            self.timeoutConnection()
