"""Loading the configuration: a TOML file read into frozen dataclasses, validated before anything is built.

The loader owns the sections of the process itself, ``[daemon]`` and
``[database]`` (paths are relative to the config file, the database password
may come from the environment). Every other section class and every service
kind is handed to it in a L{Schema} by the wiring (L{myservices.registry}):
this module imports none of them. A ``[services.NAME]`` section is of the
kind NAME, or, when NAME is not a kind, of the kind its ``kind`` key names,
so one kind can listen on several endpoints.

Each section is checked against its declarations (L{myservices.settings})
by L{Validator}: an unknown key, a wrong type, a missing key or an
impossible value is reported with the file, the key path and what was
expected, every problem at once.

Precedence, highest first: the named environment variables (L{myservices.config_env},
and the password variables), generic ``MYSERVICES__SECTION__KEY`` variables,
the file, the declared defaults.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from myservices.config_env import (
    ENV_API_KEY, ENV_API_KEY_FILE, ENV_PASSWORD, ENV_PASSWORD_FILE, ENV_PROBLEM, ENV_REDIS_PASSWORD,
    ENV_REDIS_PASSWORD_FILE, ENV_TOKEN_SECRET_FILE, MIN_API_KEY_LENGTH, apply_environment, attribute_problem,
    secret_from_environment,
)
from myservices.db.config import DatabaseConfig, parse_database_url
from myservices.settings import DURATION, PATH, ServiceConfig, setting
from myservices.validate import Validator

if TYPE_CHECKING:
    from myservices.accounts import AccountsConfig
    from myservices.hub.config import HubConfig
    from myservices.hub.policy_config import RoomsConfig
    from myservices.kv import KeyValueConfig
    from myservices.operator.config import AdminConfig
    from myservices.tokens import TokensConfig
    from myservices.web.api_keys import ApiConfig

class ConfigError(Exception):
    """The configuration cannot be used; C{problems} lists every reason found.

    Each line of the message names where the problem is: the file, or the
    environment variable (L{ENV_PROBLEM}) that set the key.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(p if p.startswith(ENV_PROBLEM) else f"{source}: {p}" for p in problems))


@dataclass(frozen=True, kw_only=True)
class DaemonConfig:
    """Process-wide settings."""

    data_dir: Path = setting(
        Path("data"), kind=PATH, doc="directory for SQLite and other state; relative to the config file"
    )
    shutdown_timeout: float = setting(
        5.0, kind=DURATION, min=0, max=3600,
        doc="seconds open connections get to close on stop before they are aborted",
    )
    close_timeout: float = setting(
        30.0, kind=DURATION, min=0.1, max=3600,
        doc="seconds a connection the server closes gets to read what is left (after a quit, an idle timeout, "
        "a client's half-close, ...) before it is aborted",
    )
    reactor_lag_interval: float = setting(
        1.0, kind=DURATION, min=0, max=60,
        doc="seconds between reactor lag probes (myservices_reactor_lag_seconds); 0 turns them off",
    )
    log_format: Literal["text", "json"] = setting(
        "text", doc='"json": one JSON object per line on standard output, for log shippers'
    )
    log_level: Literal["debug", "info", "warn", "error", "critical"] = setting(
        "info", doc="the least severe events that are logged"
    )
    write_coalescing: bool = setting(
        True,
        doc="stream connections send what they wrote during a reactor turn in one send at its end, registering "
        "for writability only when the kernel takes less; false: Twisted's stock transports",
    )
    listen_backlog: int = setting(
        1024, min=1, max=65535,
        doc="the listen backlog of every stream listener whose endpoint names none (tcp:8000:backlog=4096 does); "
        "the kernel caps it at net.core.somaxconn",
    )
    workers: int = setting(
        1, min=0, max=256,
        doc="processes serving every listener (sharing each port); 1: the daemon is one process; "
        "0: one per CPU core; more than 1: a supervisor starts them and restarts any that dies",
    )
    worker_stop_timeout: float = setting(
        10.0, kind=DURATION, min=0.1, max=3600,
        doc="with workers: seconds the supervisor waits for its workers to drain and exit on stop before "
        "killing them; more than shutdown_timeout",
    )
    worker_restart_delay: float = setting(
        0.5, kind=DURATION, min=0, max=60,
        doc="with workers: seconds before a worker that died is started again; doubles while it keeps dying",
    )
    worker_restart_max_delay: float = setting(
        30.0, kind=DURATION, min=0, max=3600,
        doc="with workers: the longest restart delay; a worker that ran this long restarts after worker_restart_delay",
    )
    worker_metrics_interval: float = setting(
        1.0, kind=DURATION, min=0.05, max=60,
        doc="with workers: seconds between each worker's writes of its hot-path counts to the shared metrics",
    )


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole validated configuration."""

    source: str
    daemon: DaemonConfig
    database: DatabaseConfig
    hub: HubConfig
    accounts: AccountsConfig
    kv: KeyValueConfig
    tokens: TokensConfig
    rooms: RoomsConfig
    api: ApiConfig
    admin: AdminConfig
    services: Mapping[str, ServiceConfig]

    def enabled_services(self) -> list[tuple[str, ServiceConfig]]:
        return [(name, cfg) for name, cfg in self.services.items() if cfg.enabled]


@dataclass(frozen=True)
class Schema:
    """What a config file may hold besides ``[daemon]`` and ``[database]``; the wiring hands it to the loader."""

    # the other top-level tables by name, each a field of L{Config} (hub, accounts, kv)
    sections: Mapping[str, type]
    # service kind -> its config class, in the order services are built and started
    kinds: Mapping[str, type[ServiceConfig]]
    # checks across sections, run on a config whose sections are each valid: each returns problems
    checks: Sequence[Callable[[Config], list[str]]] = field(default=())


def read_config(path: str | os.PathLike[str], schema: Schema, environ: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment and validate; raise L{ConfigError} on any problem."""
    path = Path(path)
    source = str(path)
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(source, ["no such file"]) from None
    except OSError as e:
        raise ConfigError(source, [f"cannot read: {e.strerror}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, [f"not valid TOML: {e}"]) from None
    return config_from_dict(raw, source, path.resolve().parent, schema, environ)


def config_from_dict(
    raw: dict[str, Any],
    source: str,
    base_dir: Path,
    schema: Schema,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Validate an already parsed TOML document (see L{read_config})."""
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    sections: dict[str, type] = {"daemon": DaemonConfig, "database": DatabaseConfig, **schema.sections}
    overridden = apply_environment(raw, environ, problems, _known_keys(raw, sections, schema.kinds))
    try:
        return _validate(raw, source, base_dir, schema, sections, environ, problems)
    except ConfigError as e:
        e.problems[:] = [attribute_problem(p, overridden) for p in e.problems]
        raise ConfigError(source, e.problems) from None


def _validate(
    raw: dict[str, Any],
    source: str,
    base_dir: Path,
    schema: Schema,
    sections: dict[str, type],
    environ: Mapping[str, str],
    problems: list[str],
) -> Config:
    validator = Validator(base_dir, problems)
    unknown = set(raw) - set(sections) - {"services"}
    for key in sorted(unknown):
        problems.append(f"{key}: unknown key (expected {', '.join(sections)} or services)")
    built = {name: validator.build(cls, raw.get(name, {}), name) for name, cls in sections.items()}
    daemon, database = built["daemon"], built["database"]
    services = _services(raw.get("services", {}), schema.kinds, validator, problems)
    for name, service in services.items():
        if service.enabled:
            problems.extend(service.check_with(name, services))

    if database is not None:
        data_dir = daemon.data_dir if daemon is not None else base_dir
        database = _resolve_database(database, data_dir, environ, problems)
    if built.get("hub") is not None:
        built["hub"] = _resolve_hub(built["hub"], environ, problems)
    if built.get("tokens") is not None and ENV_TOKEN_SECRET_FILE in environ:
        secret = secret_from_environment("", "", ENV_TOKEN_SECRET_FILE, environ, problems)
        built["tokens"] = dataclasses.replace(built["tokens"], secret=secret or "")
    if built.get("api") is not None:
        api_key = secret_from_environment(None, ENV_API_KEY, ENV_API_KEY_FILE, environ, problems)
        variable = ENV_API_KEY_FILE if ENV_API_KEY_FILE in environ else ENV_API_KEY
        if api_key and (len(api_key) < MIN_API_KEY_LENGTH or api_key != api_key.strip()):
            problems.append(
                f"{ENV_PROBLEM}{variable}: expected an API key of at least {MIN_API_KEY_LENGTH} characters, "
                "without spaces around it"
            )
        elif api_key:
            built["api"] = dataclasses.replace(built["api"], keys=(*built["api"].keys, api_key))
    if problems:
        raise ConfigError(source, problems)
    built["database"] = database
    config = Config(source=source, services=services, **built)
    for check in schema.checks:
        problems.extend(check(config))
    if problems:
        raise ConfigError(source, problems)
    return config


# the names of the daemon's own services in the tree (a [services.NAME] of one of these could not be added)
RESERVED_SERVICE_NAMES = frozenset({
    "watchdog", "database", "reactor-lag", "hub-lease", "hub", "hub-engine", "password-hasher", "counter",
    "notify", "reload", "operator", "supervisor", "worker-link", "metrics-flush",
})


def _services(
    raw: Any, kinds: Mapping[str, type[ServiceConfig]], validator: Validator, problems: list[str]
) -> dict[str, ServiceConfig]:
    """The [services.NAME] sections, in the order of their kinds (the start order), then of the file."""
    if not isinstance(raw, dict):
        problems.append("services: expected a table of [services.NAME] sections")
        return {}
    order = {kind: i for i, kind in enumerate(kinds)}
    found: list[tuple[int, str, ServiceConfig]] = []
    for name, section in raw.items():
        if name in RESERVED_SERVICE_NAMES:
            problems.append(
                f"services.{name}: the daemon names one of its own services {name!r}; choose another name "
                f'(e.g. [services.{name}-1] with kind = "...")'
            )
            continue
        kind = _kind_of(name, section, kinds, problems)
        if kind is None:
            continue
        table = {**section, "kind": kind} if isinstance(section, dict) else section
        service = validator.build(kinds[kind], table, f"services.{name}")
        if service is not None:
            found.append((order[kind], name, service))
    found.sort(key=lambda item: item[0])  # stable: two services of one kind keep the file's order
    return {name: service for _, name, service in found}


def _kind_of(name: str, section: Any, kinds: Mapping[str, type[ServiceConfig]], problems: list[str]) -> str | None:
    """The kind of [services.NAME]: NAME when it is a kind, else its kind key; None (and a problem) if neither."""
    expected = ", ".join(sorted(kinds))
    if not isinstance(section, dict) or "kind" not in section:
        if name in kinds:
            return name
        example = next(iter(kinds), "KIND")
        problems.append(
            f"services.{name}: unknown service (expected one of {expected}, "
            f'or a kind key naming one, e.g. kind = "{example}")'
        )
        return None
    kind = section["kind"]
    if name in kinds and kind != name:
        problems.append(
            f"services.{name}.kind: expected {name!r} or no kind key: a section named after a kind is of that kind"
        )
        return None
    if not isinstance(kind, str) or kind not in kinds:
        problems.append(f"services.{name}.kind: unknown kind {kind!r} (expected one of {expected})")
        return None
    return kind


def _known_keys(raw: dict[str, Any], sections: Mapping[str, type], kinds: Mapping[str, type]) -> list[str]:
    """Every key path an environment variable may set ("services.echo.max_connections"), for its check."""
    keys = [f"{name}.{f.name}" for name, cls in sections.items() for f in dataclasses.fields(cls)]
    services = raw.get("services")
    named: dict[str, Any] = {kind: kind for kind in kinds}
    if isinstance(services, dict):
        named.update((name, s.get("kind", name)) for name, s in services.items() if isinstance(s, dict))
    for name, kind in named.items():
        if isinstance(kind, str) and kind in kinds:
            keys += [f"services.{name}.{f.name}" for f in dataclasses.fields(kinds[kind])]
    return keys


def _resolve_hub(hub: HubConfig, environ: Mapping[str, str], problems: list[str]) -> HubConfig:
    password = secret_from_environment(
        hub.redis_password, ENV_REDIS_PASSWORD, ENV_REDIS_PASSWORD_FILE, environ, problems
    )
    problems.extend(hub.problems())
    return dataclasses.replace(hub, redis_password=password)


def _resolve_database(
    database: DatabaseConfig, data_dir: Path, environ: Mapping[str, str], problems: list[str]
) -> DatabaseConfig:
    password = secret_from_environment(database.password, ENV_PASSWORD, ENV_PASSWORD_FILE, environ, problems)
    try:
        parse_database_url(database.url, data_dir, password)
    except ValueError as e:
        problems.append(f"database.url: {e}")
    if database.pool_min > database.pool_max:
        problems.append("database.pool_min: expected at most database.pool_max")
    return dataclasses.replace(database, password=password)
