"""The configuration's environment: the variables that override keys of the file, and secrets read from it.

Precedence, highest first: the named variables (L{ENV_ALIASES}, and the
password and key variables), generic C{MYSERVICES__SECTION__KEY} variables,
the file. A problem a variable caused names the variable (L{ENV_PROBLEM}).
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV_PREFIX = "MYSERVICES__"
ENV_ALIASES: Mapping[str, tuple[str, ...]] = {
    "MYSERVICES_DATABASE_URL": ("database", "url"),
    "MYSERVICES_DATA_DIR": ("daemon", "data_dir"),
    "MYSERVICES_TOKEN_SECRET": ("tokens", "secret"),
}
ENV_PASSWORD = "MYSERVICES_DATABASE_PASSWORD"
ENV_PASSWORD_FILE = "MYSERVICES_DATABASE_PASSWORD_FILE"
ENV_REDIS_PASSWORD = "MYSERVICES_REDIS_PASSWORD"
ENV_REDIS_PASSWORD_FILE = "MYSERVICES_REDIS_PASSWORD_FILE"
ENV_TOKEN_SECRET_FILE = "MYSERVICES_TOKEN_SECRET_FILE"  # MYSERVICES_TOKEN_SECRET itself is an alias
# one more key of the server API ([api] keys), directly or in a file
ENV_API_KEY = "MYSERVICES_API_KEY"
ENV_API_KEY_FILE = "MYSERVICES_API_KEY_FILE"
MIN_API_KEY_LENGTH = 16  # [api] keys are checked against it too (myservices.web.api_keys)


# a problem that comes from an environment variable, not the file, starts with this and the variable's name
ENV_PROBLEM = "environment variable "


def env_name(path: str) -> str:
    """The generic environment variable that sets the key C{path} ("services.echo.endpoint")."""
    return ENV_PREFIX + "__".join(part.upper() for part in path.split("."))


def apply_environment(
    raw: dict[str, Any], environ: Mapping[str, str], problems: list[str], known: list[str]
) -> dict[str, str]:
    """Apply the overrides to C{raw}; return the variable that set each key path.

    A generic variable that names no known key is reported as that variable,
    with the closest known one, and not applied.
    """
    overrides: list[tuple[tuple[str, ...], str, str]] = []
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            keys = tuple(k.lower() for k in name[len(ENV_PREFIX):].split("__"))
            path = ".".join(keys)
            # a new [services.NAME] of a kind that is not its name: its kind comes from a variable too
            kind = str(env_value(environ.get(env_name(".".join(keys[:2] + ("kind",))), ""))) if len(keys) == 3 else ""
            if path not in known and not (len(keys) == 3 and kind and keys[2] in kind_keys(kind, known)):
                close = difflib.get_close_matches(path, known, n=1, cutoff=0.6)
                hint = f"did you mean {env_name(close[0])}?" if close else "see docs/configuration.md"
                problems.append(f"{ENV_PROBLEM}{name}: no such key {path} ({hint})")
                continue
            overrides.append((keys, value, name))
    overrides.sort()
    # the named aliases win over the generic form, so they are applied last
    overrides += [(keys, environ[name], name) for name, keys in ENV_ALIASES.items() if name in environ]
    overridden: dict[str, str] = {}
    for keys, value, name in overrides:
        table = raw
        for key in keys[:-1]:
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                problems.append(f"{ENV_PROBLEM}{name}: {'.'.join(keys)} does not name a key in a table")
                break
        else:
            table[keys[-1]] = env_value(value)
            overridden[".".join(keys)] = name
    return overridden


def kind_keys(kind: str, known: list[str]) -> set[str]:
    """The keys of a service of C{kind}, as the section named after the kind has them."""
    prefix = f"services.{kind}."
    return {path[len(prefix):] for path in known if path.startswith(prefix)}


def attribute_problem(problem: str, overridden: Mapping[str, str]) -> str:
    """A problem with a key an environment variable set names that variable."""
    if problem.startswith(ENV_PROBLEM):
        return problem
    path = problem.split(":", 1)[0]
    name = overridden.get(path)
    return f"{ENV_PROBLEM}{name}: {problem}" if name else problem


def env_value(text: str) -> Any:
    """An environment value as TOML would read it (42, true, 1.5), else the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def secret_from_environment(
    value: str | None, variable: str, file_variable: str, environ: Mapping[str, str], problems: list[str]
) -> str | None:
    """C{value}, unless the environment names a secret (directly, or a file holding it)."""
    if variable in environ:
        value = environ[variable]
    if file_variable in environ:
        try:
            value = Path(environ[file_variable]).read_text().rstrip("\r\n")
        except OSError as e:
            problems.append(f"{ENV_PROBLEM}{file_variable}: cannot read {environ[file_variable]}: {e.strerror}")
    return value
