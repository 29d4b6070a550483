"""Endpoint strings: validation of Twisted's stream syntax and our own ``udp:`` syntax."""

from __future__ import annotations

import errno
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.endpoints import serverFromString


class EndpointSyntaxError(ValueError):
    """An endpoint string that cannot be used; the message says what is expected."""


def split_description(description: str) -> tuple[list[str], dict[str, str]]:
    """Split ``kind:arg:key=value`` into positional and keyword parts.

    Follows Twisted's rules: ``\\`` escapes the next character, so ``\\:`` is a
    literal colon (needed for IPv6 addresses).
    """
    # each part as its text and where its first unescaped "=" is (Twisted: an escaped one is literal)
    parts: list[tuple[str, int]] = []
    current: list[str] = []
    equals = -1
    chars = iter(description)
    for ch in chars:
        if ch == "\\":
            current.append(next(chars, ""))
        elif ch == ":":
            parts.append(("".join(current), equals))
            current, equals = [], -1
        else:
            if ch == "=" and equals < 0:
                equals = len(current)
            current.append(ch)
    parts.append(("".join(current), equals))
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for part, equals in parts:
        # Twisted's rule: a part with an unescaped "=" is a keyword argument.
        if equals >= 0:
            kwargs[part[:equals]] = part[equals + 1 :]
        else:
            args.append(part)
    return args, kwargs


# the server endpoint kinds whose options name files: their parameters in Twisted's positional order
# (twisted.internet.endpoints._parseSSL, _parseUNIX), and which of them are paths
_PARAMETERS = {
    "ssl": ("port", "privateKey", "certKey", "sslmethod", "interface", "backlog", "extraCertChain", "dhParameters"),
    "unix": ("address", "mode", "backlog", "lockfile"),
}
_PATHS = {"ssl": ("privateKey", "certKey", "extraCertChain", "dhParameters"), "unix": ("address",)}
# what Twisted's ssl: endpoint reads when no privateKey is given (relative, like any other)
_SSL_DEFAULT_KEY = "server.pem"


def _raw_parts(description: str) -> list[str]:
    """The parts of C{description} between unescaped colons, escapes kept."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(description)
    for ch in chars:
        if ch == "\\":
            current += [ch, next(chars, "")]
        elif ch == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _unescape(part: str) -> str:
    return re.sub(r"\\(.)", r"\1", part)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:")


def resolve_endpoint_paths(description: str, base_dir: Path) -> str:
    """C{description} with every relative file path in it made absolute against C{base_dir}.

    The files an ``ssl:`` endpoint reads (``privateKey``, ``certKey``,
    ``extraCertChain``, ``dhParameters``; Twisted's default ``server.pem``
    when no ``privateKey`` is given) and a ``unix:`` socket's path, as
    keywords or positionally. Twisted would resolve them against the working
    directory; the configuration's relative paths are relative to the config
    file. Anything else, and every part without a relative path, is kept as
    written.
    """
    if not isinstance(description, str):
        return description
    parts = _raw_parts(description)
    kind = _unescape(parts[0]).lower()
    if kind not in _PATHS:
        return description
    parameters, paths = _PARAMETERS[kind], _PATHS[kind]
    seen: set[str] = set()
    position = 0
    for i, part in enumerate(parts[1:], 1):
        text = _unescape(part)
        if "=" in text:
            key, value = text.split("=", 1)
        else:
            key, value = (parameters[position] if position < len(parameters) else ""), text
            position += 1
        seen.add(key)
        if key in paths and value and not value.startswith("\0") and not os.path.isabs(value):
            resolved = _escape(str(base_dir / value)).replace("=", "\\=")  # a literal = in the directory
            parts[i] = f"{_escape(key)}={resolved}" if "=" in text else resolved
    if kind == "ssl" and "privateKey" not in seen:
        parts.append(_escape(f"privateKey={base_dir / _SSL_DEFAULT_KEY}"))
    return ":".join(parts)


class _NoReactor:
    """Stands in for the reactor while endpoint strings are parsed for validation.

    Endpoint constructors only store the reactor; anything that would touch it
    during validation is a bug worth an AttributeError.
    """


_STREAM_EXAMPLE = 'a Twisted endpoint string such as "tcp:1234"'


def check_stream_endpoint(description: str) -> None:
    """Raise L{EndpointSyntaxError} unless C{description} is a usable server endpoint.

    Nothing is bound. ``systemd:`` endpoints are checked for syntax only, because
    the inherited descriptors exist only in the process systemd starts.
    """
    if not isinstance(description, str) or not description.strip():
        raise EndpointSyntaxError(f"expected {_STREAM_EXAMPLE}")
    args, kwargs = split_description(description)
    kind = args[0].lower() if args else ""
    if kind == "udp":
        raise EndpointSyntaxError(f'expected {_STREAM_EXAMPLE}; "udp:" is for the udp service only')
    if kind == "systemd":
        _check_systemd(args, kwargs)
        return
    if kind in ("tcp", "tcp6", "ssl") and (len(args) < 2 or _port_number(args[1]) is None):
        raise EndpointSyntaxError(f"expected {_STREAM_EXAMPLE} (port is 0 to 65535)")
    try:
        serverFromString(_NoReactor(), description)
    except Exception as e:  # Twisted's parsers raise ValueError, KeyError, TypeError, OSError...
        raise EndpointSyntaxError(f"expected {_STREAM_EXAMPLE} ({_describe(e)})") from e


def host_problem(description: str) -> str | None:
    """Why this host cannot listen on C{description} (a valid stream or ``udp:`` endpoint), or None.

    For C{--check}: an interface address the host does not have, or a UNIX
    socket in a directory that does not exist. The configured port is never
    bound: the interface is probed with port 0. Whether the port is free is
    known only when the daemon binds it.
    """
    args, kwargs = split_description(description)
    kind = args[0].lower() if args else ""
    if kind == "unix":
        address = args[1] if len(args) > 1 else kwargs.get("address", "")
        directory = os.path.dirname(os.path.abspath(address))
        if address and not address.startswith("\0") and not os.path.isdir(directory):
            return f"cannot listen on {description}: the directory {directory} does not exist"
        return None
    if kind in ("tcp", "tcp6", "ssl"):
        interface = kwargs.get("interface", args[2] if len(args) > 2 else "")
        family = socket.AF_INET6 if kind == "tcp6" or ":" in interface else socket.AF_INET
        return _probe(description, interface, family, socket.SOCK_STREAM)
    if kind == "udp":
        udp = parse_udp_endpoint(description)
        return _probe(description, udp.interface, udp.family, socket.SOCK_DGRAM)
    return None  # systemd: the sockets are inherited


def _probe(description: str, interface: str, family: int, kind: int) -> str | None:
    """Bind port 0 on C{interface}: fails when the host has no such address."""
    if not interface:
        return None  # every interface
    try:
        with socket.socket(family, kind) as probe:
            probe.bind((interface, 0))
    except OSError as e:
        reason = e.strerror or str(e)
        if e.errno == errno.EADDRNOTAVAIL:
            reason = "this host has no such address"
        return f"cannot listen on {description}: interface {interface}: {reason}"
    return None


def missing_inherited_socket(description: str) -> str:
    """Why a ``systemd:`` endpoint found no socket: which one it wanted and how many were passed."""
    _, kwargs = split_description(description)
    wanted = f"name={kwargs['name']}" if "name" in kwargs else f"index={kwargs.get('index', '0')}"
    passed = os.environ.get("LISTEN_FDS", "")
    names = os.environ.get("LISTEN_FDNAMES", "")
    got = f"LISTEN_FDS={passed}" + (f", LISTEN_FDNAMES={names}" if names else "") if passed else "LISTEN_FDS is not set"
    return f"no inherited socket {wanted} ({got}); is a systemd socket unit passing it?"


def _check_systemd(args: list[str], kwargs: dict[str, str]) -> None:
    example = '"systemd:domain=INET:index=0" or "systemd:domain=INET:name=NAME"'
    domain = kwargs.get("domain", "")
    if not hasattr(socket, "AF_" + domain) or len(args) > 1:
        raise EndpointSyntaxError(f"expected {example} (domain is INET, INET6 or UNIX)")
    if ("index" in kwargs) == ("name" in kwargs):
        raise EndpointSyntaxError(f"expected {example} (give exactly one of index or name)")
    if "index" in kwargs and not kwargs["index"].isdigit():
        raise EndpointSyntaxError(f"expected {example} (index is a whole number)")
    unknown = set(kwargs) - {"domain", "index", "name"}
    if unknown:
        raise EndpointSyntaxError(f"expected {example} (unknown option {sorted(unknown)[0]!r})")


def _describe(error: Exception) -> str:
    if isinstance(error, OSError) and error.filename:  # a key or certificate of ssl:
        return f"cannot read {error.filename}: {error.strerror}"
    text = str(error) or type(error).__name__
    unexpected = re.search(r"unexpected keyword argument '([^']*)'", text)
    if unexpected:
        return f"unknown option {unexpected.group(1)!r}"
    if isinstance(error, KeyError):
        return f"unknown option {text}"
    return text


@dataclass(frozen=True)
class UdpEndpoint:
    """A parsed ``udp:PORT[:interface=ADDRESS]`` description."""

    port: int
    interface: str = ""

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.interface else socket.AF_INET


_UDP_EXAMPLE = 'a UDP endpoint such as "udp:10004" or "udp:10004:interface=127.0.0.1"'


def parse_udp_endpoint(description: Any) -> UdpEndpoint:
    """Parse our ``udp:`` syntax (Twisted has no UDP endpoint strings)."""
    if not isinstance(description, str):
        raise EndpointSyntaxError(f"expected {_UDP_EXAMPLE}")
    args, kwargs = split_description(description)
    if len(args) != 2 or args[0].lower() != "udp":
        raise EndpointSyntaxError(f"expected {_UDP_EXAMPLE}")
    port = _port_number(args[1])
    if port is None:
        raise EndpointSyntaxError(f"expected {_UDP_EXAMPLE} (port is 0 to 65535)")
    unknown = set(kwargs) - {"interface"}
    if unknown:
        raise EndpointSyntaxError(f"expected {_UDP_EXAMPLE} (unknown option {sorted(unknown)[0]!r})")
    interface = kwargs.get("interface", "")
    if interface and not _is_ip_address(interface):
        raise EndpointSyntaxError(
            f"expected {_UDP_EXAMPLE} (interface is an IP address; escape IPv6 colons as \\:)"
        )
    return UdpEndpoint(port=port, interface=interface)


def _port_number(text: str) -> int | None:
    if not text.isdigit():
        return None
    port = int(text)
    return port if 0 <= port <= 65535 else None


def _is_ip_address(text: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
            return True
        except OSError:
            pass
    return False
