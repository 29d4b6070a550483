"""[daemon] workers, in one process: the config checks, the shared sockets, the restart delay, the watchdog rule,
and a worker's service tree over a real link and real inherited sockets.

The supervisor and its workers as real processes are in tests/test_workers_processes.py.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import socket
import tempfile
import sys
from dataclasses import replace
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.trial.unittest import TestCase

from myservices import tap
from myservices.config import ConfigError
from myservices.endpoints import parse_udp_endpoint
from myservices.listeners import ListenError
from myservices.metrics import Metrics
from myservices.sdnotify import Notifier, Watchdog
from myservices.tree import ServiceTree, build_service_tree
from myservices.workers.checks import worker_count
from myservices.workers.link import LinkProtocol, adopt_link
from myservices.workers.sockets import SharedSockets
from myservices.workers.process import WorkerProcess, describe_exit
from myservices.workers.supervisor import Supervisor
from myservices.workers.worker import MetricsFlush, WorkerLink, WorkerSpec
from tests.support import HttpClient, connect, load, write_config

SHARED_ONLY = """
    [daemon]
    workers = 2
    [services.echo]
    endpoint = "tcp:0:interface=127.0.0.1"
    [services.udp]
    endpoint = "udp:0:interface=127.0.0.1"
    [services.http]
    endpoint = "tcp:0:interface=127.0.0.1"
"""


class WorkerConfigTests(TestCase):
    def problems(self, text: str) -> list[str]:
        with self.assertRaises(ConfigError) as caught:
            load(self, text)
        return caught.exception.problems

    def test_workers_with_a_hub_front_end_on_the_memory_engine_are_refused_saying_why(self) -> None:
        problems = self.problems(SHARED_ONLY + '[hub]\nengine = "memory"\n[services.chat]\nendpoint = "tcp:0"\n')
        self.assertEqual(len(problems), 1, problems)
        self.assertTrue(problems[0].startswith("daemon.workers: 2 needs a hub shared by every worker"), problems)
        for words in ('engine = "memory"', "rooms, message ids and nicks in each process", "chat",
                      'set [hub] engine = "redis"'):
            self.assertIn(words, problems[0])

    def test_every_hub_front_end_counts_and_a_disabled_one_does_not(self) -> None:
        for kind, extra in (("websocket", ""), ("framed", ""), ("pb", ""), ("chat", "")):
            problems = self.problems(
                f'[daemon]\nworkers = 0\n[services.{kind}]\nendpoint = "tcp:0"\n{extra}'
            )
            self.assertIn(kind, problems[0])
        load(self, SHARED_ONLY + '[services.chat]\nendpoint = "tcp:0"\nenabled = false\n')

    def test_echo_http_and_udp_run_with_two_workers(self) -> None:
        config = load(self, SHARED_ONLY)
        self.assertEqual(config.daemon.workers, 2)
        self.assertEqual(worker_count(config.daemon), 2)

    def test_workers_zero_is_one_per_core_and_the_count_is_bounded(self) -> None:
        config = load(self, "[daemon]\nworkers = 0\n")
        self.assertEqual(worker_count(config.daemon, cores=6), 6)
        self.assertEqual(worker_count(config.daemon, cores=1000), 256)
        self.assertIn("daemon.workers: expected a whole number from 0 to 256, got 257",
                      self.problems("[daemon]\nworkers = 257\n"))

    def test_sqlite_in_memory_cannot_serve_workers(self) -> None:
        problems = self.problems(SHARED_ONLY + '[database]\nurl = "sqlite:///:memory:"\n')
        self.assertTrue(problems[0].startswith("database.url: sqlite:///:memory: cannot serve 2 workers"), problems)

    def test_workers_need_longer_to_stop_than_to_drain(self) -> None:
        text = SHARED_ONLY.replace("workers = 2", "workers = 2\nshutdown_timeout = 20\nworker_stop_timeout = 20")
        problems = self.problems(text)
        self.assertIn("daemon.worker_stop_timeout: expected more than daemon.shutdown_timeout (20), got 20", problems[0])

    def test_one_worker_is_the_single_process_daemon_and_check_says_how_many(self) -> None:
        options = tap.Options()
        options.parseOptions(["--config", str(write_config(self, '[services.echo]\nendpoint = "tcp:0"\n'))])
        self.assertIsInstance(tap.makeService(options), ServiceTree)
        path = write_config(self, SHARED_ONLY)
        options = tap.Options()
        options.parseOptions(["--config", str(path)])
        self.assertIsInstance(tap.makeService(options), Supervisor)
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        with self.assertRaises(SystemExit) as caught:
            tap.Options().parseOptions(["--check", "--config", str(path)])
        self.assertEqual(caught.exception.code, 0)
        self.assertIn("  workers   2, under a supervisor\n", out.getvalue())


class SharedSocketsTests(TestCase):
    def shared(self, count: int) -> SharedSockets:
        sockets = SharedSockets(count)
        self.addCleanup(sockets.close)
        return sockets

    def test_a_tcp_port_zero_is_one_port_bound_once_per_worker_with_reuseport(self) -> None:
        sockets = self.shared(3)
        sockets.bind_stream("echo", "tcp:0:interface=127.0.0.1")
        fds, inherited = sockets.for_worker(2, first_fd=4)
        ports = set()
        for index in range(3):
            fds, inherited = sockets.for_worker(index, first_fd=4)
            sock = socket.socket(fileno=os.dup(fds[4]))
            self.addCleanup(sock.close)
            self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT), 1)
            ports.add(sock.getsockname())
        self.assertEqual(len(ports), 1)
        self.assertEqual(len({sockets.for_worker(i, 4)[0][4] for i in range(3)}), 3)  # three sockets
        self.assertEqual(inherited["echo"].type, "stream")
        self.assertEqual(sockets.address("echo"), "127.0.0.1:%d" % ports.pop()[1])

    def test_udp_gets_one_socket_per_worker_and_unix_one_shared_socket_removed_on_close(self) -> None:
        directory = tempfile.mkdtemp(prefix="myservices-")  # AF_UNIX paths are limited to ~100 bytes
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "echo.sock")
        sockets = self.shared(2)
        sockets.bind_datagram("udp", parse_udp_endpoint("udp:0:interface=127.0.0.1"), "udp:0:interface=127.0.0.1")
        sockets.bind_stream("echo", f"unix:{path}:mode=600")
        first, second = (sockets.for_worker(i, first_fd=10)[0] for i in range(2))
        self.assertNotEqual(first[10], second[10])  # udp: a socket each
        self.assertEqual(first[11], second[11])  # unix: the same socket
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(sockets.for_worker(0, 10)[1]["udp"].type, "datagram")
        sockets.close()
        self.assertFalse(os.path.exists(path))

    def test_a_port_in_use_aborts_the_supervisor_naming_the_service(self) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            config = load(self, SHARED_ONLY.replace('"tcp:0:interface=127.0.0.1"\n    [services.udp]',
                                                    f'"tcp:{port}:interface=127.0.0.1"\n    [services.udp]'))
            supervisor = Supervisor(config, reactor, 2, notifier=Notifier({}))
            with self.assertRaises(ListenError) as caught:
                supervisor.privilegedStartService()
        self.assertIn(f"services.echo: cannot listen on tcp:{port}:interface=127.0.0.1:", str(caught.exception))
        self.assertIn(os.strerror(errno.EADDRINUSE), str(caught.exception))


class RestartAndWatchdogTests(TestCase):
    def test_the_restart_delay_doubles_while_a_worker_keeps_dying_and_resets_after_a_long_run(self) -> None:
        worker = WorkerProcess(0, lambda worker, reason: None)
        delays = []
        for now in (1, 2, 3, 4, 5, 6, 7, 8):
            worker.started_at = now - 0.5
            delays.append(worker.restart_delay(now, 0.5, 10.0))
        self.assertEqual(delays, [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0])
        worker.started_at = 100.0
        self.assertEqual(worker.restart_delay(111.0, 0.5, 10.0), 0.5)  # it ran for 11 s

    def test_exits_are_described_by_status_or_signal(self) -> None:
        self.assertEqual(describe_exit(Failure(ProcessTerminated(exitCode=3))), "exited with status 3")
        self.assertEqual(describe_exit(Failure(ProcessTerminated(signal=9))), "was killed by signal 9 (SIGKILL)")
        self.assertEqual(describe_exit(Failure(ProcessDone(0))), "exited with status 0")

    def test_the_watchdog_is_fed_only_while_every_worker_is_ready_and_pinging(self) -> None:
        clock = Clock()
        sent: list[dict[str, str]] = []

        class Recorder(Notifier):
            def notify(self, **fields: str) -> bool:
                sent.append(fields)
                return True

        notifier = Recorder({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "2000000"})  # ping every 1 s
        supervisor = Supervisor(load(self, SHARED_ONLY), clock, 2, notifier=notifier)
        supervisor._reactor = clock
        watchdog = Watchdog(notifier, clock, supervisor._watchdog_problem)
        a, b = supervisor.workers
        for worker in (a, b):
            worker.process, worker.ready, worker.last_ping = object(), True, 0.0  # type: ignore[assignment]
        watchdog.start()
        self.assertEqual(len(sent), 1)
        b.last_ping = 0.5
        clock.advance(1)
        self.assertEqual(len(sent), 2)
        clock.advance(1)  # a has not pinged for 2 s
        self.assertEqual(len(sent), 2)
        a.last_ping = b.last_ping = 2.0
        clock.advance(1)
        self.assertEqual(len(sent), 3)
        b.process, b.ready = None, False  # died
        b.last_ping = a.last_ping = 3.0
        clock.advance(1)
        self.assertEqual(len(sent), 3)
        watchdog.stop()


class SharedMetricsTests(TestCase):
    def test_each_worker_folds_its_pending_counts_into_the_shared_metrics_every_interval_and_at_stop(self) -> None:
        clock = Clock()
        metrics = Metrics()
        folded: list[float] = []
        metrics.before_collect(lambda: folded.append(clock.seconds()))
        flush = MetricsFlush(metrics, 0.5, clock)
        flush.startService()
        clock.advance(0.5)
        clock.advance(0.5)
        flush.stopService()
        self.assertEqual(folded, [0.5, 1.0, 1.0])

    def test_a_gauge_computed_by_a_function_is_set_at_each_flush_when_shared(self) -> None:
        metrics = Metrics()
        self.patch(metrics, "multiprocess_dir", "/shared")  # as Metrics(multiprocess_dir) sets up a gauge
        gauge = metrics._gauge("test_gauge", "a gauge", registry=None)
        members = [3]
        gauge.set_function(lambda: members[0])
        self.assertEqual(gauge._value.get(), 0)  # not read when collected: its value is what was last set
        metrics.flush()
        self.assertEqual(gauge._value.get(), 3)
        members[0] = 5
        metrics.flush()
        self.assertEqual(gauge._value.get(), 5)


class Inbox:
    """The supervisor's end of a link in a test: keeps each message; C{wait(pred)} fires with the first that matches."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self._waiters: list[tuple[Any, Deferred[dict[str, Any]]]] = []

    def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        for waiter in list(self._waiters):
            if waiter[0](message):
                self._waiters.remove(waiter)
                waiter[1].callback(message)

    def wait(self, pred: Any) -> Deferred[dict[str, Any]]:
        d: Deferred[dict[str, Any]] = Deferred()
        found = next((m for m in self.messages if pred(m)), None)
        if found is not None:
            d.callback(found)
        else:
            self._waiters.append((pred, d))
        return d


class WorkerTreeTests(TestCase):
    """A worker's tree as twistd builds it, with a socketpair for the link and sockets bound by a SharedSockets."""

    async def test_a_worker_adopts_its_sockets_reports_to_the_supervisor_and_answers_for_the_daemon(self) -> None:
        config = load(self, SHARED_ONLY.replace("[daemon]", '[daemon]\ndata_dir = "state"'))
        sockets = SharedSockets(1)  # one socket per listener: worker 0's would take some connections, unanswered
        self.addCleanup(sockets.close)
        for name in ("echo", "http"):
            sockets.bind_stream(name, config.services[name].endpoint)  # type: ignore[attr-defined]
        sockets.bind_datagram("udp", parse_udp_endpoint("udp:0:interface=127.0.0.1"), "udp:0:interface=127.0.0.1")
        child_fds, inherited = sockets.for_worker(0, first_fd=0)
        # what spawnProcess does: the worker gets descriptors of its own (here: copies)
        inherited = {n: replace(s, fd=os.dup(child_fds[s.fd])) for n, s in inherited.items()}
        ours, theirs = socket.socketpair()
        spec = WorkerSpec(index=1, count=2, metrics_dir=None, link_fd=os.dup(theirs.fileno()), sockets=inherited)
        theirs.close()
        inbox = Inbox()
        supervisor_end = LinkProtocol(inbox, lambda: None)
        adopt_link(reactor, ours, supervisor_end)
        orphaned: Deferred[None] = Deferred()
        link = WorkerLink(spec, reactor, on_orphaned=lambda: orphaned.callback(None))
        tree = build_service_tree(config, reactor, worker=link)
        tree.privilegedStartService()
        tree.startService()
        self.addCleanup(tree.stopService)
        await tree.when_listening()

        self.assertEqual(tree.address("echo").port, int(sockets.address("echo").rsplit(":", 1)[1]))
        client = await connect(self, tree.address("echo").port)
        client.transport.write(b"shared")
        self.assertEqual(await client.receive(6), b"shared")
        await inbox.wait(lambda m: m.get("READY") == "1")

        http = HttpClient(self, tree.address("http").port)
        health = (await http.get("/healthz")).json()
        self.assertEqual((health["worker"], health["pid"]), (1, os.getpid()))
        ready = await http.get("/readyz")
        self.assertEqual((ready.code, ready.json()["checks"]["workers"]), (503, "0 of 2 workers ready (not ready: 0, 1)"))
        supervisor_end.send({"WORKERS": 2, "READY_WORKERS": [0, 1]})
        supervisor_end.send({"RELOAD": 1})  # handled in order: once it is answered, the readiness is known
        self.assertEqual(await inbox.wait(lambda m: "RELOADED" in m), {"RELOADED": "1"})
        ready = await http.get("/readyz")
        self.assertEqual((ready.code, ready.json()["checks"]["workers"]), (200, "ok"))

        self.assertFalse(orphaned.called)
        supervisor_end.close()  # the supervisor is gone
        await orphaned
