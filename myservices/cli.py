"""``myservices-client``: talk to a running daemon from a shell.

    myservices-client framed ping
    myservices-client framed register alice            # asks for the password
    MYSERVICES_PASSWORD=... myservices-client framed --user alice kv set colour '"blue"'
    myservices-client framed publish lobby hello world
    myservices-client framed listen lobby              # prints messages until Ctrl-C
    myservices-client framed dm alice are you there?   # a direct message to whoever has the nick alice

Passwords are read from $MYSERVICES_PASSWORD, a file (--password-file) or a
prompt; never from the command line, where other users could see them.
The framed options (--server, --user, --json, ...) may come before or after
the command. Exit status: see L{EXIT_STATUS}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any, TextIO

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.task import react

from myservices.cli_usage import (
    EXIT_CONNECTION,
    EXIT_SERVER_ERROR,
    EXIT_STATUS,
    EXIT_USAGE,
    UsageError,
    check_usage,
    make_parser,
    read_password,
)
from myservices.framed.client import ConnectionClosed, FramedClient, FramedError, connect

__all__ = ["EXIT_STATUS", "main", "run_framed"]


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
        elif name == "dm":
            print(f"[dm {data['from']} -> {data['to']}] {data['text']}", file=self.out, flush=True)
        elif name in ("closing", "error"):
            error = data.get("error") or {}
            print(f"server: {error.get('code')}: {error.get('message')}", file=sys.stderr, flush=True)
        elif name == "shutdown":
            print("server: shutting down", file=sys.stderr, flush=True)


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


async def run_framed(reactor: Any, args: argparse.Namespace, out: TextIO, password: str | None = None) -> None:
    """Connect to C{args.endpoint}, log in as C{args.user} with C{password}, run the command."""
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

    try:
        client: FramedClient = await connect(reactor, args.endpoint, on_push)
    except (ConnectError, DNSLookupError, OSError) as e:
        raise CannotConnect(str(e)) from None
    try:
        if args.user and password is not None:
            await client.call("login", username=args.user, password=password)
        await _command(reactor, client, args, output, messages, password)
    finally:
        await client.close()


class CannotConnect(Exception):
    """The connection could not be made (exit status 3)."""


async def _command(
    reactor: Any, client: FramedClient, args: argparse.Namespace, output: Output, messages: Deferred[None],
    password: str | None,
) -> None:
    c = args.command
    if c == "ping":
        output.result(await client.call("ping"), "pong")
    elif c == "register":
        result = await client.call("register", username=args.username, password=password)
        output.result(result, f"registered {result['username']}")
    elif c == "login":
        output.result(await client.call("whoami"), f"logged in as {args.user}")
    elif c == "whoami":
        result = await client.call("whoami")
        output.result(result, f"user {result['username'] or '(not logged in)'}, nick {result['nick']}")
    elif c == "publish":
        result = await client.call("hub.publish", room=args.room, text=" ".join(args.text))
        output.result(result, f"published {result['room']} #{result['id']}")
    elif c == "dm":
        if args.as_nick:
            await client.call("hub.nick", nick=args.as_nick)
        result = await client.call("hub.dm", nick=args.nick, text=" ".join(args.text))
        output.result(result, f"sent to {result['nick']}")
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
        output.result(await client.call(name, args.call_args))


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
    """The console script; exits with one of the statuses of L{EXIT_STATUS}."""
    from twisted.internet import reactor  # the console script is the one place that picks the reactor

    parser = make_parser()
    args = parser.parse_args(argv)
    password = None
    try:
        check_usage(args, reactor)
        if args.command == "register":
            password = read_password(args, f"new password for {args.username}: ")
        elif args.user:
            password = read_password(args, f"password for {args.user}: ")
    except UsageError as e:
        parser.exit(EXIT_USAGE, f"myservices-client: {e}\n")
    except (KeyboardInterrupt, EOFError):  # at the password prompt
        print(file=sys.stderr)
        raise SystemExit(128 + signal.SIGINT) from None
    react(lambda reactor: _run(reactor, args, out, password))


def _run(reactor: Any, args: argparse.Namespace, out: TextIO, password: str | None) -> Deferred[None]:
    """Run the command; Ctrl-C or SIGTERM cancel it, which closes the connection and exits 128+N quietly."""
    signals: list[int] = []

    async def run() -> None:
        try:
            await run_framed(reactor, args, out, password)
        except Exception as e:
            if signals:
                raise SystemExit(128 + signals[0]) from None
            code, message = _exit_for(e)
            print(f"myservices-client: {message}", file=sys.stderr)
            raise SystemExit(code) from None

    finished = Deferred.fromCoroutine(run())

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if signals:  # a second Ctrl-C while the connection closes: leave now
            os._exit(128 + signum)
        signals.append(signum)
        reactor.callFromThread(finished.cancel)

    def install() -> None:  # after the reactor's own handlers, which would just stop it
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, on_signal)

    reactor.callWhenRunning(install)
    return finished


def _exit_for(error: Exception) -> tuple[int, str]:
    """The exit status and the line to print for what ended the command; anything else is a bug, re-raised."""
    if isinstance(error, ConnectionClosed):
        return EXIT_CONNECTION, f"connection closed: {error.message}"
    if isinstance(error, FramedError):
        return EXIT_SERVER_ERROR, f"{error.code}: {error.message}"
    if isinstance(error, CannotConnect):
        return EXIT_CONNECTION, f"cannot connect: {error}"
    raise error


if __name__ == "__main__":
    main()
