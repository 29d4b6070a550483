"""The connection helpers the request/reply front ends share: ReadGate and IdleTimer, on a Clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from myservices.flow import IdleTimer, ReadGate


class ReadGateTests(TestCase):
    def test_reading_resumes_only_when_every_reason_is_released(self) -> None:
        transport = StringTransport()
        gate = ReadGate(transport)
        gate.hold("in flight")
        gate.hold("output")
        self.assertEqual(transport.producerState, "paused")
        gate.release("in flight")
        self.assertEqual(transport.producerState, "paused")  # one reason still holds
        gate.release("unknown")  # a reason never given changes nothing
        gate.release("output")
        self.assertEqual(transport.producerState, "producing")

    def test_never_resumes_after_close(self) -> None:
        transport = StringTransport()
        gate = ReadGate(transport)
        gate.hold("busy")
        gate.close()
        gate.release("busy")
        self.assertEqual(transport.producerState, "paused")


class IdleTimerTests(TestCase):
    def test_fires_after_the_timeout_counted_from_the_last_touch(self) -> None:
        clock, fired = Clock(), []
        timer = IdleTimer(clock, lambda: 10.0, lambda: fired.append(clock.seconds()))
        timer.start()
        clock.advance(8)
        timer.touch()
        clock.advance(8)  # the first check finds 2 s of idleness left... and sleeps for them
        self.assertEqual(fired, [])
        clock.advance(2)
        self.assertEqual(fired, [18.0])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_zero_means_never_and_stop_cancels(self) -> None:
        clock, fired = Clock(), []
        timeout = [0.0]
        timer = IdleTimer(clock, lambda: timeout[0], lambda: fired.append(True))
        timer.start()
        self.assertEqual(clock.getDelayedCalls(), [])
        timeout[0] = 5.0
        timer.start()
        timer.stop()
        clock.advance(60)
        self.assertEqual((fired, clock.getDelayedCalls()), ([], []))
