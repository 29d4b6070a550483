"""One worker slot of the supervisor: the process in it, what it reported, when to start it again."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from myservices.workers.link import LinkProtocol


def worker_command(config_path: str) -> list[str]:
    """How a worker is started: this Python, twistd with the same config file (see myservices/workers/__main__.py)."""
    return [sys.executable, "-m", "myservices.workers", "--config", os.path.abspath(config_path)]


def describe_exit(reason: Failure) -> str:
    """How a process ended, for the log: its exit status or the signal that killed it."""
    value = reason.value
    if isinstance(value, ProcessTerminated) and value.signal is not None:
        try:
            name = signal.Signals(value.signal).name
        except ValueError:
            name = "unknown"
        return f"was killed by signal {value.signal} ({name})"
    if isinstance(value, (ProcessDone, ProcessTerminated)):
        return f"exited with status {value.exitCode}"
    return f"ended: {reason.getErrorMessage()}"


class WorkerProcess(ProcessProtocol):
    """One worker slot: the process running in it (if any), its link and what it reported."""

    def __init__(self, index: int, ended: Callable[[WorkerProcess, Failure], None]) -> None:
        self.index = index
        self._ended = ended
        self.process: IProcessTransport | None = None
        self.pid: int | None = None
        self.link: LinkProtocol | None = None
        self.ready = False
        self.last_ping: float | None = None
        self.started_at = 0.0
        self.failures = 0  # quick deaths in a row: the restart delay doubles with each
        self.restart: IDelayedCall | None = None

    def processEnded(self, reason: Failure) -> None:
        self._ended(self, reason)

    def restart_delay(self, now: float, initial: float, longest: float) -> float:
        """The delay before the next start: C{initial}, doubling while the worker dies within C{longest} of its start."""
        if now - self.started_at >= longest:
            self.failures = 0
        delay = min(longest, initial * 2 ** min(self.failures, 30))
        self.failures += 1
        return delay
