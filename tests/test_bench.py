"""The benchmark harness in its smoke mode: every workload runs for about a second against every server,
so bench/run.py never rots. Numbers are not checked (goals live in BENCHMARKS.md, not in tests)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest
from twisted.trial.unittest import SkipTest, TestCase

from tests.support import REPO, ci

pytestmark = pytest.mark.bench

# the baselines' libraries and the chart's, from the bench extra
BENCH_EXTRA = ("aiohttp", "uvloop", "websockets", "matplotlib")


def missing(message: str) -> None:
    """Skip saying what to install; under CI=true, fail instead."""
    if ci():
        raise AssertionError(message)
    raise SkipTest(message)


class BenchSmokeTests(TestCase):
    timeout = 900

    def test_every_workload_runs_against_its_baselines(self) -> None:
        absent = [name for name in BENCH_EXTRA if importlib.util.find_spec(name) is None]
        if absent:
            missing(f"{', '.join(absent)} missing: pip install -e '.[test,bench]' (the bench extra)")
        for tool, package in (("wrk", "wrk"), ("cc", "gcc")):
            if shutil.which(tool) is None:
                missing(f"{tool} is missing: apt-get install {package}")
        out = self.mktemp()
        result = subprocess.run(
            [sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--output", out],
            capture_output=True, text=True, timeout=840,
        )
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        with open(f"{out}/benchmarks.json") as f:
            rows = json.load(f)["rows"]
        workloads = {r["workload"] for r in rows}
        self.assertEqual(workloads, {"echo-64", "echo-16k", "udp", "chat-1", "chat-8", "http", "ws-64", "ws-16k",
                                     "framed", "pb", "idle-tcp", "idle-ws"})
        for name in workloads:
            mine = [r for r in rows if r["workload"] == name]
            self.assertEqual(sum(r["baseline"] for r in mine), 1, name)
            self.assertTrue(any(r["server"].startswith("myservices") for r in mine), name)
            for r in mine:
                self.assertGreater(r.get("kib_per_conn", r["ops_s"]), 0, r)
                # each server was warmed up before it was measured (tests/test_bench_warmup.py tests how)
                self.assertEqual(r["warmup_touches"], 1, r)
                self.assertEqual(r["warmup_seconds"] > 0, not name.startswith("idle-"), r)
        report = open(f"{out}/BENCHMARKS.md").read()
        self.assertIn("| echo-64 | myservices echo |", report)
        self.assertIn("](./benchmarks.png)", report)
        self.assertIn("| echo-64 | asyncio echo | ", report.split("## Against asyncio")[1])  # computed from the rows
        self.assertNotRegex(report, r"\{[a-z_]+(:[^}]*)?\}")  # every placeholder of the template filled
        with open(f"{out}/benchmarks.png", "rb") as png:
            self.assertEqual(png.read(8), b"\x89PNG\r\n\x1a\n")


class ScalingSmokeTests(TestCase):
    timeout = 600

    def test_the_scale_out_benchmark_runs(self) -> None:
        for tool, package in (("wrk", "wrk"), ("redis-server", "redis-server"), ("redis-benchmark", "redis-tools")):
            if shutil.which(tool) is None:
                missing(f"{tool} is missing: apt-get install {package}")
        result = subprocess.run(
            [sys.executable, str(REPO / "bench" / "scaling.py"), "--smoke"], capture_output=True, text=True, timeout=540
        )
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        for line in ("| redis | 2 |", "| 2 |", "| 16 |"):
            self.assertIn(line, result.stdout)
