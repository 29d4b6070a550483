"""The myservices-client console script, run as a process against a real service tree."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from myservices import cli, cli_usage
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


def start(
    port: int | None, *args: str, password: str | None = None, wait_for: bytes | None = None, server: str = "127.0.0.1"
) -> Run:
    """Run C{myservices-client framed --server SERVER:PORT ARGS} (no --server when C{port} is None)."""
    env = {k: v for k, v in os.environ.items() if k != "MYSERVICES_PASSWORD"}
    if password is not None:
        env["MYSERVICES_PASSWORD"] = password
    proto = Run(wait_for)
    argv = [str(SCRIPT), "framed", *(["--server", f"{server}:{port}"] if port is not None else []), *args]
    reactor.spawnProcess(proto, argv[0], argv, env=env)
    return proto


async def run(port: int | None, *args: str, password: str | None = None, server: str = "127.0.0.1") -> Run:
    return await start(port, *args, password=password, server=server).ended


class CliTests(TestCase):
    timeout = 60

    async def start_tree(self, extra: str = "") -> int:
        url = f"sqlite:///{os.path.abspath(self.mktemp())}.sqlite3"
        self.tree = await start_tree(
            self,
            load(self, framed_config(url, extra='[services.chat]\nendpoint = "tcp:0:interface=127.0.0.1"\n' + extra)),
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

    def usage(self, *args: str) -> tuple[int, str, str]:
        """Run the console script in this process on arguments it refuses before connecting: (status, out, err)."""
        self.patch(cli, "react", lambda *a: self.fail("the command line was accepted"))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as caught:
            cli.main(["framed", *args], out=out)
        code = caught.exception.code
        return code if isinstance(code, int) else 1, out.getvalue(), err.getvalue()

    async def test_register_takes_the_account_as_an_argument_or_as_user(self) -> None:
        port = await self.start_tree()
        for n, args in enumerate([
            ("register", "alice"), ("--user", "bob", "register"), ("register", "--user", "carol"),
        ]):
            r = await run(port, *args, password="a good password")
            self.assertEqual((r.code, r.err), (0, b""), args)
            self.assertEqual(r.out, f"registered {['alice', 'bob', 'carol'][n]}\n".encode())
        r = await run(port, "login", "bob", "--json", password="a good password")
        self.assertEqual((r.code, r.out), (0, b'{"username": "bob", "nick": "bob", "admin": false}\n'))

    def test_register_without_an_account_says_what_to_type(self) -> None:
        self.patch(os, "environ", {**os.environ, "MYSERVICES_PASSWORD": "a good password"})
        self.assertEqual(
            self.usage("register"),
            (2, "", "myservices-client: register needs the account: myservices-client framed register NAME\n"),
        )
        code, _, err = self.usage("register", "erin", "--user", "frank")
        self.assertEqual((code, err), (2, "myservices-client: register erin and --user frank: give the account once\n"))

    async def test_ctrl_c_on_listen_exits_130_without_a_message(self) -> None:
        port = await self.start_tree()
        listener = start(port, "listen", "lobby", wait_for=b"listening to lobby")
        await listener.seen
        listener.transport.signalProcess("INT")
        await listener.ended
        self.assertEqual(listener.code, 130)
        self.assertEqual(listener.err, b"listening to lobby (last id 0)\n")
        listener = start(port, "listen", "lobby", wait_for=b"listening to lobby")
        await listener.seen
        listener.transport.signalProcess("TERM")
        await listener.ended
        self.assertEqual(listener.code, 143)

    async def test_server_as_a_bracketed_ipv6_address(self) -> None:
        await self.start_tree('[services.framed6]\nkind = "framed"\nendpoint = "tcp6:0:interface=\\\\:\\\\:1"\n')
        r = await run(port_of(self.tree, "framed6"), "ping", server="[::1]")
        self.assertEqual((r.code, r.out, r.err), (0, b"pong\n", b""))

    def test_a_server_that_cannot_be_read_is_a_usage_error(self) -> None:
        for server, message in [
            ("::1:8000", "--server ::1:8000: write an IPv6 address in brackets, e.g. [::1]:8000"),
            ("[::1:8000", "--server [::1:8000: expected [IPV6]:PORT, e.g. [::1]:8000"),
            ("127.0.0.1:http", "--server 127.0.0.1:http: the port is a number from 1 to 65535"),
        ]:
            self.assertEqual(self.usage("--server", server, "ping"), (2, "", f"myservices-client: {message}\n"))
        self.assertEqual(cli_usage.server_endpoint("[::1]:8000", 5), "tcp:host=\\:\\:1:port=8000:timeout=5")
        self.assertEqual(cli_usage.server_endpoint("example.com", 5), "tcp:host=example.com:port=8000:timeout=5")

    def test_a_bad_endpoint_is_a_usage_error_in_one_line(self) -> None:
        for endpoint in ("bogus:1", "tcp:host=127.0.0.1:port=x", "tcp:"):
            code, _, err = self.usage("--endpoint", endpoint, "ping")
            self.assertEqual(code, 2, err)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertTrue(err.startswith(f"myservices-client: --endpoint {endpoint}: not a Twisted"), err)
        code, _, err = self.usage("--password-file", "/nonexistent/secret", "--user", "alice", "ping")
        self.assertEqual(
            (code, err), (2, "myservices-client: --password-file: cannot read /nonexistent/secret: No such file or directory\n")
        )

    async def test_a_bad_endpoint_is_a_usage_error_for_the_real_script_too(self) -> None:
        r = await run(None, "--endpoint", "bogus:1", "ping")
        self.assertEqual((r.code, r.out), (2, b""))
        self.assertEqual(r.err.count(b"\n"), 1, r.err)

    def test_help_lists_the_exit_statuses(self) -> None:
        self.patch(cli, "react", lambda *a: self.fail("the command line was accepted"))
        out = io.StringIO()
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit):
            cli.main(["framed", "ping", "--help"])
        text = " ".join(out.getvalue().split())
        for status in ("0 done", "1 the server answered with an error", "2 bad usage",
                       "3 the connection failed or was closed", "130: Ctrl-C", "143: SIGTERM"):
            self.assertIn(status, text)

    async def test_dm_and_listen_prints_direct_messages(self) -> None:
        port = await self.start_tree()
        listener = start(port, "listen", "lobby", "--nick", "bob", "--count", "1", wait_for=b"listening to lobby")
        await listener.seen
        r = await run(port, "dm", "--nick", "carol", "BOB", "psst", "bob")
        self.assertEqual((r.code, r.out), (0, b"sent to BOB\n"))
        await run(port, "publish", "lobby", "the end")
        await listener.ended
        self.assertEqual(listener.out.decode().splitlines()[0], "[dm carol -> BOB] psst bob")
        r = await run(port, "dm", "nobody", "hello?")
        self.assertEqual(r.code, 1)
        self.assertIn(b'NICK_OFFLINE: no user "nobody" is connected', r.err)
