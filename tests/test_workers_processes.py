"""The supervisor and its workers as real processes: `twistd myservices` with [daemon] workers, real sockets.

The supervisor tells readiness, its bound addresses and every change over the
systemd notify protocol; the tests listen on their own NOTIFY_SOCKET, so they
wait for events, never for time. Workers say who they are in /healthz.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest
from twisted.trial.unittest import TestCase

from tests import mysql

pytestmark = pytest.mark.workers

TIMEOUT = 60  # seconds any one event may take on a loaded machine before the test fails


def twistd() -> str:
    return str(Path(sys.executable).parent / "twistd")


class Daemon:
    """`twistd myservices` run as systemd would: a NOTIFY_SOCKET of our own, the log in a file."""

    def __init__(
        self, testcase: TestCase, config: str, extra_env: dict[str, str] | None = None,
        prefix: list[str] | None = None, pass_fds: list[int] | None = None,
    ) -> None:
        self.testcase = testcase
        self.dir = tempfile.mkdtemp(prefix="myservices-")  # AF_UNIX paths are limited to ~100 bytes
        testcase.addCleanup(shutil.rmtree, self.dir, True)
        self.config = Path(self.dir, "myservices.toml")
        self.write_config(config)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        testcase.addCleanup(self.notify.close)
        self.notify.bind(os.path.join(self.dir, "notify.sock"))
        self.notify.settimeout(TIMEOUT)
        self.log_path = Path(self.dir, "daemon.log")
        log = open(self.log_path, "w")
        testcase.addCleanup(log.close)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSERVICES", "PROMETHEUS"))}
        env.update(NOTIFY_SOCKET=os.path.join(self.dir, "notify.sock"), **(extra_env or {}))
        self.proc = subprocess.Popen(
            [*(prefix or []), twistd(), "-n", "--pidfile=", "myservices", "--config", str(self.config)],
            cwd=self.dir, env=env, stdout=log, stderr=subprocess.STDOUT, pass_fds=pass_fds or (),
        )
        testcase.addCleanup(self.stop)
        self.exited = os.pidfd_open(self.proc.pid)  # readable once the supervisor has ended
        testcase.addCleanup(os.close, self.exited)
        self.seen: list[dict[str, str]] = []

    def write_config(self, text: str) -> None:
        self.config.write_text(textwrap.dedent(text).replace("DIR", self.dir))

    def stop(self) -> None:
        """Cleanup: SIGTERM, then SIGKILL (workers stop by themselves when the supervisor is gone)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # captured: pytest shows it when the test failed
        sys.stdout.write(f"--- daemon log ---\n{self.log()}")

    def next_notification(self, pred: Callable[[dict[str, str]], bool]) -> dict[str, str]:
        """The next message to NOTIFY_SOCKET for which C{pred} holds (those before it are kept in C{seen})."""
        while True:
            readable = select.select([self.notify, self.exited], [], [], TIMEOUT)[0]
            if not readable:
                raise AssertionError(f"no notification for {TIMEOUT}s; seen: {self.seen}")
            if readable == [self.exited]:
                raise AssertionError(f"the daemon exited ({self.proc.wait()}) before telling; log:\n{self.log()}")
            fields = dict(line.split("=", 1) for line in self.notify.recv(65536).decode().splitlines())
            self.seen.append(fields)
            if pred(fields):
                return fields

    def ready(self) -> dict[str, str]:
        """Wait for READY=1; the bound address of each service, from the STATUS line."""
        fields = self.next_notification(lambda f: f.get("READY") == "1")
        listening = fields["STATUS"].removeprefix("serving ").split("; ")[0]
        self.addresses = dict(item.split("=", 1) for item in listening.split(", "))
        return self.addresses

    def port(self, name: str) -> int:
        return int(self.addresses[name].rsplit(":", 1)[1])

    def get(self, path: str, name: str = "http") -> tuple[int, bytes]:
        """One request on a new connection (so that the kernel picks a worker for each)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port(name), timeout=TIMEOUT)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def worker_pids(self, requests: int = 40) -> set[int]:
        return {json.loads(self.get("/healthz")[1])["pid"] for _ in range(requests)}

    def log(self) -> str:
        return self.log_path.read_text()


def wait_for_exit(pid: int) -> None:
    """Wait until process C{pid} (not necessarily our child) has ended."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if not select.select([fd], [], [], TIMEOUT)[0]:
            raise AssertionError(f"process {pid} still running after {TIMEOUT}s")
    finally:
        os.close(fd)


def echo(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: conn.recv(4096), b""))


def metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    if match is None:
        raise AssertionError(f"{name}{labels} is not in /metrics")
    return float(match.group(1))


CONFIG = """
    [daemon]
    workers = WORKERS
    data_dir = "state"
    worker_restart_delay = 0.1
    worker_metrics_interval = 0.1
    [services.echo]
    endpoint = "tcp:0:interface=127.0.0.1"
    ECHO
    [services.echo_unix]
    kind = "echo"
    endpoint = "unix:DIR/echo.sock"
    [services.udp]
    endpoint = "udp:0:interface=127.0.0.1"
    [services.http]
    endpoint = "tcp:0:interface=127.0.0.1"
"""


def config(workers: int = 2, echo: str = "") -> str:
    return CONFIG.replace("WORKERS", str(workers)).replace("ECHO", echo)


def count_concurrently(daemon: Daemon, clients: int, requests: int) -> list[list[int]]:
    """C{clients} threads each take C{requests} numbers from the counter page, each on its own connection.

    A connection is served by one worker, and each worker hands out numbers
    from its own blocks in increasing order: so each client's numbers
    increase, while the workers' numbers interleave by block.
    """

    def client(_: int) -> list[int]:
        numbers = []
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port("http"), timeout=TIMEOUT)
        try:
            for _ in range(requests):
                conn.request("GET", "/")
                response = conn.getresponse()
                status, body = response.status, response.read()
                assert status == 200, (status, body)
                numbers.append(int(re.fullmatch(rb"I am request #(\d+)\n", body).group(1)))  # type: ignore[union-attr]
        finally:
            conn.close()
        return numbers

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(client, range(clients)))


class SupervisorTests(TestCase):
    timeout = 300

    def test_workers_share_every_port_sum_their_metrics_and_count_together(self) -> None:
        daemon = Daemon(self, config(workers=3))
        daemon.ready()
        self.assertEqual(len(daemon.worker_pids()), 3)  # the kernel spread 40 connections over all three
        self.assertNotIn(daemon.proc.pid, daemon.worker_pids(5))  # the supervisor serves nobody

        for i in range(12):
            self.assertEqual(echo(daemon.port("echo"), b"tcp %d" % i), b"tcp %d" % i)
        self.assertEqual(echo_unix(os.path.join(daemon.dir, "echo.sock"), b"unix"), b"unix")
        for i in range(6):  # a socket each: the kernel spreads them by address
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.settimeout(TIMEOUT)
                udp.sendto(b"datagram %d" % i, ("127.0.0.1", daemon.port("udp")))
                self.assertEqual(udp.recvfrom(100)[0], b"datagram %d" % i)

        # SQLite, several processes: every number once, each client's numbers increasing (one worker each)
        taken = count_concurrently(daemon, clients=6, requests=15)
        numbers = [n for client in taken for n in client]
        self.assertEqual(len(set(numbers)), len(numbers))
        for client in taken:
            self.assertEqual(client, sorted(client))

        status, body = daemon.get("/metrics")
        self.assertEqual(status, 200)
        text = body.decode()
        self.assertEqual(metric(text, "myservices_connections_total", '{service="echo"}'), 12)
        self.assertEqual(metric(text, "myservices_connections_total", '{service="echo_unix"}'), 1)
        self.assertEqual(metric(text, "myservices_received_messages_total", '{service="udp"}'), 6)
        self.assertEqual(metric(text, "myservices_db_ready"), 1)  # the lowest of the workers'
        self.assertEqual(metric(text, "myservices_db_pool_max_connections"), 3)  # one SQLite connection each

        status, body = daemon.get("/readyz")
        self.assertEqual((status, json.loads(body)["checks"]["workers"]), (200, "ok"))

    def test_a_killed_worker_is_replaced_sighup_reaches_every_worker_and_sigterm_stops_them_all(self) -> None:
        daemon = Daemon(self, config(workers=2), {"WATCHDOG_USEC": "2000000"})
        daemon.ready()
        daemon.next_notification(lambda f: f.get("WATCHDOG") == "1")  # fed once every worker pings
        pids = daemon.worker_pids()
        self.assertEqual(len(pids), 2)
        for i in range(4):
            echo(daemon.port("echo"), b"before")

        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        # the port keeps serving: the survivor answers, and connections for the victim's socket wait for its successor
        self.assertEqual([echo(daemon.port("echo"), b"during") for _ in range(8)], [b"during"] * 8)
        daemon.next_notification(lambda f: "not ready: " in f.get("STATUS", ""))
        daemon.next_notification(lambda f: f.get("STATUS", "").endswith("; 2 of 2 workers ready"))
        after = daemon.worker_pids()
        self.assertEqual(len(after), 2)
        self.assertNotIn(victim, after)
        self.assertRegex(daemon.log(), rf"worker \d \(pid {victim}\) was killed by signal 9 \(SIGKILL\); starting it again")
        text = daemon.get("/metrics")[1].decode()
        self.assertEqual(metric(text, "myservices_connections_total", '{service="echo"}'), 12)  # the victim's count too

        daemon.write_config(config(workers=2, echo="max_connections = 7"))
        daemon.proc.send_signal(signal.SIGHUP)
        status = daemon.next_notification(lambda f: f.get("STATUS", "").startswith("reload"))
        self.assertTrue(status["STATUS"].startswith("reloaded; serving "), status)
        self.assertEqual(daemon.log().count("reload: services.echo.max_connections = 7"), 2)

        daemon.proc.send_signal(signal.SIGTERM)
        daemon.next_notification(lambda f: f.get("STOPPING") == "1")
        self.assertEqual(daemon.proc.wait(TIMEOUT), -signal.SIGTERM)  # exit status 143, as without workers
        for pid in after:
            wait_for_exit(pid)
        log = daemon.log()
        self.assertEqual(log.count("was killed by signal 15 (SIGTERM)"), 2)
        self.assertNotIn("Traceback", log)
        self.assertFalse(os.path.exists(os.path.join(daemon.dir, "echo.sock")))

    def test_workers_stop_when_the_supervisor_is_killed(self) -> None:
        daemon = Daemon(self, config(workers=2))
        daemon.ready()
        pids = daemon.worker_pids()
        self.assertEqual(len(pids), 2)
        daemon.proc.kill()
        daemon.proc.wait(TIMEOUT)
        for pid in pids:
            wait_for_exit(pid)
        self.assertEqual(daemon.log().count("the supervisor is gone; stopping"), 2)


    def test_a_socket_from_systemd_is_handed_to_every_worker(self) -> None:
        listening = socket.socket()
        self.addCleanup(listening.close)
        listening.bind(("127.0.0.1", 0))
        listening.listen(50)
        port = listening.getsockname()[1]
        # as systemd starts the service: the socket at fd 3, LISTEN_PID naming the process it exec()s
        exec_as_systemd = (
            "import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_PID'] = str(os.getpid()); "
            "os.execv(sys.argv[2], sys.argv[2:])"
        )
        text = config(workers=2).replace('[services.http]\n    endpoint = "tcp:0:interface=127.0.0.1"',
                                         '[services.http]\n    endpoint = "systemd:domain=INET:index=0"')
        daemon = Daemon(self, text, {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "myservices"}, prefix=[
            sys.executable, "-c", exec_as_systemd, str(listening.fileno()),
        ], pass_fds=[listening.fileno()])
        listening.close()  # the daemon holds it now
        self.assertEqual(daemon.ready()["http"], f"127.0.0.1:{port}")
        pids = daemon.worker_pids()
        self.assertTrue(pids and daemon.proc.pid not in pids, pids)
        self.assertEqual(json.loads(daemon.get("/readyz")[1])["checks"]["workers"], "ok")


def echo_unix(path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(TIMEOUT)
        conn.connect(path)
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        return b"".join(iter(lambda: conn.recv(4096), b""))


@pytest.mark.mysql
class MySQLWorkersTests(TestCase):
    timeout = 300

    def test_two_workers_on_mysql_hand_out_every_counter_number_once(self) -> None:
        url = mysql.create_database(self)
        daemon = Daemon(self, config(workers=2), {"MYSERVICES_DATABASE_URL": url})
        daemon.ready()
        self.assertEqual(len(daemon.worker_pids()), 2)
        taken = count_concurrently(daemon, clients=6, requests=15)
        numbers = [n for client in taken for n in client]
        self.assertEqual(len(set(numbers)), len(numbers))
        for client in taken:
            self.assertEqual(client, sorted(client))
