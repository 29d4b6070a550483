"""``myservices-client``: talk to a running daemon from a shell.

    myservices-client framed ping
    myservices-client framed register alice            # asks for the password
    MYSERVICES_PASSWORD=... myservices-client framed --user alice kv set colour '"blue"'
    myservices-client framed publish lobby hello world
    myservices-client framed listen lobby              # prints messages until Ctrl-C

Passwords are read from $MYSERVICES_PASSWORD, a file (--password-file) or a
prompt; never from the command line, where other users could see them.
Exit status: 0 done, 1 the server answered with an error, 2 bad usage,
3 the connection failed or closed.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError
from twisted.internet.task import react

from myservices.framed.catalog import COMMANDS
from myservices.framed.client import ConnectionClosed, FramedClient, FramedError, connect

PASSWORD_ENV = "MYSERVICES_PASSWORD"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="myservices-client", description="A client for the myservices daemon.")
    protocols = parser.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    framed = protocols.add_parser("framed", help="the framed JSON service (default 127.0.0.1:8000)")
    framed.add_argument("--server", default="127.0.0.1:8000", metavar="HOST:PORT", help="default: %(default)s")
    framed.add_argument(
        "--endpoint", metavar="STRING", help='a Twisted client endpoint instead of --server, e.g. "tls:example.com:8000"'
    )
    framed.add_argument("--user", metavar="NAME", help="log in as NAME first (password: see --password-file)")
    framed.add_argument(
        "--password-file", metavar="PATH", help=f"read the password from PATH (else ${PASSWORD_ENV}, else a prompt)"
    )
    framed.add_argument("--json", action="store_true", help="print results and pushes as JSON, one per line")
    framed.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="connect timeout")
    commands = framed.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("ping", help="check that the server answers")
    register = commands.add_parser("register", help="create an account (asks for its password)")
    register.add_argument("username")
    commands.add_parser("login", help="check --user's password")
    commands.add_parser("whoami", help="the account and nick of this connection")
    publish = commands.add_parser("publish", help="publish TEXT to ROOM (no need to join)")
    publish.add_argument("room")
    publish.add_argument("text", nargs="+")
    listen = commands.add_parser("listen", help="print what is published to the rooms until interrupted")
    listen.add_argument("rooms", nargs="+", metavar="ROOM")
    listen.add_argument("--join", action="store_true", help="join as a member (others see you) instead of subscribing")
    listen.add_argument("--nick", help="the nick to use (with --join)")
    listen.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    listen.add_argument("--since", type=int, metavar="ID",
                        help="first print what was published after message ID (the last one you saw; one ROOM only)")
    listen.add_argument("--ping-interval", type=float, default=60.0, metavar="SECONDS",
                        help="keep the connection open with a ping this often (default: %(default)s)")
    history = commands.add_parser("history", help="recent messages of ROOM")
    history.add_argument("room")
    history.add_argument("-n", "--limit", type=int)
    who = commands.add_parser("who", help="members of ROOM")
    who.add_argument("room")
    commands.add_parser("rooms", help="rooms in use")
    counter = commands.add_parser("counter", help="take the next number of the request counter")
    counter.add_argument("--get", action="store_true", help="read it without taking a number")
    kv = commands.add_parser("kv", help="the key-value store of --user's account")
    kv_commands = kv.add_subparsers(dest="kv_command", required=True, metavar="ACTION")
    kv_commands.add_parser("get", help="print the value of KEY").add_argument("key")
    kv_set = kv_commands.add_parser("set", help="store VALUE (JSON; anything else is taken as a string) under KEY")
    kv_set.add_argument("key")
    kv_set.add_argument("value")
    kv_commands.add_parser("delete", help="remove KEY").add_argument("key")
    kv_list = kv_commands.add_parser("list", help="keys starting with PREFIX")
    kv_list.add_argument("prefix", nargs="?", default="")
    call = commands.add_parser("call", help="any command by name or id, with JSON arguments")
    call.add_argument("name", metavar="COMMAND", help=f"e.g. {', '.join(list(COMMANDS)[:4])}, ... or a number")
    call.add_argument("args", nargs="?", default="{}", metavar="JSON", help="arguments object (default: {})")
    return parser


class Output:
    """Prints results as text or JSON lines."""

    def __init__(self, as_json: bool, out: TextIO) -> None:
        self.as_json = as_json
        self.out = out
        self.listening = False  # room events are printed only by listen

    def event(self, name: str, data: dict[str, Any]) -> None:
        """A push from the server."""
        if self.listening or name in ("closing", "error", "shutdown"):
            self.push(name, data)

    def result(self, value: Any, text: str | None = None) -> None:
        if self.as_json or text is None:
            print(json.dumps(value, ensure_ascii=False), file=self.out, flush=True)
        else:
            print(text, file=self.out, flush=True)

    def push(self, name: str, data: dict[str, Any]) -> None:
        if self.as_json:
            print(json.dumps({"push": name, "data": data}, ensure_ascii=False), file=self.out, flush=True)
        elif name == "message":
            print(f"[{data['room']} #{data['id']}] {data['nick']}: {data['text']}", file=self.out, flush=True)
        elif name == "presence":
            print(f"* {data['nick']} {'joined' if data['kind'] == 'join' else 'left'} {data['room']}", file=self.out, flush=True)
        elif name == "nick":
            print(f"* {data['old']} is now {data['new']}", file=self.out, flush=True)
        elif name in ("closing", "error"):
            error = data.get("error") or {}
            print(f"server: {error.get('code')}: {error.get('message')}", file=sys.stderr, flush=True)
        elif name == "shutdown":
            print("server: shutting down", file=sys.stderr, flush=True)


def read_password(args: argparse.Namespace, prompt: str) -> str:
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as f:
            return f.read().rstrip("\r\n")
    if PASSWORD_ENV in os.environ:
        return os.environ[PASSWORD_ENV]
    if not sys.stdin.isatty():
        raise SystemExit(f"myservices-client: no password: set ${PASSWORD_ENV}, use --password-file, or run in a terminal")
    return getpass.getpass(prompt)


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


async def run_framed(reactor: Any, args: argparse.Namespace, out: TextIO) -> None:
    output = Output(args.json, out)
    messages: Deferred[None] = Deferred()
    seen = 0

    def on_push(name: str, data: dict[str, Any]) -> None:
        nonlocal seen
        output.event(name, data)
        if name == "message":
            seen += 1
            if args.command == "listen" and args.count is not None and seen >= args.count and not messages.called:
                messages.callback(None)

    endpoint = args.endpoint
    if endpoint is None:
        host, _, port = args.server.rpartition(":")
        endpoint = f"tcp:host={host.strip('[]') or '127.0.0.1'}:port={port}:timeout={args.timeout:g}"
    client: FramedClient = await connect(reactor, endpoint, on_push)
    try:
        if args.user:
            password = read_password(args, f"password for {args.user}: ")
            await client.call("login", username=args.user, password=password)
        await _command(reactor, client, args, output, messages)
    finally:
        await client.close()


async def _command(
    reactor: Any, client: FramedClient, args: argparse.Namespace, output: Output, messages: Deferred[None]
) -> None:
    c = args.command
    if c == "ping":
        output.result(await client.call("ping"), "pong")
    elif c == "register":
        password = read_password(args, f"new password for {args.username}: ")
        result = await client.call("register", username=args.username, password=password)
        output.result(result, f"registered {result['username']}")
    elif c == "login":
        if not args.user:
            raise SystemExit("myservices-client: login needs --user")
        output.result(await client.call("whoami"), f"logged in as {args.user}")
    elif c == "whoami":
        result = await client.call("whoami")
        output.result(result, f"user {result['username'] or '(not logged in)'}, nick {result['nick']}")
    elif c == "publish":
        result = await client.call("hub.publish", room=args.room, text=" ".join(args.text))
        output.result(result, f"published {result['room']} #{result['id']}")
    elif c == "listen":
        if args.nick:
            await client.call("hub.nick", nick=args.nick)
        output.listening = True
        since = {} if args.since is None else {"since": args.since}
        last_ids = []
        for room in args.rooms:
            joined = await client.call("hub.join" if args.join else "hub.subscribe", room=room, **since)
            for m in joined["history"]:
                output.push("message", m)
            if not joined["recovered"]:
                first = joined["history"][0]["id"] if joined["history"] else joined["last_id"] + 1
                print(f"gap: {joined['room']}: messages after #{args.since} and before #{first} are no longer kept",
                      file=sys.stderr, flush=True)
            last_ids.append(f"{joined['room']} (last id {joined['last_id']})")
        client.keepalive(args.ping_interval, reactor)
        print(f"listening to {', '.join(last_ids)}", file=sys.stderr, flush=True)
        client.closed.addCallback(lambda _: _closed(client, messages))
        await messages
    elif c == "history":
        result = await client.call("hub.history", room=args.room, **({"limit": args.limit} if args.limit is not None else {}))
        if args.json:
            output.result(result)
        else:
            for m in result["messages"]:
                output.push("message", m)
    elif c == "who":
        result = await client.call("hub.who", room=args.room)
        output.result(result, "\n".join(result["members"]))
    elif c == "rooms":
        result = await client.call("hub.rooms")
        output.result(result, "\n".join(f"{r['name']} {r['members']} {r['subscribers']}" for r in result["rooms"]))
    elif c == "counter":
        result = await client.call("counter.get" if args.get else "counter.increment")
        output.result(result, str(result["value"]))
    elif c == "kv":
        await _kv(client, args, output)
    elif c == "call":
        name: str | int = int(args.name) if args.name.isdigit() else args.name
        if isinstance(name, str) and name not in COMMANDS:
            raise SystemExit(f"myservices-client: unknown command {name!r} (known: {', '.join(COMMANDS)})")
        try:
            call_args = json.loads(args.args)
        except ValueError as e:
            raise SystemExit(f"myservices-client: arguments are not JSON: {e}") from None
        output.result(await client.call(name, call_args))


async def _kv(client: FramedClient, args: argparse.Namespace, output: Output) -> None:
    k = args.kv_command
    if k == "get":
        result = await client.call("kv.get", key=args.key)
        output.result(result, json.dumps(result["value"], ensure_ascii=False))
    elif k == "set":
        result = await client.call("kv.set", key=args.key, value=_json_or_text(args.value))
        output.result(result, "created" if result["created"] else "updated")
    elif k == "delete":
        result = await client.call("kv.delete", key=args.key)
        output.result(result, "deleted" if result["deleted"] else "no such key")
    elif k == "list":
        result = await client.call("kv.list", prefix=args.prefix)
        output.result(result, "\n".join(result["keys"]))


def _closed(client: FramedClient, done: Deferred[None]) -> None:
    if not done.called:
        error = client.closing_error or {}
        done.errback(
            ConnectionClosed(error.get("code", "CLOSED"), error.get("message", "the server closed the connection"))
        )


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> None:
    """The console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "since", None) is not None and (args.since < 0 or len(args.rooms) != 1):
        parser.error("--since takes the last message id you saw (0 or more) in one ROOM: ids are per room")

    async def run(reactor: Any) -> None:
        try:
            await run_framed(reactor, args, out)
        except ConnectionClosed as e:
            print(f"myservices-client: connection closed: {e.message}", file=sys.stderr)
            raise SystemExit(3) from None
        except FramedError as e:
            print(f"myservices-client: {e.code}: {e.message}", file=sys.stderr)
            raise SystemExit(1) from None
        except ConnectError as e:
            print(f"myservices-client: cannot connect: {e}", file=sys.stderr)
            raise SystemExit(3) from None

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
