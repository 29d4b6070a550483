"""``[daemon] workers``: how many processes it means, and the settings it cannot run with."""

from __future__ import annotations

import os
from collections.abc import Collection

from myservices.config import Config, DaemonConfig
from myservices.db.config import parse_database_url

MAX_WORKERS = 256
# hub engines whose state (rooms, message ids, nicks) lives in one process
PROCESS_LOCAL_ENGINES = frozenset({"memory"})


def cpu_count() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def worker_count(daemon: DaemonConfig, cores: int | None = None) -> int:
    """The number of processes serving the listeners: C{workers}, or one per core for 0."""
    if daemon.workers:
        return daemon.workers
    return max(1, min(MAX_WORKERS, cpu_count() if cores is None else cores))


def check_workers(config: Config, hub_kinds: Collection[str]) -> list[str]:
    """The problems of running C{config} with its C{[daemon] workers} (none for workers = 1).

    C{hub_kinds} are the service kinds that serve the hub (the line chat, WebSocket, framed, PB).
    """
    daemon = config.daemon
    if daemon.workers == 1:
        return []
    problems = []
    engine = config.hub.engine
    front_ends = [name for name, cfg in config.enabled_services() if (cfg.kind or name) in hub_kinds]
    if engine in PROCESS_LOCAL_ENGINES and front_ends:
        problems.append(
            f"daemon.workers: {daemon.workers} needs a hub shared by every worker, but [hub] engine = "
            f'"{engine}" keeps rooms, message ids and nicks in each process: clients of '
            f"{', '.join(front_ends)} on different workers would not see each other and ids would repeat; "
            'set [hub] engine = "redis", or workers = 1, or disable those services'
        )
    url = parse_database_url(config.database.url, daemon.data_dir, config.database.password)
    if url.scheme == "sqlite" and url.path == ":memory:":
        problems.append(
            f"database.url: sqlite:///:memory: cannot serve {daemon.workers} workers: each would have a database "
            "of its own (counter numbers would repeat); use a file or MySQL, or workers = 1"
        )
    if daemon.worker_stop_timeout <= daemon.shutdown_timeout:
        problems.append(
            f"daemon.worker_stop_timeout: expected more than daemon.shutdown_timeout ({daemon.shutdown_timeout:g}), "
            f"got {daemon.worker_stop_timeout:g}: workers get shutdown_timeout to drain, then time to write "
            "what is queued and exit"
        )
    if daemon.worker_restart_delay > daemon.worker_restart_max_delay:
        problems.append("daemon.worker_restart_delay: expected at most daemon.worker_restart_max_delay")
    return problems
