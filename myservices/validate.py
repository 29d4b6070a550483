"""Checking one TOML table against a settings dataclass, with messages derived from the declarations.

Every problem is appended to a list (the loader reports them all at once),
each as ``KEY.PATH: what was expected, got what``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

from myservices.endpoints import EndpointSyntaxError, check_stream_endpoint, parse_udp_endpoint, resolve_endpoint_paths
from myservices.settings import DURATION, PARSED, PATH, SIZE, STREAM_ENDPOINT, STRINGS, UDP_ENDPOINT, parse_size


class Validator:
    """Builds one dataclass from one TOML table, appending problems instead of raising."""

    def __init__(self, base_dir: Path, problems: list[str]) -> None:
        self.base_dir = base_dir
        self.problems = problems

    def build(self, cls: type, table: Any, where: str) -> Any:
        """An instance of the dataclass C{cls} from C{table} (the section C{where}); None if it has problems."""
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
            # the files of ssl: and the path of unix:, like every relative path, are relative to the config file
            value = resolve_endpoint_paths(value, self.base_dir)
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
        elif kind == PARSED:
            return meta["parse"](value)
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
    if kind == PARSED:
        return str(meta.get("expected") or "a value")
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
        elif isinstance(f.default, tuple) and not f.default:
            default = "[]"
        elif isinstance(f.default, tuple):  # STRINGS, written as TOML writes an array
            default = "[" + ", ".join(f'"{v}"' for v in f.default) + "]"
        rows.append((f.name, _expected(hints[f.name], f), default, f.metadata.get("doc", "")))
    return rows

