"""The command line of ``myservices-client``: its options, and what can be known wrong before connecting.

Everything here that is wrong raises L{UsageError}, whose message says what
to type instead; the console script (L{myservices.cli}) prints it and exits 2.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from typing import Any

from twisted.internet.endpoints import clientFromString

from myservices.framed.catalog import COMMANDS

PASSWORD_ENV = "MYSERVICES_PASSWORD"
DEFAULT_SERVER = "127.0.0.1:8000"

# the exit statuses, for --help and docs/protocols.md
EXIT_DONE, EXIT_SERVER_ERROR, EXIT_USAGE, EXIT_CONNECTION = 0, 1, 2, 3
EXIT_STATUS = (
    "exit status: 0 done; 1 the server answered with an error (printed as CODE: message); 2 bad usage "
    "(a bad option or argument, --endpoint or --server included); 3 the connection failed or was closed; "
    "128+N stopped by signal N (130: Ctrl-C, 143: SIGTERM)"
)


def _framed_options(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    """The options of every framed command; accepted before or after the command's name.

    After it (C{suppress}), an option that is not given leaves the value given before it alone.
    """
    kw: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    parser.add_argument("--server", metavar="HOST:PORT", help=f"default: {DEFAULT_SERVER}; IPv6: [::1]:8000", **kw)
    parser.add_argument(
        "--endpoint", metavar="STRING", help='a Twisted client endpoint instead of --server, e.g. "tls:example.com:8000"',
        **kw,
    )
    parser.add_argument("--user", metavar="NAME", help="log in as NAME first (password: see --password-file)", **kw)
    parser.add_argument(
        "--password-file", metavar="PATH", help=f"read the password from PATH (else ${PASSWORD_ENV}, else a prompt)",
        **kw,
    )
    parser.add_argument("--json", action="store_true", help="print results and pushes as JSON, one per line", **kw)
    parser.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="connect timeout (default: 30)", **(kw or {"default": 30.0})
    )


class _Commands:
    """Adds framed commands whose parsers take the framed options too."""

    def __init__(self, subparsers: Any) -> None:
        self.subparsers = subparsers

    def add(self, name: str, **kw: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = self.subparsers.add_parser(name, epilog=EXIT_STATUS, **kw)
        _framed_options(parser, suppress=True)
        return parser


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="myservices-client", description="A client for the myservices daemon.", epilog=EXIT_STATUS
    )
    protocols = parser.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    framed = protocols.add_parser("framed", help="the framed JSON service (default 127.0.0.1:8000)", epilog=EXIT_STATUS)
    _framed_options(framed)
    commands = _Commands(framed.add_subparsers(dest="command", required=True, metavar="COMMAND"))

    commands.add("ping", help="check that the server answers")
    register = commands.add("register", help="create the account NAME (asks for its password)")
    register.add_argument("username", nargs="?", metavar="NAME", help="the account (or --user NAME)")
    login = commands.add("login", help="check the password of the account NAME")
    login.add_argument("username", nargs="?", metavar="NAME", help="the account (or --user NAME)")
    commands.add("whoami", help="the account and nick of this connection")
    publish = commands.add("publish", help="publish TEXT to ROOM (no need to join)")
    publish.add_argument("room")
    publish.add_argument("text", nargs="+")
    dm = commands.add("dm", help="send TEXT to NICK alone (every connection of that nick)")
    dm.add_argument("nick", metavar="NICK")
    dm.add_argument("text", nargs="+")
    dm.add_argument("--nick", dest="as_nick", metavar="NAME", help="send as NAME (default: your login's or a guest nick)")
    listen = commands.add("listen", help="print what is published to the rooms, and direct messages, until interrupted")
    listen.add_argument("rooms", nargs="+", metavar="ROOM")
    listen.add_argument("--join", action="store_true", help="join as a member (others see you) instead of subscribing")
    listen.add_argument("--nick", help="the nick to use (as a member with --join; direct messages to it are printed)")
    listen.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    listen.add_argument("--since", type=int, metavar="ID",
                        help="first print what was published after message ID (the last one you saw; one ROOM only)")
    listen.add_argument("--ping-interval", type=float, default=60.0, metavar="SECONDS",
                        help="keep the connection open with a ping this often (default: %(default)s)")
    history = commands.add("history", help="recent messages of ROOM")
    history.add_argument("room")
    history.add_argument("-n", "--limit", type=int)
    who = commands.add("who", help="members of ROOM")
    who.add_argument("room")
    commands.add("rooms", help="rooms in use")
    counter = commands.add("counter", help="take the next number of the request counter")
    counter.add_argument("--get", action="store_true", help="read it without taking a number")
    kv = commands.add("kv", help="the key-value store of --user's account")
    kv_commands = _Commands(kv.add_subparsers(dest="kv_command", required=True, metavar="ACTION"))
    kv_commands.add("get", help="print the value of KEY").add_argument("key")
    kv_set = kv_commands.add("set", help="store VALUE (JSON; anything else is taken as a string) under KEY")
    kv_set.add_argument("key")
    kv_set.add_argument("value")
    kv_commands.add("delete", help="remove KEY").add_argument("key")
    kv_list = kv_commands.add("list", help="keys starting with PREFIX")
    kv_list.add_argument("prefix", nargs="?", default="")
    call = commands.add("call", help="any command by name or id, with JSON arguments")
    call.add_argument("name", metavar="COMMAND", help=f"e.g. {', '.join(list(COMMANDS)[:4])}, ... or a number")
    call.add_argument("args", nargs="?", default="{}", metavar="JSON", help="arguments object (default: {})")
    return parser


def read_password(args: argparse.Namespace, prompt: str) -> str:
    """The password from --password-file, $MYSERVICES_PASSWORD or a prompt; L{UsageError} if there is none."""
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                return f.read().rstrip("\r\n")
        except OSError as e:
            raise UsageError(f"--password-file: cannot read {args.password_file}: {e.strerror}") from None
    if PASSWORD_ENV in os.environ:
        return os.environ[PASSWORD_ENV]
    if not sys.stdin.isatty():
        raise UsageError(f"no password: set ${PASSWORD_ENV}, use --password-file, or run in a terminal")
    return getpass.getpass(prompt)


class UsageError(Exception):
    """What was typed cannot work; the message says what to type instead (exit status 2)."""


def server_endpoint(server: str, timeout: float) -> str:
    """The Twisted endpoint string for --server HOST:PORT (HOST may be [IPv6], PORT may be left out)."""
    host, port = server, "8000"
    if server.startswith("["):
        host, bracket, rest = server[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise UsageError(f"--server {server}: expected [IPV6]:PORT, e.g. [::1]:8000")
        port = rest[1:] or port
    elif server.count(":") == 1:
        host, port = server.split(":")
    elif ":" in server:
        raise UsageError(f"--server {server}: write an IPv6 address in brackets, e.g. [::1]:8000")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--server {server}: the port is a number from 1 to 65535")
    escaped = (host or "127.0.0.1").replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")
    return f"tcp:host={escaped}:port={port}:timeout={timeout:g}"


def check_usage(args: argparse.Namespace, reactor: Any) -> None:
    """Everything that can be known wrong before connecting: raise L{UsageError} saying what to type."""
    if args.endpoint is not None and args.server is not None:
        raise UsageError("give --server or --endpoint, not both")
    if args.endpoint is not None:
        try:
            clientFromString(reactor, args.endpoint)
        except Exception as e:  # Twisted's parsers raise ValueError, KeyError, TypeError...
            raise UsageError(
                f"--endpoint {args.endpoint}: not a Twisted client endpoint ({e}); e.g. tcp:127.0.0.1:8000"
            ) from None
    else:
        args.endpoint = server_endpoint(args.server or DEFAULT_SERVER, args.timeout)
    if args.command in ("register", "login"):
        if args.username and args.user and args.username != args.user:
            raise UsageError(f"{args.command} {args.username} and --user {args.user}: give the account once")
        args.username = args.username or args.user
        if not args.username:
            raise UsageError(f"{args.command} needs the account: myservices-client framed {args.command} NAME")
        if args.command == "register":
            args.user = None  # nothing to log in to yet
        else:
            args.user = args.username
    if args.command == "call":
        if not args.name.isdigit() and args.name not in COMMANDS:
            raise UsageError(f"unknown command {args.name!r} (known: {', '.join(COMMANDS)})")
        try:
            args.call_args = json.loads(args.args)
        except ValueError as e:
            raise UsageError(f"arguments are not JSON: {e}") from None
    if getattr(args, "since", None) is not None and (args.since < 0 or len(args.rooms) != 1):
        raise UsageError("--since takes the last message id you saw (0 or more) in one ROOM: ids are per room")
