#!/usr/bin/env python3
"""A Perspective Broker client for myservices: log in, call a few methods, join a room, print its messages.

    MYSERVICES_PASSWORD=secret python3 pb_client.py --user alice lobby
    MYSERVICES_PASSWORD=secret python3 pb_client.py --user alice --say "hello" --count 1 lobby
    python3 pb_client.py --anonymous lobby        # history only; if the server sets allow_anonymous = true

It needs only Twisted. The protocol is described in docs/protocols.md ("Perspective Broker").
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.task import LoopingCall, react
from twisted.spread import pb


class Listener(pb.Referenceable):
    """Handed to join(): the server calls remote_message for every message of the room."""

    def __init__(self, count: int | None) -> None:
        self.left = count
        self.done: Deferred[None] = Deferred()

    def remote_message(self, m: dict[str, Any]) -> None:
        print(f"[{m['room']} #{m['id']}] <{m['nick']}> {m['text']}", flush=True)
        if self.left is not None:
            self.left -= 1
            if self.left <= 0 and not self.done.called:
                self.done.callback(None)

    # only called when joining with presence=True
    def remote_presence(self, p: dict[str, Any]) -> None:
        print(f"* {p['nick']} {'joined' if p['kind'] == 'join' else 'left'} {p['room']}", flush=True)

    def remote_nick(self, n: dict[str, Any]) -> None:
        print(f"* {n['old']} is now {n['new']}", flush=True)


async def main(reactor: Any, args: argparse.Namespace) -> None:
    factory = pb.PBClientFactory()
    await clientFromString(reactor, args.endpoint).connect(factory)
    try:
        root = await factory.getRootObject()
        if args.anonymous:
            avatar = await root.callRemote("loginAnonymous")
        else:
            password = os.environ.get("MYSERVICES_PASSWORD")
            if password is None:
                raise SystemExit("set MYSERVICES_PASSWORD (never put passwords on the command line)")
            avatar = await root.callRemote("login", args.user, password)
        print("logged in:", await avatar.callRemote("whoami"), flush=True)
        print("echo:", await avatar.callRemote("echo", {"hello": ["pb", 1]}), flush=True)
        if args.room is None:
            return
        if args.anonymous:
            # anonymous sessions are read-only: no join, no publish
            for m in (await avatar.callRemote("history", args.room))["messages"]:
                print(f"[{m['room']} #{m['id']}] <{m['nick']}> {m['text']}", flush=True)
            return
        listener = Listener(args.count)
        joined = await avatar.callRemote("join", args.room, listener, True)
        room = joined["object"]  # a remote reference: publish, who, history, part
        print("members:", ", ".join(joined["members"]), flush=True)
        for m in joined["history"]:
            print(f"[{m['room']} #{m['id']}] <{m['nick']}> {m['text']} (history)", flush=True)
        if args.say:
            await room.callRemote("publish", args.say)
        # the server closes connections that stay silent for idle_timeout seconds
        keepalive = LoopingCall(avatar.callRemote, "ping")
        keepalive.start(60, now=False)
        try:
            await listener.done
        finally:
            keepalive.stop()
        await room.callRemote("part")
    except pb.RemoteError as e:
        # the message starts with the error code, e.g. "LOGIN_FAILED: wrong username or password"
        raise SystemExit(f"error: {e}") from None
    finally:
        factory.disconnect()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("room", nargs="?", help="join ROOM and print its messages")
    parser.add_argument("--endpoint", default="tcp:127.0.0.1:8800", help="Twisted client endpoint (default: %(default)s)")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="account name; the password comes from $MYSERVICES_PASSWORD")
    who.add_argument("--anonymous", action="store_true", help="log in without an account (read-only)")
    parser.add_argument("--say", help="publish this text after joining")
    parser.add_argument("--count", type=int, help="exit after COUNT messages (default: run until interrupted)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    react(lambda reactor: ensureDeferred(main(reactor, arguments)))
