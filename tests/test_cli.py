"""The myservices-client console script, run as a process against a real service tree."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.support import chat_client, free_port, load, port_of, start_tree
from tests.test_framed import framed_config

SCRIPT = Path(sys.executable).parent / "myservices-client"


class Run(ProcessProtocol):
    """A client process: its output, its exit code, and a Deferred for a line on stderr."""

    def __init__(self, wait_for: bytes | None = None) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[Run] = Deferred()
        self.seen: Deferred[None] = Deferred()
        self._wait_for = wait_for
        self.code: int | None = None

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data
        if self._wait_for and self._wait_for in self.err and not self.seen.called:
            self.seen.callback(None)

    def processEnded(self, reason: Failure) -> None:
        self.code = reason.value.exitCode
        if self._wait_for and not self.seen.called:
            self.seen.errback(RuntimeError(f"ended before {self._wait_for!r}: {self.err!r}"))
        self.ended.callback(self)


def start(port: int, *args: str, password: str | None = None, wait_for: bytes | None = None) -> Run:
    env = {k: v for k, v in os.environ.items() if k != "MYSERVICES_PASSWORD"}
    if password is not None:
        env["MYSERVICES_PASSWORD"] = password
    proto = Run(wait_for)
    argv = [str(SCRIPT), "framed", "--server", f"127.0.0.1:{port}", *args]
    reactor.spawnProcess(proto, argv[0], argv, env=env)
    return proto


async def run(port: int, *args: str, password: str | None = None) -> Run:
    return await start(port, *args, password=password).ended


class CliTests(TestCase):
    timeout = 60
    async def start_tree(self) -> int:
        url = f"sqlite:///{os.path.abspath(self.mktemp())}.sqlite3"
        self.tree = await start_tree(
            self, load(self, framed_config(url, extra='[services.chat]\nendpoint = "tcp:0:interface=127.0.0.1"'))
        )
        return port_of(self.tree, "framed")

    async def test_register_login_and_key_value(self) -> None:
        port = await self.start_tree()
        r = await run(port, "register", "alice", password="a good password")
        self.assertEqual((r.code, r.out), (0, b"registered alice\n"))
        r = await run(port, "register", "alice", password="a good password")
        self.assertEqual(r.code, 1)
        self.assertIn(b"USERNAME_TAKEN", r.err)
        r = await run(port, "--user", "alice", "login", password="not the password")
        self.assertEqual(r.code, 1)
        self.assertIn(b"LOGIN_FAILED: wrong username or password", r.err)

        r = await run(port, "--user", "alice", "kv", "set", "colour", "blue", password="a good password")
        self.assertEqual((r.code, r.out), (0, b"created\n"))
        r = await run(port, "--user", "alice", "kv", "set", "scores", "[1, 2]", password="a good password")
        self.assertEqual(r.out, b"created\n")
        r = await run(port, "--user", "alice", "--json", "kv", "get", "scores", password="a good password")
        self.assertEqual(r.out, b'{"key": "scores", "value": [1, 2]}\n')
        r = await run(port, "--user", "alice", "kv", "list", password="a good password")
        self.assertEqual(r.out, b"colour\nscores\n")
        r = await run(port, "kv", "list")
        self.assertEqual(r.code, 1)
        self.assertIn(b"UNAUTHENTICATED", r.err)

    async def test_publish_and_listen_across_front_ends(self) -> None:
        port = await self.start_tree()
        listener = start(port, "listen", "lobby", "--count", "2", wait_for=b"listening to lobby")
        await listener.seen
        r = await run(port, "publish", "lobby", "hello", "from", "the", "cli")
        self.assertEqual((r.code, r.out), (0, b"published lobby #1\n"))
        bob = await chat_client(self, port_of(self.tree, "chat"), "bob")
        await bob.command("/join lobby")
        await bob.command("/msg lobby hi from nc")
        await listener.ended
        self.assertEqual(listener.code, 0)
        lines = listener.out.decode().splitlines()
        self.assertEqual(len(lines), 2)
        self.assertRegex(lines[0], r"^\[lobby #1\] guest\d+: hello from the cli$")
        self.assertEqual(lines[1], "[lobby #2] bob: hi from nc")

    async def test_listen_since_prints_what_was_missed_first(self) -> None:
        port = await self.start_tree()
        for i in range(3):
            await run(port, "publish", "lobby", f"m{i + 1}")
        listener = start(port, "listen", "lobby", "--since", "1", "--count", "1", wait_for=b"listening to lobby")
        await listener.seen
        self.assertIn(b"listening to lobby (last id 3)", listener.err)
        await run(port, "publish", "lobby", "m4")
        await listener.ended
        self.assertEqual(listener.code, 0)
        lines = listener.out.decode().splitlines()
        self.assertEqual([(line.split(" ")[1], line.rsplit(": ", 1)[1]) for line in lines],
                         [("#2]", "m2"), ("#3]", "m3"), ("#4]", "m4")])  # the two missed, then the live one
        self.assertNotIn(b"gap", listener.err)
        # ids are per room: one room only, and an id is never negative
        for bad in (["lobby", "news", "--since", "3"], ["lobby", "--since", "-1"]):
            r = await run(port, "listen", *bad)
            self.assertEqual(r.code, 2)
            self.assertIn(b"--since takes the last message id you saw", r.err)

    async def test_connection_refused_is_exit_status_3(self) -> None:
        r = await run(free_port(), "ping")
        self.assertEqual(r.code, 3)
        self.assertIn(b"cannot connect", r.err)
