"""A real MySQL/MariaDB server for the tests, never a mock.

Uses MYSERVICES_TEST_MYSQL_URL, else the server at 127.0.0.1:3306 (root, no
password). When none is reachable, starts a private ``mariadbd`` on a free
port from a temporary datadir, once per test process. When that is not
possible either, tests skip with the reason, except under CI=true, where
they fail instead. A test that freezes or breaks the server starts one of
its own with L{start_private_server}.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import uuid
from dataclasses import dataclass

import pymysql

from tests.support import ci, free_port

DEFAULT_URL = "mysql://root@127.0.0.1:3306/test"


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    user: str
    password: str

    def connect(self, database: str | None = None) -> pymysql.connections.Connection:
        return pymysql.connect(
            host=self.host, port=self.port, user=self.user, password=self.password,
            database=database, connect_timeout=3, autocommit=True,
        )

    def url(self, database: str) -> str:
        auth = self.user + (f":{self.password}" if self.password else "")
        return f"mysql://{auth}@{self.host}:{self.port}/{database}"


_server: Server | None = None
_failure: str | None = None
_lock = threading.Lock()


def server() -> Server:
    """The server to test against; raises SkipTest (or, under CI, RuntimeError) when there is none."""
    global _server, _failure
    with _lock:
        if _server is None and _failure is None:
            try:
                _server = _find_or_start()
            except Exception as e:  # the reason is reported by every test that needed it
                _failure = str(e)
    if _server is not None:
        return _server
    reason = f"no MySQL/MariaDB server for the tests: {_failure}"
    if ci():
        raise RuntimeError(reason + " (CI=true: MySQL tests must run)")
    from twisted.trial.unittest import SkipTest

    raise SkipTest(reason)


def _find_or_start() -> Server:
    from urllib.parse import urlsplit

    parts = urlsplit(os.environ.get("MYSERVICES_TEST_MYSQL_URL", DEFAULT_URL))
    candidate = Server(parts.hostname or "127.0.0.1", parts.port or 3306, parts.username or "root", parts.password or "")
    try:
        candidate.connect().close()
        return candidate
    except pymysql.err.MySQLError as e:
        first = f"{candidate.host}:{candidate.port}: {e.args[-1] if e.args else e}"
    try:
        return _start_private()
    except Exception as e:
        raise RuntimeError(f"{first}; and a private mariadbd could not start: {e}") from e


def _start_private() -> Server:
    private = _launch()
    atexit.register(private.stop)
    return private.server


@dataclass
class PrivateServer:
    """A C{mariadbd} process of our own: C{freeze} stops it (SIGSTOP) as a hung server, C{thaw} resumes it."""

    server: Server
    process: subprocess.Popen[str]
    base: str
    frozen: bool = False

    def freeze(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)
        # a stop takes effect asynchronously: wait for the kernel's word that every thread has stopped
        os.waitpid(self.process.pid, os.WUNTRACED)
        self.frozen = True

    def thaw(self) -> None:
        """Resume it; does nothing unless it is frozen."""
        if self.frozen:
            self.frozen = False
            os.kill(self.process.pid, signal.SIGCONT)
            os.waitpid(self.process.pid, os.WCONTINUED)

    def stop(self) -> None:
        """Kill it (even frozen) and remove its files: nothing in it is kept."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.base, ignore_errors=True)


def start_private_server(testcase: object) -> PrivateServer:
    """A fresh C{mariadbd} on a free port for one test alone, stopped and removed when the test ends.

    For tests that stop or break the server: never the shared one. Skips when
    MariaDB is not installed, except under CI=true, where it fails instead.
    """
    try:
        private = _launch()
    except Exception as e:
        reason = f"cannot start a private mariadbd: {e}"
        if ci():
            raise RuntimeError(reason + " (CI=true: MySQL tests must run)") from e
        from twisted.trial.unittest import SkipTest

        raise SkipTest(reason) from e
    testcase.addCleanup(private.stop)  # type: ignore[attr-defined]
    return private


def _launch() -> PrivateServer:
    for tool in ("mariadb-install-db", "mariadbd"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            raise RuntimeError(f"{tool} is not installed")
    base = tempfile.mkdtemp(prefix="myservices-mariadb-")
    datadir = os.path.join(base, "data")
    user = ["--user=root"] if os.geteuid() == 0 else []
    install_db = shutil.which("mariadb-install-db") or "/usr/sbin/mariadb-install-db"
    subprocess.run(
        [install_db, "--no-defaults", f"--datadir={datadir}", "--auth-root-authentication-method=normal",
         "--skip-test-db", *user],
        check=True, capture_output=True, timeout=120,
    )
    port = free_port()
    mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    proc = subprocess.Popen(
        [mariadbd, "--no-defaults", f"--datadir={datadir}", f"--port={port}", "--bind-address=127.0.0.1",
         f"--socket={base}/mysqld.sock", f"--pid-file={base}/mysqld.pid", "--skip-log-bin", *user],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    private = PrivateServer(Server("127.0.0.1", port, "root", ""), proc, base)
    try:
        # wait for the server's own word that it accepts connections
        assert proc.stderr is not None
        for line in proc.stderr:
            if "ready for connections" in line:
                break
        else:
            raise RuntimeError(f"mariadbd exited with {proc.wait()}")
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining its log
        private.server.connect().close()
    except BaseException:
        private.stop()
        raise
    return private


def create_database(testcase: object) -> str:
    """A fresh database for one test, dropped when the test ends; returns its URL."""
    srv = server()
    name = f"myservices_test_{uuid.uuid4().hex[:12]}"
    with srv.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")

    def drop() -> None:
        with srv.connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")

    testcase.addCleanup(drop)  # type: ignore[attr-defined]
    return srv.url(name)
