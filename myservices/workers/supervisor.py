"""The supervisor: what ``twistd myservices`` runs with ``[daemon] workers`` above 1.

It serves no client itself. It binds every listener once (L{SharedSockets}),
starts the workers (the same Python, the same config file, each told what it
inherits), and then:

- restarts a worker that dies, after a delay that doubles while it keeps
  dying (C{worker_restart_delay} up to C{worker_restart_max_delay}), logging
  its exit status or signal;
- tells systemd READY=1 once every worker is ready, keeps STATUS up to date,
  and sends WATCHDOG=1 only while every worker is alive and pinging it;
- on SIGHUP, has every worker reload its configuration;
- on stop (SIGTERM), sends STOPPING=1, has every worker drain and exit
  (SIGTERM), kills those still running after C{worker_stop_timeout}, and
  exits after the last one.

Each worker's metrics go to files in a private directory (prometheus_client's
multiprocess mode), which C{/metrics} on any worker sums.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Mapping, Sequence
from functools import partial
from types import FrameType
from typing import Any

from prometheus_client.multiprocess import mark_process_dead
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.threads import deferToThreadPool
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.python.failure import Failure

from myservices.config import Config
from myservices.endpoints import missing_inherited_socket, parse_udp_endpoint
from myservices.listeners import ListenError
from myservices.logs import LogOutput
from myservices.sdnotify import Notifier, Watchdog
from myservices.settings import UDP_ENDPOINT
from myservices.tokens import ENV_TOKEN_SECRET, generate_secret
from myservices.workers.link import LinkProtocol, Message, adopt_link
from myservices.workers.process import WorkerProcess, describe_exit, worker_command
from myservices.workers.sockets import SharedSockets
from myservices.workers.worker import LINK_FD, WORKER_ENV, WorkerSpec

# what systemd sets for the process it started: the supervisor's, never a worker's
_SYSTEMD_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


class Supervisor(Service):
    """Binds the listeners, runs C{count} workers on them, and speaks for them to systemd (see the module)."""

    log = Logger()
    name = "supervisor"  # type: ignore[assignment]  # twisted's Service.name is unannotated (inferred as None)

    def __init__(
        self,
        config: Config,
        reactor: Any,
        count: int,
        *,
        notifier: Notifier | None = None,
        command: Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
        handle_sighup: bool = False,
    ) -> None:
        self.config = config
        self._reactor = reactor
        self.count = count
        self.notifier = Notifier() if notifier is None else notifier
        self.command = list(command) if command is not None else worker_command(config.source)
        self.environ = dict(os.environ if environ is None else environ)
        if not config.tokens.secret:
            # the workers must sign and accept the same tokens: one random secret for all, until the supervisor stops
            self.environ[ENV_TOKEN_SECRET] = generate_secret()
            self.log.warn(
                "tokens: no secret configured ([tokens] secret or {variable}): the workers share a random one; "
                "tokens do not survive a restart", variable=ENV_TOKEN_SECRET,
            )
        self.handle_sighup = handle_sighup
        d = config.daemon
        self.log_output = LogOutput(d.log_format, d.log_level) if LogOutput.wanted(d.log_format, d.log_level) else None
        self.sockets = SharedSockets(count)
        self.workers = [WorkerProcess(i, self.worker_ended) for i in range(count)]
        self.watchdog = Watchdog(self.notifier, reactor, self._watchdog_problem)
        self.state_dir: str | None = None
        self._bound = False
        self._announced = False
        self._stopping = False
        self._ended: list[Deferred[None]] = []
        self._reloading: set[int] = set()
        self._reload_failed: list[int] = []
        self._previous_sighup: Any = None
        self._devnull = -1

    def setServiceParent(self, parent: Any) -> None:
        # as the service tree does: twistd's Application takes our log observer ([daemon] log_format, log_level)
        if self.log_output is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_output.observer)
        super().setServiceParent(parent)

    # --- start ---------------------------------------------------------------

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._bind()  # before twistd drops privileges: ports below 1024

    def _bind(self) -> None:
        if self._bound:
            return
        self._bound = True
        for name, cfg in self.config.enabled_services():
            description = cfg.endpoint  # type: ignore[attr-defined]  # every kind listens on an endpoint
            try:
                if _endpoint_kind(cfg) == UDP_ENDPOINT:
                    self.sockets.bind_datagram(name, parse_udp_endpoint(description), description)
                else:
                    self.sockets.bind_stream(name, description, self.config.daemon.listen_backlog)
            except (IndexError, KeyError):  # systemd: endpoints look sockets up at this point
                self.sockets.close()
                raise self._failed(name, description, missing_inherited_socket(description)) from None
            except Exception as e:
                self.sockets.close()
                raise self._failed(name, description, str(e)) from e
            self.log.info(
                "{service} listening on {endpoint} (bound to {address}, for {count} workers)",
                service=name, endpoint=description, address=self.sockets.address(name), count=self.count,
            )

    def _failed(self, name: str, description: str, reason: str) -> ListenError:
        self.log.critical(
            "services.{service}: cannot listen on {endpoint}: {reason}", service=name, endpoint=description, reason=reason
        )
        return ListenError(f"services.{name}: cannot listen on {description}: {reason}")

    def startService(self) -> None:
        super().startService()
        self._bind()  # started without twistd's privileged phase (tests)
        self.state_dir = tempfile.mkdtemp(prefix="myservices-workers-")  # private (0700), removed on stop
        os.mkdir(self.metrics_dir)
        self._devnull = os.open(os.devnull, os.O_RDONLY)
        if self.handle_sighup:
            self._previous_sighup = signal.signal(signal.SIGHUP, self._on_sighup)
        self._reactor.callWhenRunning(self._start_all)

    @property
    def metrics_dir(self) -> str:
        assert self.state_dir is not None
        return os.path.join(self.state_dir, "metrics")

    def _start_all(self) -> None:
        if self.running:
            for worker in self.workers:
                self._start(worker)

    def _start(self, worker: WorkerProcess) -> None:
        worker.restart = None
        if not self.running or self._stopping:
            return
        interval = self.notifier.watchdog_interval
        child_fds, inherited = self.sockets.for_worker(worker.index, LINK_FD + 1)
        spec = WorkerSpec(
            index=worker.index, count=self.count, metrics_dir=self.metrics_dir, sockets=inherited,
            watchdog_interval=interval / 2 if interval else None,  # twice per ping of ours
        )
        env = {k: v for k, v in self.environ.items() if k not in _SYSTEMD_ONLY}
        env[WORKER_ENV] = spec.to_environ()
        env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = {0: self._devnull, 1: 1, 2: 2, LINK_FD: theirs.fileno(), **child_fds}
        try:
            worker.process = self._reactor.spawnProcess(worker, self.command[0], self.command, env=env, childFDs=fds)
        except Exception:
            ours.close()
            self.log.failure("worker {index}: cannot start it", index=worker.index)
            self._schedule_restart(worker)
            return
        finally:
            theirs.close()
        worker.pid = worker.process.pid
        worker.started_at = self._reactor.seconds()
        worker.link = LinkProtocol(partial(self._received, worker), lambda: None)
        adopt_link(self._reactor, ours, worker.link)
        self.log.info("worker {index} started (pid {pid})", index=worker.index, pid=worker.pid)

    # --- what workers report -------------------------------------------------

    def _received(self, worker: WorkerProcess, message: Message) -> None:
        now = self._reactor.seconds()
        if message.get("WATCHDOG") == "1":
            worker.last_ping = now
        if message.get("READY") == "1":
            worker.ready = True
            worker.last_ping = now
            self.log.info("worker {index} (pid {pid}) is ready", index=worker.index, pid=worker.pid)
            self._changed()
        if message.get("STOPPING") == "1" and worker.ready:
            worker.ready = False
            if not self._stopping:
                self.log.warn("worker {index} (pid {pid}) is stopping on its own", index=worker.index, pid=worker.pid)
            self._changed()
        if "RELOADED" in message:
            self._reloaded(worker, message["RELOADED"] == "1")

    def _changed(self) -> None:
        """Readiness changed: tell the workers (their /readyz) and systemd."""
        ready = [w.index for w in self.workers if w.ready]
        for worker in self.workers:
            if worker.link is not None:
                worker.link.send({"WORKERS": self.count, "READY_WORKERS": ready})
        if self._stopping:
            return
        if not self._announced and len(ready) == self.count:
            self._announced = True
            self.notifier.notify(READY="1", STATUS=self.status())
            self.log.info("all {count} workers are ready", count=self.count)
            self.watchdog.start()
        elif self._announced:
            self.notifier.notify(STATUS=self.status())

    def status(self) -> str:
        """The STATUS line: where the daemon listens, and how many workers are ready."""
        listening = ", ".join(f"{name}={self.sockets.address(name)}" for name in self.sockets.names)
        ready = sum(1 for w in self.workers if w.ready)
        text = f"serving {listening}; {ready} of {self.count} workers ready"
        waiting = [str(w.index) for w in self.workers if not w.ready]
        return text + (f" (not ready: {', '.join(waiting)})" if waiting else "")

    def _watchdog_problem(self) -> str | None:
        if self._stopping:
            return None  # a slow drain is not a hung daemon; TimeoutStopSec bounds it
        interval = self.notifier.watchdog_interval or 0.0
        now = self._reactor.seconds()
        for worker in self.workers:
            if worker.process is None or not worker.ready:
                return f"worker {worker.index} is not running or not ready"
            if worker.last_ping is None or now - worker.last_ping > interval:
                return f"worker {worker.index} (pid {worker.pid}) has not pinged for {interval:g}s"
        return None

    # --- workers that end ----------------------------------------------------

    def worker_ended(self, worker: WorkerProcess, reason: Failure) -> None:
        pid, how = worker.pid, describe_exit(reason)
        if worker.link is not None:
            worker.link.close()
        worker.process = worker.link = worker.pid = worker.last_ping = None
        worker.ready = False
        if pid is not None and self.state_dir is not None and not self._stopping:  # on stop, all of it goes
            # its live gauges leave the sums; its counters stay in them
            d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), mark_process_dead, pid, self.metrics_dir)
            d.addErrback(lambda f: self.log.failure("forgetting the gauges of pid {pid} failed", f, pid=pid))
        if worker.index in self._reloading:
            self._reloaded(worker, False)
        if self._stopping:
            self.log.info("worker {index} (pid {pid}) stopped: it {how}", index=worker.index, pid=pid, how=how)
            if all(w.process is None for w in self.workers):
                waiters, self._ended = self._ended, []
                for waiter in waiters:
                    waiter.callback(None)
            return
        delay = self._schedule_restart(worker)
        self.log.error(
            "worker {index} (pid {pid}) {how}; starting it again in {delay:g}s",
            index=worker.index, pid=pid, how=how, delay=delay,
        )
        self._changed()

    def _schedule_restart(self, worker: WorkerProcess) -> float:
        d = self.config.daemon
        delay = worker.restart_delay(self._reactor.seconds(), d.worker_restart_delay, d.worker_restart_max_delay)
        worker.restart = self._reactor.callLater(delay, self._start, worker)
        return delay

    # --- reload --------------------------------------------------------------

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        self._reactor.callFromThread(self.reload)  # a signal handler may interrupt reactor code

    def reload(self) -> None:
        """Have every running worker reread the configuration file and apply what it can."""
        running = [w for w in self.workers if w.link is not None]
        self._reloading = {w.index for w in running}
        self._reload_failed = []
        self.log.info("reload: asking {count} worker(s) to reread the configuration", count=len(running))
        for worker in running:
            assert worker.link is not None
            worker.link.send({"RELOAD": 1})

    def _reloaded(self, worker: WorkerProcess, ok: bool) -> None:
        if worker.index not in self._reloading:
            return
        self._reloading.discard(worker.index)
        if not ok:
            self._reload_failed.append(worker.index)
        if self._reloading:
            return
        failed = self._reload_failed
        if failed:
            self.log.error("reload: failed in worker(s) {failed}", failed=", ".join(map(str, sorted(failed))))
            self.notifier.notify(STATUS="reload failed (invalid file); " + self.status())
        else:
            self.log.info("reload: every worker reloaded")
            self.notifier.notify(STATUS="reloaded; " + self.status())

    # --- stop ----------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        self.notifier.notify(STOPPING="1", STATUS="stopping")
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        for worker in self.workers:
            if worker.restart is not None and worker.restart.active():
                worker.restart.cancel()
            worker.restart = None
        self.sockets.close()  # ours; each worker closes its own as it stops listening
        running = [w for w in self.workers if w.process is not None]
        if running:
            self.log.info("stopping {count} worker(s)", count=len(running))
            for worker in running:
                self._signal(worker, "TERM")
            if not await self._all_ended(self.config.daemon.worker_stop_timeout):
                for worker in self.workers:
                    if worker.process is not None:
                        self.log.warn(
                            "worker {index} (pid {pid}) still running after worker_stop_timeout={timeout}s; killing it",
                            index=worker.index, pid=worker.pid, timeout=self.config.daemon.worker_stop_timeout,
                        )
                        self._signal(worker, "KILL")
                await self._all_ended(None)
        self.watchdog.stop()
        if self._devnull >= 0:
            os.close(self._devnull)
            self._devnull = -1
        if self.state_dir is not None:
            state_dir, self.state_dir = self.state_dir, None
            await deferToThreadPool(self._reactor, self._reactor.getThreadPool(), shutil.rmtree, state_dir, True)

    def _signal(self, worker: WorkerProcess, name: str) -> None:
        if worker.process is not None:
            try:
                worker.process.signalProcess(name)
            except OSError as e:  # ended meanwhile; processEnded follows
                self.log.debug("worker {index}: SIG{name}: {error}", index=worker.index, name=name, error=e)

    async def _all_ended(self, timeout: float | None) -> bool:
        """Wait until no worker runs (at most C{timeout} seconds); True if none does."""
        if all(w.process is None for w in self.workers):
            return True
        d: Deferred[None] = Deferred()
        self._ended.append(d)
        if timeout is not None:
            d.addTimeout(timeout, self._reactor)
        result = await DeferredList([d], consumeErrors=True)
        if d in self._ended:
            self._ended.remove(d)
        return bool(result[0][0])


def _endpoint_kind(cfg: Any) -> str | None:
    """The declared kind of a service section's endpoint key (stream or UDP)."""
    for f in dataclasses.fields(cfg):
        if f.name == "endpoint":
            kind: str | None = f.metadata.get("kind")
            return kind
    return None
