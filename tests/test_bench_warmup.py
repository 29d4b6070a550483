"""bench/run.py measures every server in its steady state: each one is warmed up, the same way, before its
measured load (a connection opened and closed, for UDP an empty datagram, then unmeasured load). Without it,
asyncio's servers were measured in a mode a real server leaves at its first closed connection (bench/README.md).
Fast: no server process, no load generator."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

from twisted.internet import protocol, reactor, threads
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from tests.support import REPO

BENCH = REPO / "bench"


def bench_module(name: str) -> ModuleType:
    """A module of bench/ (they import each other by bare name, as the scripts run from there)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid


class HarnessWarmsEveryServer(TestCase):
    def setUp(self) -> None:
        self.run = bench_module("run")
        self.loads = sys.modules["loads"]
        self.workloads = sys.modules["workloads"].workloads()
        self.events: list[tuple[str, str, str, int]] = []

    def fake_measure(self, w: Any, s: Any, proc: FakeProcess, port: int, args: argparse.Namespace) -> dict[str, float]:
        self.events.append(("measure", w.name, s.label, proc.pid))
        return {"ops_s": 1.0, "cpu_us": 1.0, "rss_mb": 1.0, "ops": 1}

    def test_each_run_of_each_server_is_warmed_up_before_it_is_measured(self) -> None:
        pids = iter(range(1000, 100000))
        self.patch(self.run, "start", lambda s, workdir: (FakeProcess(next(pids)), 1))
        self.patch(self.run, "stop", lambda proc: None)
        self.patch(self.run, "pin", lambda pid, core: None)

        def warm(w: Any, s: Any, proc: FakeProcess, port: int, args: argparse.Namespace) -> dict[str, float]:
            self.events.append(("warm", w.name, s.label, proc.pid))
            return {"warmup_touches": 1, "warmup_seconds": args.warmup}

        self.patch(self.run, "warm_up", warm)
        selected = [dataclasses.replace(w, measure=self.fake_measure) for w in self.workloads]
        args = argparse.Namespace(runs=2, workdir=self.mktemp(), warmup=1.0)
        os.makedirs(args.workdir)
        rows = self.run.run(selected, args)
        expected = []
        for w in selected:
            for _ in range(2):
                for s in w.servers:
                    expected += [("warm", w.name, s.label), ("measure", w.name, s.label)]
        self.assertEqual([e[:3] for e in self.events], expected)
        # the warm-up and the measure of one run are on the same server process
        for warm_event, measure_event in zip(self.events[::2], self.events[1::2]):
            self.assertEqual(warm_event[3], measure_event[3])
        self.assertEqual({(r["warmup_touches"], r["warmup_seconds"]) for r in rows}, {(1, 1.0)})

    def test_warm_up_touches_then_runs_the_workload_unmeasured(self) -> None:
        touched: list[tuple[str, int]] = []
        self.patch(self.loads, "touch", lambda transport, port: touched.append((transport, port)))
        for w in self.workloads:
            loads: list[argparse.Namespace] = []
            w = dataclasses.replace(w, measure=lambda w, s, proc, port, args: loads.append(args) or {})
            for s in w.servers:
                touched.clear()
                args = argparse.Namespace(warmup=0.5, seconds=5.0, on_window=object())
                record = self.loads.warm_up(w, s, FakeProcess(1), 4321, args)
                self.assertEqual(touched, [("udp" if w.name == "udp" else "tcp", 4321)], (w.name, s.label))
                if w.name.startswith("idle-"):
                    # idle memory is what a fresh server grows by: only the connection, no load
                    self.assertEqual(loads, [])
                    self.assertEqual(record, {"warmup_touches": 1, "warmup_seconds": 0.0})
                else:
                    self.assertEqual([(a.seconds, a.on_window) for a in loads], [(0.5, None)], (w.name, s.label))
                    self.assertEqual(record, {"warmup_touches": 1, "warmup_seconds": 0.5})
                loads.clear()

    def test_no_warm_up_when_asked_for_none(self) -> None:
        self.patch(self.loads, "touch", lambda transport, port: self.fail("touched"))
        w = dataclasses.replace(self.workloads[0], measure=lambda *a: self.fail("loaded"))
        record = self.loads.warm_up(w, w.servers[0], FakeProcess(1), 1, argparse.Namespace(warmup=0.0))
        self.assertEqual(record["warmup_touches"], 0)


class Recorder(protocol.Protocol):
    def __init__(self, ended: Deferred[BaseException]) -> None:
        self.ended = ended

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.ended.callback(reason.value)


class Datagrams(protocol.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append(datagram)
        self.transport.write(datagram, addr)


class TouchTests(TestCase):
    """What the warm-up does on the wire, against real sockets."""

    def setUp(self) -> None:
        self.loads = bench_module("loads")

    async def test_tcp_opens_a_connection_and_ends_it_cleanly(self) -> None:
        ended: Deferred[BaseException] = Deferred()
        factory = protocol.Factory.forProtocol(lambda: Recorder(ended))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        await threads.deferToThread(self.loads.touch, "tcp", port.getHost().port)
        self.assertIsInstance(await ended, ConnectionDone)  # the client ended its stream cleanly

    async def test_udp_sends_an_empty_datagram_then_waits_for_an_echo(self) -> None:
        echo = Datagrams()
        port = reactor.listenUDP(0, echo, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        await threads.deferToThread(self.loads.touch, "udp", port.getHost().port)
        self.assertEqual(echo.received[:2], [b"", b"w" * 64])
