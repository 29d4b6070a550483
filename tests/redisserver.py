"""A private redis-server for one test, never a mock: started on a free port, without persistence.

L{start_redis} starts Debian's ``redis-server`` (``--save "" --appendonly
no``, in a temporary directory) and stops it when the test ends. A test can
then L{RedisServer.kill} it (SIGKILL: it loses everything), L{RedisServer.restart}
it empty on the same port, or L{RedisServer.freeze} (SIGSTOP) and
L{RedisServer.thaw} (SIGCONT) it as a hung server. Without redis-server the
test skips, except under CI=true, where it fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field

from twisted.trial.unittest import SkipTest

from tests.support import ci, free_port

REDIS_SERVER = "/usr/bin/redis-server"


@dataclass
class RedisServer:
    port: int
    base: str
    process: subprocess.Popen[bytes] | None = None
    frozen: bool = False
    logs: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.base, "--logfile", "", "--daemonize", "no", "--protected-mode", "no"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        # wait for the server's own word that it accepts connections, as tests/mysql.py does for mariadbd
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.logs.append(line)
            if "Ready to accept connections" in line:
                break
        else:
            raise RuntimeError(f"redis-server exited with {self.process.wait()}: {''.join(self.logs[-5:])}")
        threading.Thread(target=self.process.stdout.read, daemon=True).start()  # keep draining its log

    def kill(self) -> None:
        """SIGKILL: everything in it is lost (it keeps nothing on disk)."""
        self.thaw()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        """Kill it and start a new, empty one on the same port."""
        self.kill()
        self.start()

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        os.waitpid(self.process.pid, os.WUNTRACED)
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen and self.process is not None:
            self.frozen = False
            os.kill(self.process.pid, signal.SIGCONT)
            os.waitpid(self.process.pid, os.WCONTINUED)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.base, ignore_errors=True)

    def command(self, *args: str) -> bytes:
        """One command over a plain socket, for checks from the test: the raw reply."""
        request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(request.encode())
            return s.recv(65536)


def _binary() -> str:
    return shutil.which("redis-server") or REDIS_SERVER


def start_redis(testcase: object) -> RedisServer:
    """A private, empty redis-server for this test, stopped when it ends."""
    if not os.path.exists(_binary()):
        reason = "redis-server is not installed (Debian: apt-get install redis-server)"
        if ci():
            raise RuntimeError(reason + " (CI=true: Redis tests must run)")
        raise SkipTest(reason)
    server = RedisServer(free_port(), tempfile.mkdtemp(prefix="myservices-redis-"))
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    testcase.addCleanup(server.stop)  # type: ignore[attr-defined]
    return server
