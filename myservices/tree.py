"""The service tree: one root MultiService holding the daemon's services, which it starts and stops in order.

L{build_service_tree} is the wiring: it builds the shared objects, one
listener per enabled ``[services.NAME]`` section (by the builder of its
kind, from L{myservices.registry}), and the services that talk to the
outside about the daemon itself: L{NotifyService} and L{Watchdog} (systemd)
and L{ReloadService} (SIGHUP).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, cast

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IAddress
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from myservices.accounts import AccountStore
from myservices.handlers.commands import SharedServices
from myservices.logins import Logins
from myservices.coalesce import WriteCoalescer, coalescing_supported
from myservices.config import Config
from myservices.context import BuildContext
from myservices.counter import CounterService, DurableCounter
from myservices.db import MIGRATIONS, Database, Migration
from myservices.health import Readiness
from myservices.hub import HistoryStore, Hub, HubService, MemoryEngine
from myservices.hub.lease import HubLease
from myservices.hub.moderation import Moderation
from myservices.hub.policy import RoomPolicies
from myservices.hub.redis import RedisEngine
from myservices.kv import KeyValueStore
from myservices.lag import ReactorLagMonitor
from myservices.listeners import ListenerService, StreamListenerService
from myservices.logs import LogOutput
from myservices.metrics import Metrics
from myservices.operator.recent_errors import RecentErrors
from myservices.operator.sampler import Sampler
from myservices.passwords import PasswordHasher
from myservices.ports import ListenOptions
from myservices.registry import ServiceKind, load_config, service_kinds
from myservices.reload import Load, ReloadService, daemon_settings, hub_settings, rooms_settings
from myservices.sdnotify import Notifier, NotifyService, Watchdog
from myservices.tokens import TokenService
from myservices.workers.worker import MetricsFlush, WorkerLink


class OrderedMultiService(MultiService):
    """A MultiService that stops its children one at a time, last added first.

    Twisted's MultiService stops all children at once. Here each child waits
    for the one added after it, so the database, added early, closes only
    after every service using it has stopped; the children named in
    C{parallel_stop} (the listeners) stop together, when the last added of
    them comes up, so their clients drain at the same time, within one
    shutdown timeout.
    """

    log = Logger()
    parallel_stop: Collection[str] = ()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_children())

    async def _stop_children(self) -> None:
        children = list(reversed(list(self)))
        together = [c for c in children if c.name in self.parallel_stop]
        for child in children:
            if child not in together:
                await self._stop(child)
            elif child is together[0]:
                await gatherResults([self._stop(c) for c in together])

    def _stop(self, child: IService) -> Deferred[None]:
        d = maybeDeferred(child.stopService)
        d.addErrback(lambda f: self.log.failure("stopping {service} failed", f, service=child.name))
        return d


class ServiceTree(OrderedMultiService):
    """The daemon: the database, the shared services and the configured listeners, sharing one reactor.

    Children, in the order they start (and the reverse of the order they
    stop): the watchdog, the database, the reactor lag probe, the hub's
    lease (memory engine), the hub, the password hasher, the counter, the operator statistics, the listeners
    (stopped together), then notify and reload. C{log_output}, when the
    configuration asks for one, is handed to twistd as the log observer
    (L{setServiceParent}).
    """

    def __init__(
        self, config: Config, database: Database, metrics: Metrics, log_output: LogOutput | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.database = database
        self.metrics = metrics
        self.listeners: dict[str, ListenerService] = {}
        self.parallel_stop = self.listeners  # the front ends drain together
        self.hub: Hub | None = None
        self.log_output = log_output

    def setServiceParent(self, parent: Any) -> None:
        # twistd hands us its Application before it starts logging: an ILogObserver component
        # set here replaces its default observer ([daemon] log_format, log_level)
        if self.log_output is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_output.observer)
        super().setServiceParent(parent)

    def when_listening(self) -> Deferred[list[Any]]:
        """Fires once every listener is bound."""
        return gatherResults([s.when_listening() for s in self.listeners.values()], consumeErrors=True)

    def address(self, name: str) -> IAddress:
        """The bound address of service C{name}."""
        address = self.listeners[name].address
        if address is None:
            raise RuntimeError(f"{name} is not listening")
        return address


def _always_ok() -> str:
    return "ok"


def _coalescer(reactor: Any) -> WriteCoalescer | None:
    """The reactor's write coalescer, or None (Twisted's stock transports) if this Twisted lacks what it needs."""
    missing = coalescing_supported(reactor)
    if missing is None:
        return WriteCoalescer(reactor)
    ServiceTree.log.warn(
        "write_coalescing: this Twisted lacks {missing}; using its stock transports", missing=missing
    )
    return None


def build_service_tree(
    config: Config,
    reactor: Any,
    migrations: Sequence[Migration] = MIGRATIONS,
    notifier: Notifier | None = None,
    *,
    kinds: Mapping[str, ServiceKind] | None = None,
    load: Load = load_config,
    handle_sighup: bool = False,
    worker: WorkerLink | None = None,
) -> ServiceTree:
    """Build (without starting) the whole daemon from a validated config.

    C{kinds} builds each service (default: every kind of L{myservices.registry});
    C{load} rereads the config file on reload; with C{handle_sighup}, SIGHUP reloads.
    With C{worker}, the tree is one of several worker processes: its
    listeners adopt the sockets the supervisor passed, it reports to the
    supervisor instead of systemd, and its metrics are shared.
    """
    kinds = service_kinds() if kinds is None else kinds
    if worker is not None:
        notifier = worker.notifier
    notifier = Notifier() if notifier is None else notifier
    metrics = Metrics(worker.spec.metrics_dir if worker is not None else None)
    d = config.daemon
    log_output = LogOutput(d.log_format, d.log_level) if LogOutput.wanted(d.log_format, d.log_level) else None
    database = Database.from_config(
        config.database, config.daemon.data_dir, reactor, migrations=migrations, metrics=metrics
    )
    tree = ServiceTree(config, database, metrics, log_output)
    if worker is not None:
        worker.setServiceParent(tree)  # first in, last out: the supervisor hears from the worker until it has drained
        MetricsFlush(metrics, d.worker_metrics_interval, reactor).setServiceParent(tree)  # flushes after the drain
    watchdog = Watchdog(notifier, reactor)
    watchdog.setServiceParent(tree)  # first in, last out: pings until everything else has stopped
    database.setServiceParent(tree)  # then the database: it closes after every service that uses it
    lag: ReactorLagMonitor | None = None
    if config.daemon.reactor_lag_interval:
        lag = ReactorLagMonitor(reactor, config.daemon.reactor_lag_interval, metrics)
        lag.setServiceParent(tree)
    h = config.hub
    history = HistoryStore(
        database, reactor, keep=h.history_size, flush_interval=h.history_flush_interval,
        batch_size=h.history_batch_size, max_backlog=h.max_history_backlog, metrics=metrics,
    )
    engine: MemoryEngine | RedisEngine
    hub_health: Callable[[], str]
    if h.engine == "redis":
        # an IService child of the hub like the memory engine: started before the listeners serve
        engine = RedisEngine(h, reactor, history=history, metrics=metrics)
        hub_health = engine.health
        node_id = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"  # unique across processes
    elif any(kinds[cfg.kind or name].uses_hub for name, cfg in config.enabled_services()):
        # the memory engine mints ids in this process: one daemon per database, which the lease enforces.
        # It stops after the hub (its last commits) and before the database.
        lease = HubLease(database, reactor, h.lease_timeout)
        lease.setServiceParent(tree)
        engine = MemoryEngine(h, reactor, history=history, metrics=metrics, lease=lease)
        hub_health = lease.status
        node_id = "local"
    else:
        # no front end of the hub: nothing mints ids, so no lease (workers of an echo/HTTP daemon share one)
        engine = MemoryEngine(h, reactor, history=history, metrics=metrics)
        hub_health = _always_ok
        node_id = "local"
    a = config.accounts
    hasher = PasswordHasher(
        reactor, 2**a.scrypt_cost, concurrency=a.hash_concurrency, max_waiting=a.max_hash_queue
    )
    accounts = AccountStore(database, hasher, a, clock=reactor)
    policies = RoomPolicies(config.rooms, database, reactor)
    hub = Hub(
        h, reactor, engine, metrics=metrics, node_id=node_id, is_account=accounts.exists, policy=policies
    )
    hub.moderation = Moderation(hub, policies)
    HubService(hub, engine).setServiceParent(tree)  # stops after the front ends, before the database
    tree.hub = hub
    hasher.setServiceParent(tree)  # its threads stop after the front ends
    counter = DurableCounter(database, "http_requests", reactor, block=config.database.counter_block)
    CounterService(counter).setServiceParent(tree)  # gives back the unused numbers after the front ends stop
    kv = KeyValueStore(database, config.kv)
    tokens = TokenService.from_config(config.tokens, accounts, reactor)
    logins = Logins(hub, accounts, tokens)
    # tree.listeners fills as services are built; the checks read it when they run
    readiness = Readiness(
        tree.listeners, database, reactor, lambda: bool(tree.running),
        {"hub": hub_health, **({"workers": worker.workers_check} if worker is not None else {})},
    )
    # the operator page's statistics; its log observer (the recent errors) is registered while it runs
    operator = Sampler(
        config.admin, hub, metrics, reactor, RecentErrors(config.admin.max_errors, config.admin.max_error_length),
        readiness, (lambda: lag.last) if lag is not None else None,
    )
    operator.setServiceParent(tree)  # stops after the listeners (their watchers are gone by then)
    ctx = BuildContext(
        reactor=reactor, config=config, database=database, metrics=metrics, hub=hub,
        counter=counter, accounts=accounts, kv=kv, logins=logins, tokens=tokens,
        shared=SharedServices(
            hub=hub, accounts=accounts, kv=kv, counter=counter, clock=reactor, tokens=tokens, logins=logins,
            operator=operator,
        ),
        readiness=readiness,
        services=tree.listeners,
        worker=worker.spec.index if worker is not None else None,
    )
    # one coalescer for every stream listener: one flush per reactor turn
    listen_options = ListenOptions(_coalescer(reactor) if d.write_coalescing else None, d.listen_backlog)
    for name, cfg in config.enabled_services():
        service = cast(ListenerService, kinds[cfg.kind or name].build(name, cfg, ctx))  # every kind listens
        if isinstance(service, StreamListenerService):
            service.factory.close_timeout = d.close_timeout
            service.listen_options = listen_options
        if worker is not None:
            service.inherit(worker.inherited(name, getattr(cfg, "endpoint", "")))
        service.setServiceParent(tree)
        tree.listeners[name] = service
    # added after the listeners, these two stop before them: STOPPING=1 and the old SIGHUP handler
    # come before the drain
    notify = NotifyService(notifier, reactor, tree.listeners, watchdog)
    notify.setServiceParent(tree)

    def reloaded(ok: bool) -> None:
        notify.reloaded(ok)
        if worker is not None:
            worker.reloaded(ok)

    reload = ReloadService(
        os.path.abspath(config.source), load, config, tree.listeners,
        {"daemon": daemon_settings(tree.listeners, log_output), "hub": hub_settings(hub),
         "rooms": rooms_settings(policies)},
        reactor, handle_sighup=handle_sighup, reloaded=reloaded,
    )
    reload.setServiceParent(tree)
    if worker is not None:
        worker.on_reload = reload.reload  # the supervisor passes SIGHUP on over the link
    return tree
