"""systemd's notify protocol (sd_notify), standard library only.

A unit with ``Type=notify`` waits for READY=1; STATUS= lines show in
``systemctl status``; with ``WatchdogSec=`` systemd expects WATCHDOG=1 at least
that often and restarts a daemon that falls silent. Outside systemd (no
NOTIFY_SOCKET) every call is a no-op, so the daemon and tests can use the same
code path.

In the service tree, L{NotifyService} sends READY, STATUS and STOPPING, and
L{Watchdog} the WATCHDOG=1 pings: two children, because the tree stops its
children last added first, and STOPPING=1 belongs before the drain while the
pings go on until the very end.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from myservices.listeners import format_address


class Notifier:
    """Sends notify messages to C{$NOTIFY_SOCKET}; a leading ``@`` means an abstract socket."""

    log = Logger()

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval = _watchdog_interval(environ) if self.address else None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, **fields: str) -> bool:
        """Send C{KEY=value} lines, e.g. C{notify(READY="1", STATUS="serving")}; True if sent."""
        if not self.address:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)  # a datagram to a local socket; never wait on the reactor thread
                sock.sendto(message, self.address)
        except OSError as e:
            self.log.warn("cannot notify the service manager at {address}: {error}", address=self.address, error=e)
            return False
        return True


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Half of $WATCHDOG_USEC in seconds, when systemd set it for this process (sd_watchdog_enabled)."""
    pid = environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (a parent that exec'd us keeps it)
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None


class Watchdog(Service):
    """Sends WATCHDOG=1 every C{notifier.watchdog_interval} seconds from a reactor timer.

    The timer runs on the reactor thread, so a reactor that is stuck (a
    blocking call, a busy loop) stops the pings and systemd restarts the
    daemon. L{NotifyService} starts it once the daemon is ready; as a child
    of the tree added first, it stops last: pings go on while the daemon
    drains (a slow drain is not a hung daemon; TimeoutStopSec bounds it).
    With C{check}, a ping is sent only while it finds no problem (a
    supervisor's workers all alive and pinging); it names the problem
    otherwise, which is logged once.
    """

    name = "watchdog"  # type: ignore[assignment]  # twisted's Service.name is unannotated (inferred as None)

    def __init__(
        self, notifier: Notifier, clock: IReactorTime, check: Callable[[], str | None] | None = None
    ) -> None:
        self.notifier = notifier
        self._check = check
        self._withheld: str | None = None
        self._loop: LoopingCall | None = None
        if notifier.watchdog_interval:
            self._loop = LoopingCall(self._ping)
            self._loop.clock = clock

    def _ping(self) -> None:
        # a LoopingCall whose function raises stops for good, and systemd would kill a healthy daemon
        try:
            problem = self._check() if self._check is not None else None
            if problem is not None:
                if problem != self._withheld:  # once per distinct problem, not once per interval
                    Notifier.log.warn("watchdog: not sending WATCHDOG=1: {problem}", problem=problem)
                self._withheld = problem
                return
            self._withheld = None
            self.notifier.notify(WATCHDOG="1")
        except Exception:
            Notifier.log.failure("watchdog: sending WATCHDOG=1 failed; trying again at the next interval")

    def start(self) -> None:
        interval = self.notifier.watchdog_interval
        if self._loop is not None and interval is not None and not self._loop.running:
            self._loop.start(interval, now=True)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def stopService(self) -> None:
        super().stopService()
        self.stop()


class NotifyService(Service):
    """Tells the service manager READY=1 once every listener is bound (then starts the watchdog),
    with a STATUS line of the bound addresses, and STOPPING=1 when the daemon stops.

    Added to the tree after the listeners, it stops before them: STOPPING=1
    goes out before the drain begins.
    """

    log = Logger()
    name = "notify"  # type: ignore[assignment]  # twisted's Service.name is unannotated (inferred as None)

    def __init__(
        self, notifier: Notifier, reactor: Any, listeners: Mapping[str, Any], watchdog: Watchdog | None = None
    ) -> None:
        self.notifier = notifier
        self._reactor = reactor
        self.listeners = listeners  # name -> listener service (address, when_listening())
        self.watchdog = watchdog

    def startService(self) -> None:
        super().startService()
        # after the reactor runs, so twistd's signal handlers are in place when systemd hears READY
        self._reactor.callWhenRunning(self._announce_ready)

    def _announce_ready(self) -> None:
        d = gatherResults([s.when_listening() for s in self.listeners.values()], consumeErrors=True)
        d.addCallback(lambda _: self.notifier.notify(READY="1", STATUS=self.status()))
        d.addCallback(lambda _: self._start_watchdog())
        d.addErrback(lambda f: self.log.failure("not announcing readiness: a listener failed", f))

    def _start_watchdog(self) -> None:
        if self.watchdog is not None and self.running:
            self.watchdog.start()

    def status(self) -> str:
        """One line naming each service and its bound address."""
        return "serving " + ", ".join(
            f"{name}={format_address(service.address)}" for name, service in self.listeners.items() if service.address
        )

    def reloaded(self, ok: bool) -> None:
        """Say in the STATUS line how the last reload (SIGHUP) went."""
        self.notifier.notify(STATUS=("reloaded; " if ok else "reload failed (invalid file); ") + self.status())

    def stopService(self) -> None:
        self.notifier.notify(STOPPING="1", STATUS="stopping")
        super().stopService()
