"""What an operator sees when the daemon cannot start, or --check says it would not: one clear line each.

Runs the real ``twistd myservices`` of this virtual environment as a process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import TestCase

from tests.support import write_config

TWISTD = Path(sys.executable).parent / "twistd"

HEAD = """
[daemon]
data_dir = "data"
[database]
url = "sqlite:///startup.sqlite3"
"""


class StartupFailureTests(TestCase):
    timeout = 120

    def twistd(self, config_text: str, *args: str, **environ: str) -> subprocess.CompletedProcess[str]:
        """Run C{twistd ARGS myservices --config FILE}, or C{twistd myservices --check ...} for ARGS --check."""
        config = write_config(self, HEAD + config_text).resolve()
        plugin = ["--check"] if args == ("--check",) else []
        args = () if plugin else args
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSERVICES", "LISTEN_", "NOTIFY_SOCKET"))}
        env.update(environ)
        return subprocess.run(
            [str(TWISTD), *args, "myservices", *plugin, "--config", str(config)],
            capture_output=True, text=True, timeout=90, cwd=config.parent, env=env,
        )

    def assert_one_line_and_no_traceback(self, result: subprocess.CompletedProcess[str], message: str) -> None:
        output = result.stdout + result.stderr
        self.assertNotEqual(result.returncode, 0, output)
        self.assertNotIn("Traceback", output)
        lines = [line for line in output.splitlines() if message in line]
        self.assertEqual(len(lines), 1, output)
        # nothing else went wrong: no other error or critical line
        others = [line for line in output.splitlines() if ("#critical]" in line or "#error]" in line) and message not in line]
        self.assertEqual(others, [], output)

    def test_port_in_use_is_one_line_without_a_traceback(self) -> None:
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        result = self.twistd(f'[services.echo]\nendpoint = "tcp:{port}:interface=127.0.0.1"\n', "-n", "--pidfile=")
        self.assert_one_line_and_no_traceback(
            result, f"services.echo: cannot listen on tcp:{port}:interface=127.0.0.1: "
        )
        self.assertIn("Address already in use", result.stdout)

    def test_missing_inherited_socket_is_one_line_without_a_traceback(self) -> None:
        result = self.twistd('[services.echo]\nendpoint = "systemd:domain=INET:index=0"\n', "-n", "--pidfile=")
        self.assert_one_line_and_no_traceback(
            result, "services.echo: cannot listen on systemd:domain=INET:index=0: no inherited socket index=0 "
            "(LISTEN_FDS is not set); is a systemd socket unit passing it?"
        )

    def test_missing_inherited_socket_under_a_supervisor_too(self) -> None:
        result = self.twistd(
            '[services.echo]\nendpoint = "systemd:domain=INET:name=web"\n', "-n", "--pidfile=",
            MYSERVICES__DAEMON__WORKERS="2",
        )
        self.assert_one_line_and_no_traceback(result, "services.echo: cannot listen on systemd:domain=INET:name=web: ")

    def test_check_refuses_a_unix_socket_in_a_missing_directory(self) -> None:
        missing = Path(self.mktemp()).resolve() / "absent"
        result = self.twistd(f'[services.echo]\nendpoint = "unix:{missing}/echo.sock"\n', "--check")
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertIn(
            f"services.echo.endpoint: cannot listen on unix:{missing}/echo.sock: the directory {missing} does not exist",
            result.stderr,
        )
        self.assertNotIn("configuration is valid", result.stdout)

    def test_check_refuses_an_interface_the_host_does_not_have(self) -> None:
        tcp, udp = absent_addresses(2)
        result = self.twistd(
            f'[services.echo]\nendpoint = "tcp:1234:interface={tcp}"\n'
            f'[services.udp]\nendpoint = "udp:10004:interface={udp}"\n'
            '[services.chat]\nendpoint = "tcp:1025:interface=127.0.0.1"\n',
            "--check",
        )
        self.assertEqual(result.returncode, 1, result.stdout)
        problems = [line.split(": ", 1)[1] for line in result.stderr.splitlines()]
        self.assertEqual(problems, [
            f"services.echo.endpoint: cannot listen on tcp:1234:interface={tcp}: "
            f"interface {tcp}: this host has no such address",
            f"services.udp.endpoint: cannot listen on udp:10004:interface={udp}: "
            f"interface {udp}: this host has no such address",
            "cannot listen as configured on this host (2 problem(s))",
        ])

    def test_check_accepts_the_interfaces_the_host_has_without_binding_their_ports(self) -> None:
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        directory = Path(self.mktemp()).resolve()
        directory.mkdir()
        # a port in use is found only by binding it, which --check does not do
        result = self.twistd(
            f'[services.echo]\nendpoint = "tcp:{port}:interface=127.0.0.1"\n'
            f'[services.chat]\nendpoint = "unix:{directory}/chat.sock"\n',
            "--check",
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("configuration is valid", result.stdout)
        self.assertFalse((directory / "chat.sock").exists())

    def test_an_environment_override_with_a_typo_is_reported_as_the_variable(self) -> None:
        result = self.twistd(
            '[services.echo]\nendpoint = "tcp:1234:interface=127.0.0.1"\n', "--check",
            MYSERVICES__SERVICES__ECHO__MAX_CONECTIONS="10",
        )
        self.assertEqual(result.returncode, 1, result.stderr)
        first = result.stderr.splitlines()[0]
        self.assertEqual(
            first,
            "environment variable MYSERVICES__SERVICES__ECHO__MAX_CONECTIONS: no such key "
            "services.echo.max_conections (did you mean MYSERVICES__SERVICES__ECHO__MAX_CONNECTIONS?)",
        )


def absent_addresses(count: int) -> list[str]:
    """Documentation addresses (RFC 5737) this host does not have: some machines do use them."""
    candidates = [f"{net}.{host}" for net in ("198.51.100", "203.0.113", "192.0.2") for host in (7, 77, 177)]
    absent = []
    for address in candidates:
        with socket.socket() as probe:
            try:
                probe.bind((address, 0))
            except OSError:
                absent.append(address)
    assert len(absent) >= count, f"this host has all of {candidates}"
    return absent[:count]
