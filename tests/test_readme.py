"""README.md's "Try it" commands, run as written against the daemon README.md starts.

The daemon is the README's own run command (``twistd -n --pidfile= myservices
--config config/myservices.toml``, from the top of the checkout) with every
endpoint moved to a free port and the data in a temporary directory, through
the environment; the commands are run by ``sh`` exactly as README.md has them,
except that the documented port numbers become the bound ones (and the two
clients that rely on their default port are given it). It needs the tools
README.md names: ``nc`` (Debian's netcat-openbsd) and ``curl``.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import tomllib

from twisted.trial.unittest import SkipTest, TestCase

from myservices.endpoints import split_description
from tests.support import REPO, ci

VENV_BIN = REPO / ".venv" / "bin"
# what README.md's Try it exports before starting the daemon (the server API's key)
API_KEY_EXPORT = "export MYSERVICES_API_KEY="


def readme() -> str:
    return (REPO / "README.md").read_text()


def try_it_commands() -> list[str]:
    """The lines of the first sh block under "## Try it"."""
    section = readme().split("\n## Try it\n", 1)[1]
    block = re.search(r"```sh\n(.+?)\n```", section, re.DOTALL)
    assert block is not None, "README.md's Try it has no sh block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def documented_ports() -> dict[str, int]:
    """Service name -> its port in config/myservices.toml, the file README.md runs."""
    config = tomllib.loads((REPO / "config" / "myservices.toml").read_text())
    return {name: int(split_description(s["endpoint"])[0][1]) for name, s in config["services"].items()}


class ReadmeTryItTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        missing = [tool for tool in ("nc", "curl") if shutil.which(tool) is None]
        if not (VENV_BIN / "myservices-client").exists():
            missing.append(f"{VENV_BIN} (README.md's venv: python3 -m venv .venv && .venv/bin/pip install -e .)")
        if missing:
            message = f"README.md's examples need {', '.join(missing)} (Debian: apt-get install netcat-openbsd curl)"
            if ci():
                raise AssertionError(message)
            raise SkipTest(message)
        exported = re.search(rf"`{API_KEY_EXPORT}([^`\s]+)`", readme())
        assert exported is not None, f"README.md's Try it no longer says `{API_KEY_EXPORT}...`"
        self.api_key = exported.group(1)
        self.ports = self.start_daemon()

    def start_daemon(self) -> dict[str, int]:
        """README.md's run command on free ports; the bound port of each service, from its READY=1."""
        run = next(c for c in re.findall(r"```sh\n(.+?)\n```", readme(), re.DOTALL) if "twistd -n" in c)
        twistd = run.split("&&")[-1].split()
        short = tempfile.mkdtemp(prefix="myservices-readme-")  # AF_UNIX paths are short
        self.addCleanup(shutil.rmtree, short, True)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(notify.close)
        notify.bind(os.path.join(short, "notify"))
        notify.settimeout(60)
        env = self.env(NOTIFY_SOCKET=os.path.join(short, "notify"), MYSERVICES_DATA_DIR=short)
        for name in documented_ports():
            kind = "udp" if name == "udp" else "tcp"
            env[f"MYSERVICES__SERVICES__{name.upper()}__ENDPOINT"] = f"{kind}:0:interface=127.0.0.1"
        self.log = open(os.path.join(short, "daemon.log"), "w+")
        self.addCleanup(self.log.close)
        daemon = subprocess.Popen(twistd, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.addCleanup(self.stop, daemon)
        try:
            fields = dict(line.split("=", 1) for line in notify.recv(4096).decode().splitlines())
        except TimeoutError:
            self.fail(f"the daemon did not say READY=1: {self.daemon_log()}")
        self.assertEqual(fields.get("READY"), "1", fields)
        bound = dict(item.split("=", 1) for item in fields["STATUS"].removeprefix("serving ").split(", "))
        return {name: int(address.rsplit(":", 1)[1]) for name, address in bound.items()}

    def daemon_log(self) -> str:
        self.log.seek(0)
        return self.log.read()[-3000:]

    def stop(self, daemon: subprocess.Popen[bytes]) -> None:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSERVICES", "NOTIFY_SOCKET", "LISTEN_"))}
        env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"  # for the bare myservices-client of the prose
        env["MYSERVICES_API_KEY"] = self.api_key  # exported in both terminals, as Try it says
        env.update(extra)
        return env

    def rewrite(self, command: str) -> str:
        """The command with the documented ports replaced by the bound ones, and the clients' default given."""
        for name, port in documented_ports().items():
            command = re.sub(rf"127\.0\.0\.1([ :]){port}\b", rf"127.0.0.1\g<1>{self.ports[name]}", command)
        command = command.replace(" framed ", f" framed --server 127.0.0.1:{self.ports['framed']} ", 1)
        return command.replace("pb_client.py ", f"pb_client.py --endpoint tcp:127.0.0.1:{self.ports['pb']} ", 1)

    def sh(self, command: str) -> str:
        """Run a README line with sh from the top of the checkout; its standard output."""
        result = subprocess.run(
            ["sh", "-c", self.rewrite(command)], cwd=REPO, env=self.env(), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(result.returncode, 0, f"{command}\n{result.stderr}")
        return result.stdout

    def start(self, command: str) -> subprocess.Popen[bytes]:
        """Start a README line that runs until interrupted, as in a terminal (unbuffered pipes)."""
        proc = subprocess.Popen(
            ["sh", "-c", self.rewrite(command)], cwd=REPO, env=self.env(), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0, start_new_session=True,
        )
        self.addCleanup(lambda: proc.poll() is None and (os.killpg(proc.pid, signal.SIGKILL), proc.wait()))
        self.addCleanup(lambda: proc.stdin and proc.stdin.close())
        self.addCleanup(lambda: proc.stdout and proc.stdout.close())
        return proc

    def ctrl_c(self, proc: subprocess.Popen[bytes]) -> int:
        """SIGINT to the command's process group, as a terminal's Ctrl-C; its exit status."""
        os.killpg(proc.pid, signal.SIGINT)
        return proc.wait(30)

    def read_until(self, proc: subprocess.Popen[bytes], pattern: str, timeout: float = 60) -> str:
        """What C{proc} printed, once it matches C{pattern}; bounded, so a wrong output fails the test."""
        assert proc.stdout is not None
        seen = b""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while not re.search(pattern, seen.decode(errors="replace")):
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    self.fail(f"nothing matching {pattern!r} within {timeout}s: {seen!r}")
                data = os.read(proc.stdout.fileno(), 65536)
                if not data:
                    self.fail(f"ended before anything matching {pattern!r}: {seen!r}")
                seen += data
        return seen.decode()

    def test_every_try_it_command_works_as_written(self) -> None:
        commands = try_it_commands()
        ran = []

        def line(prefix: str) -> str:
            found = [c for c in commands if c.startswith(prefix)]
            self.assertEqual(len(found), 1, f"README.md's Try it has {len(found)} lines starting {prefix!r}")
            ran.append(found[0])
            return found[0]

        self.assertEqual(self.sh(line("printf hi | nc -q1 ")), "hi")
        self.assertEqual(self.sh(line("printf ping | nc -u -w1 ")), "ping")
        chat = self.sh(line("printf '/join lobby\\n/who' | nc -q1 "))
        self.assertRegex(chat, r"(?s)^WELCOME guest\d+ .*\nOK join lobby\nWHO lobby guest\d+\nEND who lobby\n$")
        self.assertRegex(self.sh(line("curl http://127.0.0.1:8080/ ")), r"^I am request #\d+\n$")
        self.assertIn('"status": "ready"', self.sh(line("curl http://127.0.0.1:8080/readyz")))
        self.assertIn("myservices_connections_open", self.sh(line("curl http://127.0.0.1:8080/metrics")))
        # no browser here: the page it opens is fetched instead (tests/test_webchat_browser.py drives one)
        url = line("xdg-open ").split()[1]
        self.assertIn("<html", self.sh(f"curl -fsS {url}").lower())
        self.assertEqual(self.sh(line(".venv/bin/myservices-client framed ping")), "pong\n")
        self.assertEqual(self.sh(self.register_line(commands, ran)), "registered alice\n")

        # interactive: typed lines answered until the user leaves (Ctrl-C)
        nc = self.start(line("nc 127.0.0.1 1025 "))
        assert nc.stdin is not None
        nc.stdin.write(b"/nick alice\n/join lobby\n")
        nc.stdin.flush()
        self.read_until(nc, r"OK join lobby")
        self.ctrl_c(nc)

        # PB: logs in as the account registered above, joins lobby and prints what is published there
        pb = self.start(self.pb_line(commands, ran))
        self.read_until(pb, r"members: ")
        publish = re.search(r"`(myservices-client framed publish lobby hello)`", readme())
        assert publish is not None, "README.md no longer shows `myservices-client framed publish lobby hello`"
        self.assertRegex(self.sh(publish.group(1)), r"^published lobby #\d+\n$")
        self.read_until(pb, r"\[lobby #\d+\] <guest\d+> hello\n")
        # the server API publishes to the same room: the PB client prints it too
        published = self.sh(line("curl -sS -H \"Authorization: Bearer $MYSERVICES_API_KEY\" "))
        self.assertRegex(published, r'^\{"room": "lobby", "id": \d+, .*"nick": "api", "text": "hello from a backend"')
        self.read_until(pb, r"\[lobby #\d+\] <api> hello from a backend\n")
        self.ctrl_c(pb)

        self.assertEqual(sorted(ran), sorted(commands), "a Try it line this test does not run")

    def register_line(self, commands: list[str], ran: list[str]) -> str:
        found = [c for c in commands if "myservices-client framed register alice" in c]
        self.assertEqual(len(found), 1, "README.md's Try it registers alice (the PB example logs in as alice)")
        ran.append(found[0])
        return found[0]

    def pb_line(self, commands: list[str], ran: list[str]) -> str:
        found = [c for c in commands if "docs/examples/pb_client.py --user alice lobby" in c]
        self.assertEqual(len(found), 1)
        ran.append(found[0])
        index = commands.index(found[0])
        self.assertTrue(any("register alice" in c for c in commands[:index]), "register comes before the PB example")
        return found[0]
