"""Configuration: a TOML file read into frozen dataclasses, validated before anything is built.

Every setting is a dataclass field declared with L{setting}, which carries its
default, its bounds and its documentation. One generic validator walks the
dataclasses, so an unknown key, a wrong type, a missing key or an impossible
value is reported with the file, the key path and what was expected.

Precedence, highest first: the named environment variables (L{ENV_ALIASES},
and the password variables), generic ``MYSERVICES__SECTION__KEY`` variables,
the file, the defaults declared here.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from myservices.endpoints import EndpointSyntaxError, check_stream_endpoint, parse_udp_endpoint

if typing.TYPE_CHECKING:
    from myservices.accounts import AccountsConfig
    from myservices.hub.config import HubConfig
    from myservices.kv import KeyValueConfig

ENV_PREFIX = "MYSERVICES__"
ENV_ALIASES: Mapping[str, tuple[str, ...]] = {
    "MYSERVICES_DATABASE_URL": ("database", "url"),
    "MYSERVICES_DATA_DIR": ("daemon", "data_dir"),
}
ENV_PASSWORD = "MYSERVICES_DATABASE_PASSWORD"
ENV_PASSWORD_FILE = "MYSERVICES_DATABASE_PASSWORD_FILE"


class ConfigError(Exception):
    """The configuration cannot be used; C{problems} lists every reason found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


# --- declaring settings ---------------------------------------------------

STREAM_ENDPOINT = "stream_endpoint"
UDP_ENDPOINT = "udp_endpoint"
SIZE = "size"
DURATION = "duration"
PATH = "path"
STRINGS = "strings"  # an array of strings, kept as a tuple


def setting(
    default: Any = dataclasses.MISSING,
    *,
    doc: str,
    kind: str | None = None,
    min: float | None = None,
    max: float | None = None,
    secret: bool = False,
) -> Any:
    """Declare a config key: its default (none means required), bounds and one-line doc."""
    meta = {"doc": doc, "kind": kind, "min": min, "max": max, "secret": secret}
    return field(default=default, metadata=meta, repr=not secret)


KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
_SIZE_UNITS = {"": 1, "b": 1, "kib": KiB, "mib": MiB, "gib": GiB, "kb": 1000, "mb": 1000**2, "gb": 1000**3}


def parse_size(value: Any) -> int:
    """Bytes from an integer or a string such as ``"64 KiB"`` or ``"1MiB"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    raise ValueError('expected a size in bytes, such as 65536 or "64 KiB"')


# --- the configuration model ----------------------------------------------


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


@dataclass(frozen=True, kw_only=True)
class DatabaseConfig:
    """The one connection pool every persistent handler uses."""

    url: str = setting(
        "sqlite:///myservices.sqlite3",
        secret=True,  # may hold a password; kept out of reprs
        doc='"sqlite:///PATH" (relative to data_dir) or "mysql://USER:PASSWORD@HOST:PORT/DATABASE"',
    )
    password: str | None = setting(
        None, secret=True, doc="MySQL password; overrides the one in url (prefer the environment)"
    )
    pool_min: int = setting(1, min=1, max=100, doc="connections kept open (MySQL)")
    pool_max: int = setting(5, min=1, max=100, doc="most connections open at once (MySQL; SQLite uses one)")
    connect_timeout: float = setting(
        5.0, kind=DURATION, min=0.1, max=300,
        doc="seconds to connect and log in, and for the ping before each transaction (MySQL)",
    )
    query_timeout: float = setting(
        30.0, kind=DURATION, min=0.1, max=3600, doc="seconds a MySQL read or write may take (per statement)"
    )
    request_timeout: float = setting(
        10.0, kind=DURATION, min=0.1, max=3600,
        doc="seconds a request waits for the database in all (a pool thread, reconnecting, retries);"
        " then it fails with DATABASE_UNAVAILABLE",
    )


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    """Keys every service section has."""

    enabled: bool = setting(True, doc="set false to keep the section but not run the service")

    def check_with(self, name: str, services: Mapping[str, ServiceConfig]) -> list[str]:
        """Problems that depend on other service sections (each a "services.NAME.key: ..." line)."""
        return []


@dataclass(frozen=True, kw_only=True)
class StreamServiceConfig(ServiceConfig):
    """Keys of every service that listens on a stream endpoint."""

    endpoint: str = setting(kind=STREAM_ENDPOINT, doc='Twisted endpoint string, e.g. "tcp:1234:interface=127.0.0.1"')
    max_connections: int = setting(
        1000, min=1, max=1_000_000, doc="connections served at once; more are refused with a short message"
    )
    idle_timeout: float = setting(
        300.0, kind=DURATION, min=0, max=86400, doc="seconds without input before a connection is closed (0: never)"
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
    services: Mapping[str, ServiceConfig]

    def enabled_services(self) -> list[tuple[str, ServiceConfig]]:
        return [(name, cfg) for name, cfg in self.services.items() if cfg.enabled]


@dataclass(frozen=True, kw_only=True)
class DatabaseUrl:
    """A parsed database URL; C{password} never appears in C{safe}."""

    scheme: Literal["sqlite", "mysql"]
    path: str = ""  # sqlite: file path or ":memory:"
    host: str = ""
    port: int = 3306
    user: str = ""
    password: str = field(default="", repr=False)
    database: str = ""

    @property
    def safe(self) -> str:
        """The URL with any password masked, for logs and --check."""
        if self.scheme == "sqlite":
            return f"sqlite:///{self.path}"
        auth = self.user + (":***" if self.password else "")
        return f"mysql://{auth}@{self.host}:{self.port}/{self.database}"


def parse_database_url(url: str, data_dir: Path, password: str | None = None) -> DatabaseUrl:
    """Parse C{url}; relative SQLite paths are resolved against C{data_dir}."""
    if url.startswith("sqlite:"):
        rest = url[len("sqlite:"):]
        if not rest.startswith("///") or len(rest) == 3:
            raise ValueError('expected "sqlite:///relative/path", "sqlite:////absolute/path" or "sqlite:///:memory:"')
        path = rest[3:]
        if path != ":memory:":
            path = str((data_dir / path).resolve()) if not os.path.isabs(path) else path
        return DatabaseUrl(scheme="sqlite", path=path)
    parts = urlsplit(url)
    if parts.scheme in ("mysql", "mariadb", "mysql+pymysql"):
        try:
            port = parts.port or 3306
        except ValueError:
            raise ValueError("expected a port number between 1 and 65535 in the MySQL URL") from None
        database = parts.path.lstrip("/")
        if not parts.hostname or not database or "/" in database:
            raise ValueError('expected "mysql://USER:PASSWORD@HOST:PORT/DATABASE"')
        return DatabaseUrl(
            scheme="mysql",
            host=parts.hostname,
            port=port,
            user=unquote(parts.username or "root"),
            password=password if password is not None else unquote(parts.password or ""),
            database=unquote(database),
        )
    raise ValueError('expected a URL starting with "sqlite:///" or "mysql://"')


# --- loading ---------------------------------------------------------------

ServiceKinds = Mapping[str, type[ServiceConfig]]


def load_config(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    kinds: ServiceKinds | None = None,
) -> Config:
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
    return config_from_dict(raw, source, path.resolve().parent, environ, kinds)


def config_from_dict(
    raw: dict[str, Any],
    source: str,
    base_dir: Path,
    environ: Mapping[str, str] | None = None,
    kinds: ServiceKinds | None = None,
) -> Config:
    """Validate an already parsed TOML document (see L{load_config})."""
    # imported here: these modules declare their settings with this module's helpers
    from myservices.accounts import AccountsConfig
    from myservices.hub.config import HubConfig
    from myservices.kv import KeyValueConfig

    if kinds is None:
        from myservices.registry import config_classes

        kinds = config_classes()
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    _apply_environment(raw, environ, problems)
    validator = _Validator(base_dir, problems)

    sections: dict[str, type] = {
        "daemon": DaemonConfig, "database": DatabaseConfig, "hub": HubConfig, "accounts": AccountsConfig,
        "kv": KeyValueConfig,
    }
    unknown = set(raw) - set(sections) - {"services"}
    for key in sorted(unknown):
        problems.append(f"{key}: unknown key (expected {', '.join(sections)} or services)")
    built = {name: validator.build(cls, raw.get(name, {}), name) for name, cls in sections.items()}
    daemon, database = built["daemon"], built["database"]
    services: dict[str, ServiceConfig] = {}
    raw_services = raw.get("services", {})
    if not isinstance(raw_services, dict):
        problems.append("services: expected a table of [services.NAME] sections")
        raw_services = {}
    for name, section in raw_services.items():
        if name not in kinds:
            problems.append(f"services.{name}: unknown service (expected one of {', '.join(sorted(kinds))})")
            continue
        service = validator.build(kinds[name], section, f"services.{name}")
        if service is not None:
            services[name] = service

    # in the registry's order, which is the order services are built and started
    services = {name: services[name] for name in kinds if name in services}
    for name, service in services.items():
        if service.enabled:
            problems.extend(service.check_with(name, services))

    if database is not None:
        data_dir = daemon.data_dir if daemon is not None else base_dir
        database = _resolve_database(database, data_dir, environ, problems)
    if problems:
        raise ConfigError(source, problems)
    built["database"] = database
    return Config(source=source, services=services, **built)


def _apply_environment(raw: dict[str, Any], environ: Mapping[str, str], problems: list[str]) -> None:
    overrides: list[tuple[tuple[str, ...], str, str]] = []
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            keys = tuple(k.lower() for k in name[len(ENV_PREFIX):].split("__"))
            overrides.append((keys, value, name))
    overrides.sort()
    # the named aliases win over the generic form, so they are applied last
    overrides += [(keys, environ[name], name) for name, keys in ENV_ALIASES.items() if name in environ]
    for keys, value, name in overrides:
        table = raw
        for key in keys[:-1]:
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                problems.append(f"{name}: {'.'.join(keys)} does not name a key in a table")
                break
        else:
            table[keys[-1]] = _env_value(value)


def _env_value(text: str) -> Any:
    """An environment value as TOML would read it (42, true, 1.5), else the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _resolve_database(
    database: DatabaseConfig, data_dir: Path, environ: Mapping[str, str], problems: list[str]
) -> DatabaseConfig:
    password = database.password
    if ENV_PASSWORD in environ:
        password = environ[ENV_PASSWORD]
    if ENV_PASSWORD_FILE in environ:
        try:
            password = Path(environ[ENV_PASSWORD_FILE]).read_text().rstrip("\r\n")
        except OSError as e:
            problems.append(f"{ENV_PASSWORD_FILE}: cannot read {environ[ENV_PASSWORD_FILE]}: {e.strerror}")
    try:
        parse_database_url(database.url, data_dir, password)
    except ValueError as e:
        problems.append(f"database.url: {e}")
    if database.pool_min > database.pool_max:
        problems.append("database.pool_min: expected at most database.pool_max")
    return dataclasses.replace(database, password=password)


class _Validator:
    """Builds one dataclass from one TOML table, appending problems instead of raising."""

    def __init__(self, base_dir: Path, problems: list[str]) -> None:
        self.base_dir = base_dir
        self.problems = problems

    def build(self, cls: type, table: Any, where: str) -> Any:
        if not isinstance(table, dict):
            self.problems.append(f"{where}: expected a table ([{where}])")
            return None
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        ok = True
        for key in sorted(set(table) - set(fields)):
            self.problems.append(f"{where}.{key}: unknown key (expected one of {', '.join(fields)})")
            ok = False
        values: dict[str, Any] = {}
        for name, f in fields.items():
            path = f"{where}.{name}"
            if name not in table:
                if f.default is dataclasses.MISSING:
                    self.problems.append(f"{path}: missing (expected {_expected(hints[name], f)})")
                    ok = False
                continue
            try:
                values[name] = self._convert(table[name], hints[name], f)
            except ValueError as e:
                self.problems.append(f"{path}: {e}")
                ok = False
        if not ok:
            return None
        for name, f in fields.items():
            # defaults that are paths are relative to the config file too
            if name not in values and f.metadata.get("kind") == PATH:
                values[name] = self._convert(str(f.default), hints[name], f)
        return cls(**values)

    def _convert(self, value: Any, hint: Any, f: dataclasses.Field[Any]) -> Any:
        meta = f.metadata
        kind = meta.get("kind")
        expected = _expected(hint, f)
        if kind == SIZE:
            try:
                value = parse_size(value)
            except ValueError:
                raise ValueError(f"expected {expected}, got {_toml_type(value)}") from None
        elif kind == STREAM_ENDPOINT:
            try:
                check_stream_endpoint(value)
            except EndpointSyntaxError as e:
                raise ValueError(str(e)) from None
            return value
        elif kind == UDP_ENDPOINT:
            try:
                parse_udp_endpoint(value)
            except EndpointSyntaxError as e:
                raise ValueError(str(e)) from None
            return value
        elif kind == STRINGS:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"expected {expected}, got {_toml_type(value)}")
            return tuple(value)
        elif kind == PATH:
            if not isinstance(value, str) or not value:
                raise ValueError(f"expected {expected}")
            path = Path(value).expanduser()
            return path if path.is_absolute() else (self.base_dir / path).resolve()
        value = _check_type(value, hint, expected)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            lo, hi = meta.get("min"), meta.get("max")
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                raise ValueError(f"expected {expected}, got {value}")
        return value


def _check_type(value: Any, hint: Any, expected: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value in typing.get_args(hint) and isinstance(value, str):
            return value
        raise ValueError(f"expected {expected}, got {value!r}")
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _check_type(value, options[0], expected)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise ValueError(f"expected {expected}, got {value!r}")
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ValueError(f"expected {expected}, got {_toml_type(value)}")


def _expected(hint: Any, f: dataclasses.Field[Any]) -> str:
    meta = f.metadata
    kind = meta.get("kind")
    if kind == STREAM_ENDPOINT:
        return 'a Twisted endpoint string such as "tcp:1234"'
    if kind == UDP_ENDPOINT:
        return 'a UDP endpoint such as "udp:10004:interface=127.0.0.1"'
    if kind == PATH:
        return "a path (a non-empty string)"
    if kind == STRINGS:
        return "an array of strings"
    if kind == SIZE:
        text = "a size in bytes"
    elif kind == DURATION:
        text = "a number of seconds"
    elif typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    else:
        text = _NAMES.get(hint, "a string")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        text += f" from {_num(lo)} to {_num(hi)}"
    elif lo is not None:
        text += f" of at least {_num(lo)}"
    if kind == SIZE:
        text += ' (e.g. 65536 or "64 KiB")'
    return text


_NAMES: dict[Any, str] = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def describe_settings(cls: type) -> list[tuple[str, str, str, str]]:
    """(key, expected, default, doc) rows for documentation and --help."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = "required" if f.default is dataclasses.MISSING else repr(f.default)
        if f.default is None:
            default = "unset"
        elif isinstance(f.default, tuple):  # STRINGS, written as TOML writes an array
            default = "[" + ", ".join(f'"{v}"' for v in f.default) + "]"
        rows.append((f.name, _expected(hints[f.name], f), default, f.metadata.get("doc", "")))
    return rows

