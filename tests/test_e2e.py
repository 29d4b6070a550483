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
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from twisted.trial.unittest import TestCase

from tests.support import REPO

pytestmark = pytest.mark.e2e


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


class DaemonTestCase(TestCase):
    """Runs the installed twistd as a separate process."""

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



class EndToEndTests(DaemonTestCase):
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



def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _read_all_until_closed(socks: list[socket.socket], websockets: set[socket.socket], timeout: float) -> dict[socket.socket, bytes]:
    """Read every socket at once until the server closes it, answering WebSocket close frames as a client
    does; return what each received."""
    import selectors

    received = {sock: b"" for sock in socks}
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while selector.get_map():
            ready = selector.select(max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"{len(selector.get_map())} connections still open after {timeout} seconds")
            for key, _ in ready:
                sock = key.fileobj
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    # autobahn aborts the TCP connection once the closing handshake is done (no TIME_WAIT
                    # on the server); anything else that resets shows up in what the caller checks
                    chunk, received[sock] = b"", received[sock] + b"<RESET>"
                if chunk:
                    received[sock] += chunk
                    if sock in websockets and _ws_close_code(received[sock]) is not None:
                        websockets.discard(sock)
                        sock.sendall(b"\x88\x82" + b"\x00" * 4 + b"\x03\xe9")  # masked close 1001, zero mask
                else:
                    selector.unregister(sock)
    return received


def _framed(sock: socket.socket, command: str, request_id: int, **args: Any) -> dict[str, Any]:
    """One framed JSON request and its reply (pushes before it are skipped)."""
    from myservices.framed.catalog import COMMANDS
    from myservices.framed.wire import FrameDecoder, encode_json

    sock.sendall(encode_json(COMMANDS[command], {"id": request_id, "args": args}))
    decoder = FrameDecoder(1 << 20)
    while True:
        while (frame := decoder.next_frame()) is None:
            decoder.feed(sock.recv(65536))
        body = json.loads(frame.body)
        if body.get("id") == request_id:
            return body


def _ws_open(port: int) -> socket.socket:
    from base64 import b64encode

    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    key = b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _ws_close_code(data: bytes) -> int | None:
    """The status code of the first close frame the server sent (server frames are unmasked)."""
    i = 0
    while i + 2 <= len(data):
        opcode, length = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if length == 126:
            length, i = int.from_bytes(data[i:i + 2], "big"), i + 2
        elif length == 127:
            length, i = int.from_bytes(data[i:i + 8], "big"), i + 8
        if opcode == 0x8:
            return int.from_bytes(data[i:i + 2], "big")
        i += length
    return None


ALL_SERVICES = """
    [daemon]
    data_dir = "state"
    shutdown_timeout = {drain}
    {daemon}
    [database]
    url = "{url}"
    [accounts]
    scrypt_cost = 10
    [services.echo]
    endpoint = "tcp:0:interface=127.0.0.1"
    [services.chat]
    endpoint = "tcp:0:interface=127.0.0.1"
    max_line_length = {line}
    [services.websocket]
    endpoint = "tcp:0:interface=127.0.0.1"
    [services.framed]
    endpoint = "tcp:0:interface=127.0.0.1"
    [services.pb]
    endpoint = "tcp:0:interface=127.0.0.1"
    [services.http]
    endpoint = "tcp:0:interface=127.0.0.1"
    [services.udp]
    endpoint = "udp:0:interface=127.0.0.1"
"""


class OperationsEndToEndTests(DaemonTestCase):
    """SIGTERM drain, SIGHUP reload and JSON logs of a real twistd process."""

    def all_services(self, drain: float = 5.0, line: int = 4096, daemon: str = "",
                     url: str = "sqlite:///myservices.sqlite3") -> Path:
        return self.config(ALL_SERVICES.format(drain=drain, line=line, daemon=daemon, url=url))

    def test_sigterm_drains_a_hundred_clients_of_every_protocol(self) -> None:
        drain = 5.0
        config = self.all_services(drain)
        proc, notify, log, addresses = self.start_daemon(config)
        ports = {name: _port(address) for name, address in addresses.items()}

        # acknowledged work that must survive the restart: a chat message and a stored value
        chatter = socket.create_connection(("127.0.0.1", ports["chat"]), timeout=30)
        self.addCleanup(chatter.close)
        lines = chatter.makefile("rwb")
        self.assertTrue(lines.readline().startswith(b"WELCOME"))
        lines.write(b"/nick keeper\n/join lobby\nkeep me\n")
        lines.flush()
        while not (line := lines.readline()).startswith(b"MSG lobby 1 keeper keep me"):
            self.assertTrue(line, "closed before the message was acknowledged")
        saver = socket.create_connection(("127.0.0.1", ports["framed"]), timeout=30)
        self.addCleanup(saver.close)
        for i, (command, args) in enumerate([
            ("register", {"username": "kim", "password": "kim's password"}),
            ("login", {"username": "kim", "password": "kim's password"}),
            ("kv.set", {"key": "saved", "value": [1, 2, 3]}),
        ], 1):
            reply = _framed(saver, command, i, **args)
            self.assertTrue(reply.get("ok"), reply)

        clients: dict[str, list[socket.socket]] = {"echo": [], "chat": [], "websocket": [], "framed": [], "pb": []}
        for _ in range(20):
            for name in ("echo", "chat", "framed", "pb"):
                sock = socket.create_connection(("127.0.0.1", ports[name]), timeout=30)
                self.addCleanup(sock.close)
                clients[name].append(sock)
            clients["websocket"].append(_ws_open(ports["websocket"]))
            self.addCleanup(clients["websocket"][-1].close)
        for sock in clients["chat"]:
            self.assertTrue(sock.recv(100).startswith(b"WELCOME"))
        for sock in clients["pb"]:
            self.assertTrue(sock.recv(100))  # the broker's dialect offer
        self.assertEqual(sum(len(c) for c in clients.values()), 100)

        from myservices.framed.catalog import PUSHES

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        every = [sock for socks in clients.values() for sock in socks]
        received = _read_all_until_closed(every, set(clients["websocket"]), timeout=drain + 10)
        for sock in clients["chat"]:
            self.assertEqual(received[sock], b"BYE server shutting down\r\n")
        for sock in clients["websocket"]:
            self.assertEqual(_ws_close_code(received[sock]), 1001)
        for sock in clients["framed"]:
            data = received[sock]
            self.assertEqual(int.from_bytes(data[8:12], "big"), PUSHES["shutdown"], data)
        for name in ("pb", "echo"):
            for sock in clients[name]:
                self.assertEqual(received[sock], b"")
        self.assertIn(proc.wait(timeout=drain + 10), (0, -signal.SIGTERM))
        self.assertLess(time.monotonic() - started, drain)

        # nothing acknowledged was lost
        proc, notify, log, addresses = self.start_daemon(config)
        with socket.create_connection(("127.0.0.1", _port(addresses["chat"])), timeout=30) as chat:
            lines = chat.makefile("rwb")
            lines.readline()
            lines.write(b"/history lobby\n")
            lines.flush()
            history = []
            while not (line := lines.readline()).startswith((b"END", b"ERR")):
                history.append(line)
            self.assertIn(b"keep me", b"".join(history))
        with socket.create_connection(("127.0.0.1", _port(addresses["framed"])), timeout=30) as framed:
            _framed(framed, "login", 1, username="kim", password="kim's password")
            self.assertEqual(_framed(framed, "kv.get", 2, key="saved")["result"]["value"], [1, 2, 3])
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)

    def test_sighup_reloads_a_limit_without_dropping_connections(self) -> None:
        config = self.all_services(line=4096, daemon='log_format = "json"',
                                   url="mysql://app:hunter2-secret@127.0.0.1:1/nowhere")
        proc, notify, log, addresses = self.start_daemon(config)
        # READY=1 came only once every stream service accepts connections
        for name in ("echo", "chat", "websocket", "framed", "pb", "http"):
            socket.create_connection(("127.0.0.1", _port(addresses[name])), timeout=5).close()
        chat = socket.create_connection(("127.0.0.1", _port(addresses["chat"])), timeout=30)
        self.addCleanup(chat.close)
        lines = chat.makefile("rwb")
        self.assertTrue(lines.readline().startswith(b"WELCOME"))
        nick = b"x" * 100  # too long for a nick, not for a line

        def nick_reply() -> bytes:
            lines.write(b"/nick " + nick + b"\n")
            lines.flush()
            return lines.readline()

        self.assertTrue(nick_reply().startswith(b"ERR NICK_INVALID"))
        config.write_text(config.read_text().replace("max_line_length = 4096", "max_line_length = 64"))
        proc.send_signal(signal.SIGHUP)
        status = notify.recv(4096).decode()
        self.assertTrue(status.startswith("STATUS=reloaded; serving "), status)
        self.assertTrue(nick_reply().startswith(b"ERR LINE_TOO_LONG"))  # the same connection, the new limit
        proc.send_signal(signal.SIGTERM)
        self.assertIn(proc.wait(timeout=15), (0, -signal.SIGTERM))

        # the log: one JSON object per line, the reload in it, the database password nowhere
        log.seek(0)
        output = log.read()
        self.assertNotIn("hunter2", output)
        events = [json.loads(line) for line in output.splitlines() if line.strip()]
        self.assertTrue(events)
        applied = [e for e in events if e.get("log_format") == "reload: {key} = {value}"]
        self.assertEqual([(e["key"], e["value"]) for e in applied], [("services.chat.max_line_length", "64")])
        self.assertTrue(any(e["namespace"].startswith("myservices.db") for e in events))
        for e in events:  # what log shippers need: a message, a level by name, an ISO-8601 time
            self.assertEqual(sorted(e.keys() & {"time", "level", "message"}), ["level", "message", "time"], e)
            self.assertRegex(e["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


CRASH_CONFIG = """
    [daemon]
    data_dir = "state"
    [database]
    url = "{url}"
    [hub]
    history_size = 200
    lease_timeout = 3
    publish_rate = 100000.0
    publish_burst = 100000
    [services.chat]
    endpoint = "tcp:0:interface=127.0.0.1"
    [services.framed]
    endpoint = "tcp:0:interface=127.0.0.1"
"""


class CrashEndToEndTests(DaemonTestCase):
    """kill -9 of a real twistd: every acknowledged chat message is there after the restart, no id repeats."""

    def database_url(self) -> str:
        return "sqlite:///myservices.sqlite3"

    def test_kill_9_loses_no_acknowledged_message_and_repeats_no_id(self) -> None:
        config = self.config(CRASH_CONFIG.format(url=self.database_url()))
        proc, _notify, _log, addresses = self.start_daemon(config)
        chat = socket.create_connection(("127.0.0.1", _port(addresses["chat"])), timeout=30)
        self.addCleanup(chat.close)
        lines = chat.makefile("rwb")
        self.assertTrue(lines.readline().startswith(b"WELCOME"))
        framed = socket.create_connection(("127.0.0.1", _port(addresses["framed"])), timeout=30)
        self.addCleanup(framed.close)
        # 60 messages, half through each front end, each acknowledged before the next is sent
        lines.write(b"/nick keeper\n/join lobby\n")
        lines.flush()
        acknowledged = []
        for i in range(60):
            if i % 2:
                reply = _framed(framed, "hub.publish", i + 1, room="lobby", text=f"m{i}")
                acknowledged.append((reply["result"]["id"], f"m{i}"))
                continue
            lines.write(f"/msg lobby m{i}\n".encode())
            lines.flush()
            while not (line := lines.readline()).startswith((b"OK msg", b"ERR")):
                self.assertTrue(line, "closed before the message was acknowledged")
            self.assertTrue(line.startswith(b"OK msg lobby "), line)
            acknowledged.append((int(line.split()[-1]), f"m{i}"))
        proc.kill()  # SIGKILL: no drain, no flush
        proc.wait(timeout=30)
        self.assertEqual([i for i, _ in acknowledged], list(range(1, 61)))

        # the restart finds the killed process's hub lease: its first hub request waits (at most
        # lease_timeout) for that lease to expire, and is served, not refused
        proc, _notify, _log, addresses = self.start_daemon(config)
        with socket.create_connection(("127.0.0.1", _port(addresses["chat"])), timeout=30) as chat:
            lines = chat.makefile("rwb")
            lines.readline()
            lines.write(b"/join lobby\n/msg lobby after the crash\n")
            lines.flush()
            history = []
            while not (line := lines.readline()).startswith(b"OK msg"):
                if line.startswith(b"HISTORY lobby "):
                    _, _, msg_id, _, _, text = line.decode().rstrip("\r\n").split(" ", 5)
                    history.append((int(msg_id), text))
                self.assertFalse(line.startswith(b"ERR"), line)
            self.assertEqual(history, acknowledged)
            self.assertEqual(line, b"OK msg lobby 61\r\n")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


@pytest.mark.mysql
class MySQLCrashEndToEndTests(CrashEndToEndTests):
    def database_url(self) -> str:
        from tests import mysql

        return mysql.create_database(self)
