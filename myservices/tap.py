"""``twistd myservices``: command-line options and the service maker."""

from __future__ import annotations

import os
import sys
from types import TracebackType

from twisted.application.service import IService
from twisted.python import usage

from myservices.config import Config, ConfigError
from myservices.config_env import ENV_ALIASES, ENV_PASSWORD, ENV_PASSWORD_FILE, ENV_PREFIX
from myservices.db.config import parse_database_url
from myservices.endpoints import host_problem
from myservices.registry import load_config
from myservices.startup import StartupError
from myservices.tree import build_service_tree
from myservices.workers.checks import worker_count
from myservices.workers.supervisor import Supervisor
from myservices.workers.worker import WorkerLink, WorkerSpec


class Options(usage.Options):
    synopsis = "--config FILE [--check]"
    longdesc = (
        "Runs the myservices daemon: every service enabled in the TOML config file, "
        "each on its configured endpoint. With --check, validates the config, prints "
        "what would listen where and exits (0: valid, 1: invalid) without binding anything. "
        f"Environment overrides: {', '.join(ENV_ALIASES)}, {ENV_PASSWORD}, {ENV_PASSWORD_FILE}, "
        f"and {ENV_PREFIX}SECTION__KEY for any key (e.g. {ENV_PREFIX}SERVICES__ECHO__ENDPOINT). "
        "See docs/configuration.md."
    )
    optParameters = [["config", "c", None, "Path of the TOML configuration file (required)."]]
    optFlags = [["check", None, "Validate the configuration, print the listeners and exit."]]

    loaded: Config

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")
        try:
            self.loaded = load_config(self["config"])
        except ConfigError as e:
            sys.stderr.write(f"{e}\n")
            sys.stderr.write(f"{e.source}: configuration is invalid ({len(e.problems)} problem(s))\n")
            raise SystemExit(1) from None
        if self["check"]:
            problems = host_problems(self.loaded)
            if problems:
                sys.stderr.write("".join(f"{self.loaded.source}: {p}\n" for p in problems))
                sys.stderr.write(f"{self.loaded.source}: cannot listen as configured on this host "
                                 f"({len(problems)} problem(s))\n")
                raise SystemExit(1)
            sys.stdout.write(describe(self.loaded))
            raise SystemExit(0)
        _quiet_start_up_errors()


def host_problems(config: Config) -> list[str]:
    """What --check finds on this host: interfaces it does not have, UNIX sockets in missing directories."""
    problems = []
    for name, cfg in config.enabled_services():
        endpoint = getattr(cfg, "endpoint", "")
        problem = host_problem(endpoint) if endpoint else None
        if problem:
            problems.append(f"services.{name}.endpoint: {problem}")
    return problems


def _quiet_start_up_errors() -> None:
    """A start-up failure is the one line the service logged (critical): no traceback after it.

    twistd lets the exception out of C{privilegedStartService} (after telling
    a daemonizing parent through its status pipe), and Python would print its
    traceback; the exit status stays 1.
    """
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if not isinstance(value, StartupError):
            previous(kind, value, tb)

    sys.excepthook = hook


def describe(config: Config) -> str:
    """What --check prints: the database and each configured service's endpoint."""
    url = parse_database_url(config.database.url, config.daemon.data_dir, config.database.password)
    lines = [f"{config.source}: configuration is valid", f"  data_dir  {config.daemon.data_dir}", f"  database  {url.safe}"]
    if config.daemon.workers != 1:
        count = worker_count(config.daemon)
        per_core = " (one per core)" if config.daemon.workers == 0 else ""
        lines.append(f"  workers   {count}{per_core}" + (", under a supervisor" if count > 1 else ""))
    for name, cfg in config.services.items():
        endpoint = getattr(cfg, "endpoint", "")
        kind = f"  ({cfg.kind})" if cfg.kind != name else ""
        state = "" if cfg.enabled else "  (disabled)"
        lines.append(f"  {name:<9} {endpoint}{kind}{state}")
    return "\n".join(lines) + "\n"


def makeService(options: Options) -> IService:
    from twisted.internet import reactor  # the plugin wiring is the one place that picks the reactor

    config = options.loaded
    spec = WorkerSpec.from_environ(os.environ)
    if spec is not None:  # started by a supervisor: one of its workers
        link = WorkerLink(spec, reactor, own_signals=True)
        return build_service_tree(config, reactor, handle_sighup=True, worker=link)
    count = worker_count(config.daemon)
    if count > 1:
        return Supervisor(config, reactor, count, handle_sighup=True)
    # a real process: SIGHUP reloads the configuration
    return build_service_tree(config, reactor, handle_sighup=True)


