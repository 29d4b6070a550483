"""End to end: install the package as the README does, run twistd, talk to it, SIGTERM it.

The daemon announces readiness and its bound addresses over the systemd
notify protocol; the test listens on its own NOTIFY_SOCKET, so it needs
neither fixed ports, sleeps, nor log scraping.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from tests.support import REPO


class InstalledDaemon:
    """A virtual environment with the package installed the way README.md says."""

    _venv: Path | None = None

    @classmethod
    def venv(cls, testcase: TestCase) -> Path:
        if cls._venv is None:
            venv = Path(testcase.mktemp()).resolve() / "venv"
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
            subprocess.run(
                [str(venv / "bin" / "pip"), "install", "--quiet", "-e", str(REPO)],
                check=True, timeout=900, stdout=subprocess.DEVNULL,
            )
            cls._venv = venv
        return cls._venv


class EndToEndTests(TestCase):
    timeout = 1200

    def setUp(self) -> None:
        self.venv = InstalledDaemon.venv(self)
        self.twistd = str(self.venv / "bin" / "twistd")
        self.workdir = Path(self.mktemp()).resolve()
        self.workdir.mkdir(parents=True)

    def run_twistd(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.twistd, *args], capture_output=True, text=True, timeout=60, cwd=self.workdir, env=self.env()
        )

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MYSERVICES")}
        env.pop("NOTIFY_SOCKET", None)
        env.update(extra)
        return env

    def config(self, text: str) -> Path:
        path = self.workdir / "myservices.toml"
        path.write_text(textwrap.dedent(text))
        return path

    def start_daemon(self, config: Path) -> tuple[subprocess.Popen[bytes], socket.socket, Any, dict[str, str]]:
        """Run twistd on C{config}; return once it said READY=1, with the bound address of each service."""
        short_dir = tempfile.mkdtemp(prefix="myservices-")  # AF_UNIX paths are limited to ~100 bytes
        self.addCleanup(shutil.rmtree, short_dir, True)
        notify_path = os.path.join(short_dir, "notify.sock")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(notify.close)
        notify.bind(notify_path)
        notify.settimeout(60)
        log = open(self.workdir / "daemon.log", "a+")
        self.addCleanup(log.close)
        proc = subprocess.Popen(
            [self.twistd, "-n", "--pidfile=", "myservices", "--config", str(config)],
            cwd=self.workdir, env=self.env(NOTIFY_SOCKET=notify_path), stdout=log, stderr=subprocess.STDOUT,
        )
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        fields = dict(line.split("=", 1) for line in notify.recv(4096).decode().splitlines())
        self.assertEqual(fields.get("READY"), "1", fields)
        addresses = dict(item.split("=", 1) for item in fields["STATUS"].removeprefix("serving ").split(", "))
        return proc, notify, log, addresses

    def test_installed_twistd_lists_the_plugin_and_checks_configs(self) -> None:
        listing = self.run_twistd("--help")
        self.assertEqual(listing.returncode, 0, listing.stderr)
        self.assertIn("myservices", listing.stdout)

        help_text = self.run_twistd("myservices", "--help")
        self.assertIn("--config", help_text.stdout)
        self.assertIn("--check", help_text.stdout)

        ok = self.run_twistd("myservices", "--check", "--config", str(REPO / "config" / "myservices.toml"))
        self.assertEqual(ok.returncode, 0, ok.stderr)
        self.assertIn("echo      tcp:1234:interface=127.0.0.1", ok.stdout)

        bad = self.config('[services.echo]\nendpoint = "tcp:1234"\nmax_conections = 3\n')
        failed = self.run_twistd("myservices", "--check", "--config", str(bad))
        self.assertEqual(failed.returncode, 1)
        self.assertIn("services.echo.max_conections: unknown key", failed.stderr)

    def test_daemon_serves_echo_and_udp_then_exits_cleanly_on_sigterm(self) -> None:
        config = self.config(
            """
            [daemon]
            data_dir = "state"
            [services.echo]
            endpoint = "tcp:0:interface=127.0.0.1"
            [services.udp]
            endpoint = "udp:0:interface=127.0.0.1"
            [services.chat]
            endpoint = "tcp:0:interface=127.0.0.1"
            """
        )
        proc, notify, log, addresses = self.start_daemon(config)
        echo_port = int(addresses["echo"].rsplit(":", 1)[1])
        udp_port = int(addresses["udp"].rsplit(":", 1)[1])

        with socket.create_connection(("127.0.0.1", echo_port), timeout=10) as conn:
            conn.sendall(b"hi")
            self.assertEqual(conn.recv(10), b"hi")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(10)
            udp.sendto(b"datagram", ("127.0.0.1", udp_port))
            self.assertEqual(udp.recvfrom(100)[0], b"datagram")

        chat_port = int(addresses["chat"].rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", chat_port), timeout=10) as chat:
            lines = chat.makefile("rwb")
            self.assertTrue(lines.readline().startswith(b"WELCOME "))
            lines.write(b"/nick e2e\n/join lobby\nhello\n")
            lines.flush()
            replies = [lines.readline() for _ in range(5)]
            self.assertEqual(replies[-1], b"MSG lobby 1 e2e hello\r\n", replies)

        held = socket.create_connection(("127.0.0.1", echo_port), timeout=10)  # open during shutdown
        self.addCleanup(held.close)
        proc.send_signal(signal.SIGTERM)
        # twistd re-raises the signal after a clean shutdown, as systemd and Docker expect
        self.assertIn(proc.wait(timeout=15), (0, -signal.SIGTERM))
        self.assertEqual(held.recv(10), b"", "open connections are closed on stop")
        stopping = notify.recv(4096).decode()
        self.assertIn("STOPPING=1", stopping)

        log.seek(0)
        output = log.read()
        self.assertIn("echo listening on tcp:0:interface=127.0.0.1 (bound to 127.0.0.1:", output)
        self.assertIn("udp listening on udp:0:interface=127.0.0.1 (bound to 127.0.0.1:", output)
        self.assertIn("Server Shut Down.", output)
        self.assertNotIn("Traceback", output)
        self.assertTrue((self.workdir / "state" / "myservices.sqlite3").exists())

    def test_http_counter_keeps_counting_across_restarts(self) -> None:
        config = self.config(
            """
            [daemon]
            data_dir = "state"
            [services.http]
            endpoint = "tcp:0:interface=127.0.0.1"
            """
        )
        seen = []
        for _ in range(2):
            proc, _notify, _log, addresses = self.start_daemon(config)
            base = f"http://{addresses['http']}"
            for _ in range(2):
                with urllib.request.urlopen(base + "/", timeout=30) as response:
                    seen.append(response.read())
            with urllib.request.urlopen(base + "/readyz", timeout=30) as response:
                self.assertEqual(json.load(response)["status"], "ready")
            proc.send_signal(signal.SIGTERM)
            self.assertIn(proc.wait(timeout=15), (0, -signal.SIGTERM))
        self.assertEqual(seen, [b"I am request #%d\n" % n for n in (1, 2, 3, 4)])

    def test_port_in_use_makes_startup_fail_naming_the_service(self) -> None:
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        config = self.config(f'[services.echo]\nendpoint = "tcp:{port}:interface=127.0.0.1"\n')
        result = self.run_twistd("-n", "--pidfile=", "myservices", "--config", str(config))
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(f"services.echo: cannot listen on tcp:{port}:interface=127.0.0.1", result.stdout + result.stderr)

    def test_systemd_socket_activation(self) -> None:
        """A listening socket inherited as systemd passes it (fd 3, LISTEN_FDS, LISTEN_PID)."""
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        config = self.config('[services.echo]\nendpoint = "systemd:domain=INET:index=0"\n')
        fd = listener.fileno()
        # what systemd does: the socket at fd 3, LISTEN_PID our own pid (exec keeps it), names for each fd
        script = (
            f"import os, sys; os.dup2({fd}, 3); os.close({fd});"
            " os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='echo');"
            " os.execv(sys.argv[1], sys.argv[1:])"
        )
        log = open(self.workdir / "daemon.log", "w+")
        self.addCleanup(log.close)
        proc = subprocess.Popen(
            [sys.executable, "-c", script, self.twistd, "-n", "--pidfile=", "myservices", "--config", str(config)],
            pass_fds=[fd], cwd=self.workdir, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
        )
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        listener.close()  # only the daemon holds it now
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.settimeout(30)
            conn.sendall(b"activated")
            self.assertEqual(conn.recv(20), b"activated")
        proc.send_signal(signal.SIGTERM)
        self.assertIn(proc.wait(timeout=15), (0, -signal.SIGTERM))
        log.seek(0)
        self.assertIn(f"echo listening on systemd:domain=INET:index=0 (bound to 127.0.0.1:{port})", log.read())

