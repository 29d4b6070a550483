"""The service tree: one root MultiService with the database first and one child per configured service."""

from __future__ import annotations

import os
import signal
from collections.abc import Collection, Mapping, Sequence
from types import FrameType
from typing import Any, cast

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IAddress
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from myservices.accounts import AccountStore
from myservices.config import Config
from myservices.counter import DurableCounter
from myservices.db import MIGRATIONS, Database, Migration
from myservices.health import Readiness
from myservices.hub import HistoryStore, Hub, HubService, MemoryEngine
from myservices.kv import KeyValueStore
from myservices.lag import ReactorLagMonitor
from myservices.listeners import ListenerService, StreamListenerService, format_address
from myservices.logs import LogOutput
from myservices.metrics import Metrics
from myservices.passwords import PasswordHasher
from myservices.registry import BuildContext, service_kinds
from myservices.reload import reload_config
from myservices.sdnotify import Notifier, Watchdog


class OrderedMultiService(MultiService):
    """A MultiService that stops its children in stages, last added first.

    Twisted's MultiService stops all children at once; here the children
    named in C{parallel_stop} (the listeners) stop together first, so their
    clients drain at the same time, within one shutdown timeout; then the
    others one at a time, so the database, added first, closes only after
    every service using it has stopped.
    """

    log = Logger()
    parallel_stop: Collection[str] = ()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_children())

    async def _stop_children(self) -> None:
        children = list(reversed(list(self)))
        first = [c for c in children if c.name in self.parallel_stop]
        await gatherResults([self._stop(c) for c in first])
        for child in children:
            if child not in first:
                await self._stop(child)

    def _stop(self, child: IService) -> Deferred[None]:
        d = maybeDeferred(child.stopService)
        d.addErrback(lambda f: self.log.failure("stopping {service} failed", f, service=child.name))
        return d


class ServiceTree(OrderedMultiService):
    """The daemon: the database service and the configured listeners, sharing one reactor.

    Once the reactor runs and every listener is bound, it tells the service
    manager READY=1 with a STATUS line of the bound addresses (see L{Notifier}).
    Run by twistd (L{handle_sighup} set), SIGHUP reloads the configuration
    file (see L{myservices.reload}).
    """

    def __init__(
        self, config: Config, database: Database, metrics: Metrics, reactor: Any, notifier: Notifier | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.database = database
        self.metrics = metrics
        self.listeners: dict[str, ListenerService] = {}
        self.parallel_stop = self.listeners  # the front ends drain together, then hub, lag probe, database
        self.hub: Hub | None = None
        self._reactor = reactor
        self.notifier = notifier or Notifier()
        self.watchdog = Watchdog(self.notifier, reactor)
        # what reloads compare with: the configuration as last applied
        self.applied_config = config
        self._config_path = os.path.abspath(config.source)
        d = config.daemon
        self.log_output = LogOutput(d.log_format, d.log_level) if LogOutput.wanted(d.log_format, d.log_level) else None
        self.handle_sighup = False
        self._previous_sighup: Any = None

    def setServiceParent(self, parent: Any) -> None:
        # twistd hands us its Application before it starts logging: an ILogObserver component
        # set here replaces its default observer ([daemon] log_format, log_level)
        if self.log_output is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_output.observer)
        super().setServiceParent(parent)

    def reload(self, environ: Mapping[str, str] | None = None) -> bool:
        """Read the configuration file again and apply what can change while running."""
        ok = reload_config(self, self._config_path, environ)
        self.notifier.notify(STATUS=("reloaded; " if ok else "reload failed (invalid file); ") + self.status())
        return ok

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        # a signal handler may run in the middle of reactor code: hand the work to the reactor
        self._reactor.callFromThread(self.reload)

    def startService(self) -> None:
        if self.handle_sighup:
            self._previous_sighup = signal.signal(signal.SIGHUP, self._on_sighup)
        super().startService()
        # after the reactor runs, so twistd's signal handlers are in place when systemd hears READY
        self._reactor.callWhenRunning(self._announce_ready)

    def _announce_ready(self) -> None:
        d = self.when_listening()
        d.addCallback(lambda _: self.notifier.notify(READY="1", STATUS=self.status()))
        d.addCallback(lambda _: self.watchdog.start())
        d.addErrback(lambda f: self.log.failure("not announcing readiness: a listener failed", f))

    def status(self) -> str:
        """One line naming each service and its bound address."""
        return "serving " + ", ".join(
            f"{name}={format_address(service.address)}" for name, service in self.listeners.items() if service.address
        )

    def stopService(self) -> Deferred[None]:
        self.notifier.notify(STOPPING="1", STATUS="stopping")
        if self.handle_sighup and self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        # pings go on while draining: a slow drain is not a hung daemon (TimeoutStopSec bounds it)
        d = super().stopService()
        d.addBoth(self._stop_watchdog)
        return d

    def _stop_watchdog(self, result: Any) -> Any:
        self.watchdog.stop()
        return result

    def when_listening(self) -> Deferred[list[Any]]:
        """Fires once every listener is bound."""
        return gatherResults([s.when_listening() for s in self.listeners.values()], consumeErrors=True)

    def address(self, name: str) -> IAddress:
        """The bound address of service C{name}."""
        address = self.listeners[name].address
        if address is None:
            raise RuntimeError(f"{name} is not listening")
        return address


def build_service_tree(
    config: Config,
    reactor: Any,
    migrations: Sequence[Migration] = MIGRATIONS,
    notifier: Notifier | None = None,
) -> ServiceTree:
    """Build (without starting) the whole daemon from a validated config."""
    metrics = Metrics()
    database = Database.from_config(
        config.database, config.daemon.data_dir, reactor, migrations=migrations, metrics=metrics
    )
    tree = ServiceTree(config, database, metrics, reactor, notifier)
    database.setServiceParent(tree)  # first in, last out
    if config.daemon.reactor_lag_interval:
        ReactorLagMonitor(reactor, config.daemon.reactor_lag_interval, metrics).setServiceParent(tree)
    h = config.hub
    history = HistoryStore(
        database, reactor, keep=h.history_size, flush_interval=h.history_flush_interval,
        batch_size=h.history_batch_size, max_backlog=h.max_history_backlog, metrics=metrics,
    )
    engine = MemoryEngine(h, reactor, history=history, metrics=metrics)
    hub = Hub(h, reactor, engine, metrics=metrics)
    HubService(hub, engine).setServiceParent(tree)  # stops after the front ends, before the database
    tree.hub = hub
    a = config.accounts
    hasher = PasswordHasher(
        reactor, 2**a.scrypt_cost, concurrency=a.hash_concurrency, max_waiting=a.max_hash_queue
    )
    hasher.setServiceParent(tree)  # its threads stop after the front ends
    ctx = BuildContext(
        reactor=reactor, config=config, database=database, metrics=metrics, hub=hub,
        counter=DurableCounter(database, "http_requests", reactor),
        accounts=AccountStore(database, hasher, a),
        kv=KeyValueStore(database, config.kv),
        # tree.listeners fills as services are built; the checks read it when they run
        readiness=Readiness(tree.listeners, database, reactor, lambda: bool(tree.running)),
        services=tree.listeners,
    )
    kinds = service_kinds()
    for name, cfg in config.enabled_services():
        service = cast(ListenerService, kinds[name].build(name, cfg, ctx))  # every kind listens
        if isinstance(service, StreamListenerService):
            service.factory.close_timeout = config.daemon.close_timeout
        service.setServiceParent(tree)
        tree.listeners[name] = service
    return tree
