"""`twistd myservices` as a real process, as operators meet it: its JSON log, a data directory it may
not write, and its exit status on SIGTERM in a shell and as PID 1 (a container's).

Each test spawns the daemon with the JSON log on standard output and waits for log events, never
for time: L{Daemon.event} fires when a line matching a predicate arrives.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import sys
import tempfile
import textwrap
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase

from tests.support import ci

TWISTD = str(Path(sys.executable).parent / "twistd")
# the image's user (Dockerfile: USER 10001:10001)
IMAGE_UID = 10001

Event = dict[str, Any]


class Daemon(ProcessProtocol):
    """One `twistd -n myservices` process: its log events as they come, and how it ended."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.raw = b""
        self.other: list[bytes] = []  # output lines that are not JSON
        self.ended: Deferred[BaseException] = Deferred()  # fires with ProcessDone or ProcessTerminated
        self._waiting: list[tuple[Callable[[Event], bool], Deferred[Event]]] = []

    def outReceived(self, data: bytes) -> None:
        self.raw += data
        *lines, rest = self.raw.split(b"\n")
        self.raw = rest
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                self.other.append(line)
                continue
            self.events.append(event)
            for item in list(self._waiting):
                if item[0](event):
                    self._waiting.remove(item)
                    item[1].callback(event)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        for _, d in self._waiting:
            d.errback(AssertionError(f"the daemon ended ({reason.value}) first; log:\n{self.log()}"))
        self._waiting = []
        self.ended.callback(reason.value)

    def event(self, pred: Callable[[Event], bool]) -> Deferred[Event]:
        """The first event, seen or to come, for which C{pred} holds."""
        d: Deferred[Event] = Deferred()
        seen = [e for e in self.events if pred(e)]
        if seen:
            d.callback(seen[0])
        elif self.ended.called:
            d.errback(AssertionError(f"the daemon has ended; log:\n{self.log()}"))
        else:
            self._waiting.append((pred, d))
        return d

    def log(self) -> str:
        return "\n".join([*(json.dumps(e) for e in self.events), *(l.decode(errors="replace") for l in self.other)])

    def address(self, service: str) -> tuple[str, int]:
        (event,) = [e for e in self.events if e.get("service") == service and "address" in e]
        host, port = event["address"].rsplit(":", 1)
        return host, int(port)


def serving(event: Event) -> bool:
    """The reactor runs (signal handlers set, services started): the database is migrated."""
    return "schema ready" in event.get("message", "")


def listening(service: str) -> Callable[[Event], bool]:
    return lambda e: e.get("service") == service and "address" in e and "bound to" in e.get("message", "")


def util_linux(name: str) -> str:
    """The path of a util-linux command; a skip saying so when it is missing (a failure under CI=true)."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} is missing: apt-get install util-linux"
        if ci():
            raise AssertionError(message)
        raise SkipTest(message)
    return found


def shareable_dir(testcase: TestCase) -> Path:
    """A fresh directory every user can enter and read (for a daemon that runs as another user)."""
    directory = Path(tempfile.mkdtemp(prefix="myservices-"))
    testcase.addCleanup(shutil.rmtree, directory, True)
    directory.chmod(0o755)
    return directory


def start(testcase: TestCase, directory: Path, config: str, prefix: list[str] | None = None,
          as_user: int | None = None) -> Daemon:
    """Run the daemon on C{config} (written to C{directory}); SIGKILLed at cleanup if still running."""
    path = directory / "myservices.toml"
    path.write_text(textwrap.dedent(config))
    path.chmod(0o644)
    argv = [*(prefix or []), TWISTD, "-n", "--pidfile=", "myservices", "--config", str(path)]
    if as_user is not None:
        # root drops to the user for the daemon alone, keeping only CAP_DAC_READ_SEARCH so that it can
        # read the interpreter wherever it is installed (pyenv's under /root, say): writing a directory
        # it does not own is refused, as in the container
        setpriv = util_linux("setpriv")
        argv = [setpriv, f"--reuid={as_user}", f"--regid={as_user}", "--clear-groups",
                "--inh-caps=-all,+dac_read_search", "--ambient-caps=+dac_read_search", *argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSERVICES", "NOTIFY_SOCKET", "LISTEN_"))}
    daemon = Daemon()
    process = reactor.spawnProcess(daemon, argv[0], argv, env=env, path=str(directory))

    def kill() -> Deferred[Any] | None:
        if daemon.ended.called:
            return None
        try:
            process.signalProcess("KILL")
        except ProcessExitedAlready:
            pass
        return daemon.ended

    testcase.addCleanup(kill)
    return daemon


def fetch(address: tuple[str, int], path: str) -> Deferred[int]:
    """The status of GET C{path} (in a thread: urllib blocks)."""

    def get() -> int:
        try:
            with urllib.request.urlopen(f"http://{address[0]}:{address[1]}{path}", timeout=30) as response:
                return int(response.status)
        except urllib.error.HTTPError as e:
            return e.code

    return deferToThread(get)


LEVELS = {"debug", "info", "warn", "error", "critical"}
ISO_TIME = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"


class JsonLogTests(TestCase):
    timeout = 60

    async def test_every_line_has_a_message_a_level_name_and_an_iso_time_beside_its_fields(self) -> None:
        directory = shareable_dir(self)
        config = """
            [daemon]
            log_format = "json"
            [database]
            url = "mysql://app:hunter2-secret@127.0.0.1:1/nowhere"
            [services.echo]
            endpoint = "tcp:0:interface=127.0.0.1"
            max_connections = 100
            [services.http]
            endpoint = "tcp:0:interface=127.0.0.1"
        """
        daemon = start(self, directory, config)
        await daemon.event(listening("http"))
        # the database cannot be reached: an error whose fields name the URL, its password masked (logged
        # once the reactor runs, so SIGHUP has its handler)
        failed = await daemon.event(lambda e: e.get("level") == "error" and "url" in e)
        self.assertEqual(failed["url"], "mysql://app:***@127.0.0.1:1/nowhere")
        (directory / "myservices.toml").write_text(
            (directory / "myservices.toml").read_text().replace("max_connections = 100", "max_connections = 5")
        )
        os.kill(daemon.transport.pid, signal.SIGHUP)
        reloaded = await daemon.event(lambda e: e.get("key") == "services.echo.max_connections")
        self.assertEqual(reloaded["message"], "reload: services.echo.max_connections = 5")
        daemon.transport.signalProcess("TERM")
        await daemon.ended

        self.assertEqual(daemon.other, [], "every line of standard output is a JSON object")
        self.assertGreater(len(daemon.events), 5)
        for event in daemon.events:
            self.assertRegex(event["time"], ISO_TIME)
            self.assertIn(event["level"], LEVELS)
            self.assertIsInstance(event["message"], str)
            self.assertTrue(event["message"], event)
            self.assertIsInstance(event["namespace"], str)
            self.assertFalse({"log_level", "log_time", "log_namespace"} & event.keys(), event)
        echo = next(e for e in daemon.events if listening("echo")(e))
        host, port = daemon.address("echo")
        self.assertEqual(
            echo["message"], f"echo listening on tcp:0:interface=127.0.0.1 (bound to {host}:{port})"
        )
        self.assertEqual((echo["level"], echo["endpoint"]), ("info", "tcp:0:interface=127.0.0.1"))
        self.assertEqual(echo["log_format"], "{service} listening on {endpoint} (bound to {address})")
        # twistd's and Twisted's own events too
        self.assertIn("Main loop terminated.", [e["message"] for e in daemon.events])
        self.assertNotIn("hunter2", daemon.log())


class DataDirectoryTests(TestCase):
    """A data directory the daemon may not write: a root-owned Docker volume under the image's uid 10001."""

    timeout = 60

    async def test_the_log_says_which_directory_which_uid_and_what_to_do_and_a_fix_needs_no_restart(self) -> None:
        directory = shareable_dir(self)
        data = directory / "data"
        data.mkdir()
        if os.geteuid() == 0:
            # as in the container: root owns the directory (mode 0755) and the daemon runs as uid 10001
            uid, as_user = IMAGE_UID, IMAGE_UID
            data.chmod(0o755)
        else:
            uid, as_user = os.geteuid(), None
            data.chmod(0o555)
            self.addCleanup(data.chmod, 0o755)
        config = f"""
            [daemon]
            log_format = "json"
            data_dir = "{data}"
            [services.http]
            endpoint = "tcp:0:interface=127.0.0.1"
        """
        daemon = start(self, directory, config, as_user=as_user)
        error = await daemon.event(lambda e: e.get("level") == "error" and "SQLite" in e.get("message", ""))
        message = error["message"]
        for words in (
            f"cannot open the SQLite database {data}/myservices.sqlite3",
            f"the directory {data} is not writable by this process (uid {uid}, gid {uid})",
            f"chown {uid}:{uid} {data}",
            "[daemon] data_dir",
        ):
            self.assertIn(words, message)
        await daemon.event(listening("http"))
        http = daemon.address("http")
        self.assertEqual(await fetch(http, "/readyz"), 503)
        self.assertEqual(await fetch(http, "/"), 503)
        self.assertEqual(await fetch(http, "/healthz"), 200)  # alive; the image's HEALTHCHECK asks /readyz
        # what the message says to do, while it runs: the next retry opens the database
        if as_user is not None:
            os.chown(data, uid, uid)
        else:
            data.chmod(0o755)
        await daemon.event(lambda e: "schema ready" in e.get("message", ""))
        self.assertEqual(await fetch(http, "/readyz"), 200)
        self.assertTrue(stat.S_ISREG((data / "myservices.sqlite3").stat().st_mode))
        daemon.transport.signalProcess("TERM")
        await daemon.ended


class StopStatusTests(TestCase):
    """What SIGTERM ends with (docs/deployment.md, Stopping): twistd re-raises it after a clean stop."""

    timeout = 60
    CONFIG = """
        [daemon]
        log_format = "json"
        data_dir = "data"
        [services.echo]
        endpoint = "tcp:0:interface=127.0.0.1"
    """

    async def test_in_a_shell_or_under_systemd_the_process_ends_by_sigterm(self) -> None:
        daemon = start(self, shareable_dir(self), self.CONFIG)
        await daemon.event(serving)  # a SIGTERM before the reactor runs would kill it at once
        daemon.transport.signalProcess("TERM")
        reason = await daemon.ended
        # killed by SIGTERM (a shell says 143; systemd counts it as a clean stop), after the drain
        self.assertEqual((reason.exitCode, reason.signal), (None, signal.SIGTERM))
        self.assertIn("pool closed", daemon.log())

    async def test_as_pid_1_in_a_container_the_exit_status_is_0(self) -> None:
        unshare = util_linux("unshare")
        userns = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
        daemon = start(self, shareable_dir(self), self.CONFIG, prefix=[unshare, *userns, "--pid", "--fork", "--kill-child", "--mount-proc"])
        try:
            await daemon.event(serving)
        except AssertionError as e:
            raise SkipTest(f"cannot make a PID namespace here: {e}") from None
        unshare_pid = daemon.transport.pid
        children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
        (pid_1,) = children  # twistd, PID 1 in its namespace
        self.assertIn("\t1\n", Path(f"/proc/{pid_1}/status").read_text().split("NSpid:")[1].split("\n")[0] + "\n")
        os.kill(int(pid_1), signal.SIGTERM)
        reason = await daemon.ended
        # twistd's re-raised SIGTERM is ignored by the kernel for PID 1: it returns and exits 0
        self.assertEqual((reason.exitCode, reason.signal), (0, None))
        self.assertIn("pool closed", daemon.log())
