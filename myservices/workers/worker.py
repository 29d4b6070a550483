"""What a worker adds to its service tree: the link to its supervisor and the shared metrics.

The supervisor starts each worker as ``twistd myservices --config FILE`` with
L{WORKER_ENV} set to a L{WorkerSpec}: which worker it is, the descriptor of
its link (L{LINK_FD}), the listening sockets it inherits, the metrics
directory and its watchdog interval. L{myservices.tree.build_service_tree}
then builds the same tree as for one process, with listeners that adopt the
inherited sockets and a L{LinkNotifier} in place of systemd's notify socket.
"""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from twisted.application.service import Service
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from myservices.metrics import Metrics
from myservices.sdnotify import Notifier
from myservices.workers.link import LinkProtocol, Message, adopt_link
from myservices.workers.sockets import Inherited

WORKER_ENV = "MYSERVICES_WORKER"  # set by the supervisor for its workers only
LINK_FD = 3  # a worker's end of its link; its listening sockets follow


@dataclass(frozen=True)
class WorkerSpec:
    """What the supervisor tells one worker."""

    index: int
    count: int
    metrics_dir: str | None  # None: metrics of this process only (tests)
    link_fd: int = LINK_FD
    sockets: Mapping[str, Inherited] = field(default_factory=dict)
    watchdog_interval: float | None = None

    def to_environ(self) -> str:
        return json.dumps({
            "index": self.index, "count": self.count, "metrics_dir": self.metrics_dir, "link_fd": self.link_fd,
            "sockets": {name: s.to_json() for name, s in self.sockets.items()},
            "watchdog_interval": self.watchdog_interval,
        })

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WorkerSpec | None:
        """The spec in C{environ}, or None when this process is not a worker."""
        text = environ.get(WORKER_ENV)
        if not text:
            return None
        try:
            value = json.loads(text)
            return cls(
                index=int(value["index"]), count=int(value["count"]), metrics_dir=value["metrics_dir"] and str(value["metrics_dir"]),
                link_fd=int(value["link_fd"]),
                sockets={str(name): Inherited.from_json(s) for name, s in value["sockets"].items()},
                watchdog_interval=None if value["watchdog_interval"] is None else float(value["watchdog_interval"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{WORKER_ENV} is set, but not by a myservices supervisor: {e}") from None


class LinkNotifier(Notifier):
    """A worker's L{Notifier}: READY, STATUS, WATCHDOG and STOPPING go to the supervisor, not to systemd."""

    def __init__(self, send: Callable[[Message], bool], watchdog_interval: float | None) -> None:
        self.address = "supervisor"
        self.watchdog_interval = watchdog_interval
        self._send = send

    def notify(self, **fields: str) -> bool:
        return self._send(dict(fields))


class WorkerLink(Service):
    """A worker's end of the link: reports to the supervisor, learns which workers are ready, stops when it is gone.

    Added to the tree first, it stops last: the link is open until the
    worker has drained. C{on_reload} is what a RELOAD from the supervisor
    calls (the tree's reload); C{on_orphaned} what happens when the
    supervisor goes away while the worker runs (by default: stop the reactor).
    With C{own_signals} (a real worker process): Ctrl-C in a terminal
    (SIGINT to the whole process group) is left to the supervisor, which
    stops the workers, and a second SIGTERM (from the supervisor and from
    systemd or a process-group kill) does not stop the reactor twice.
    """

    log = Logger()
    name = "worker-link"  # type: ignore[assignment]  # twisted's Service.name is unannotated (inferred as None)

    def __init__(
        self, spec: WorkerSpec, reactor: Any, *, on_orphaned: Callable[[], None] | None = None,
        own_signals: bool = False,
    ) -> None:
        self.spec = spec
        self._reactor = reactor
        self.notifier = LinkNotifier(self.send, spec.watchdog_interval)
        self.on_reload: Callable[[], object] | None = None
        self._on_orphaned = on_orphaned if on_orphaned is not None else self._stop_reactor
        self._own_signals = own_signals
        self._protocol = LinkProtocol(self._received, self._lost)
        self._opened = False
        self._closing = False
        self.workers = spec.count
        self.ready_workers: frozenset[int] = frozenset()

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._open()

    def startService(self) -> None:
        super().startService()
        self._open()
        if self._own_signals:
            self._reactor.callWhenRunning(self._install_signal_handlers)  # after the reactor's own

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        reactor_handler = signal.getsignal(signal.SIGTERM)

        def first_sigterm(signum: int, frame: FrameType | None) -> None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the drain has begun; twistd re-raises SIGTERM at the end
            if callable(reactor_handler):
                reactor_handler(signum, frame)

        signal.signal(signal.SIGTERM, first_sigterm)

    def _open(self) -> None:
        if not self._opened:
            self._opened = True
            adopt_link(self._reactor, socket.socket(fileno=self.spec.link_fd), self._protocol)

    def stopService(self) -> None:
        super().stopService()
        self._closing = True
        self._protocol.close()

    def send(self, message: Message) -> bool:
        """Send C{message} to the supervisor; False when the link is gone."""
        return self._protocol.send(message)

    def inherited(self, name: str, endpoint: str) -> Inherited | None:
        """The socket the supervisor passed for service C{name}, configured now with C{endpoint}."""
        inherited = self.spec.sockets.get(name)
        if inherited is not None and inherited.endpoint != endpoint:
            # the file changed since the supervisor started: sockets are the supervisor's, until a restart
            self.log.warn(
                "{service}: endpoint changed to {endpoint}; serving {bound} until the daemon restarts",
                service=name, endpoint=endpoint, bound=inherited.endpoint,
            )
        return inherited

    def reloaded(self, ok: bool) -> None:
        """Tell the supervisor how a reload went."""
        self.send({"RELOADED": "1" if ok else "0"})

    def workers_check(self) -> str:
        """The readiness check of the whole daemon: every worker is ready."""
        missing = [str(i) for i in range(self.workers) if i not in self.ready_workers]
        if not missing:
            return "ok"
        return f"{self.workers - len(missing)} of {self.workers} workers ready (not ready: {', '.join(missing)})"

    def _received(self, message: Message) -> None:
        if "WORKERS" in message:
            self.workers = int(message["WORKERS"])
            self.ready_workers = frozenset(int(i) for i in message.get("READY_WORKERS", ()))
        if message.get("RELOAD") and self.on_reload is not None:
            self.on_reload()

    def _lost(self) -> None:
        self.ready_workers = frozenset()
        if not self._closing:
            self._closing = True
            self.log.warn("worker {index}: the supervisor is gone; stopping", index=self.spec.index)
            self._on_orphaned()

    def _stop_reactor(self) -> None:
        try:
            self._reactor.stop()
        except ReactorNotRunning:  # stopping already
            pass


class MetricsFlush(Service):
    """Writes a worker's hot-path counts and function gauges into the shared metrics every C{interval} seconds.

    Counts kept in plain integers reach the metrics when they are read
    (L{Metrics.before_collect}); with several workers, a scrape reads every
    worker's files but runs only the answering worker's hooks, so each
    worker runs its own here, and once more when it stops.
    """

    log = Logger()
    name = "metrics-flush"  # type: ignore[assignment]  # twisted's Service.name is unannotated (inferred as None)

    def __init__(self, metrics: Metrics, interval: float, clock: IReactorTime) -> None:
        self.metrics = metrics
        self.interval = interval
        self._loop = LoopingCall(self._flush)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        self._flush()

    def _flush(self) -> None:
        # a LoopingCall whose function raises stops for good
        try:
            self.metrics.flush()
        except Exception:
            self.log.failure("writing the metrics for the other workers failed; trying again at the next interval")
