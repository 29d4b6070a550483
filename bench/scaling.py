"""Scale-out: the chat fan-out and the HTTP counter with 1 and 2 workers, and the Redis engine's cost per publish.

Each configuration is a fresh daemon (`twistd myservices`, its supervisor and
workers) on a private redis-server, measured the same way in the same run,
median of several runs:

- chat fan-out: `--members` line-chat members (spread over the workers by the
  kernel, SO_REUSEPORT) and `--publishers` publishers, each keeping
  `--window` lines in flight, send `--lines` lines in all (`/pub`: they are
  not members); reported:
  delivered lines per second, and CPU-µs per delivered line of the whole
  daemon (supervisor and workers), of Redis, and of both;
- Redis operations per publish (INFO commandstats over the window);
- HTTP counter: wrk against `GET /` (the durable counter) with 1 and 2 workers;
- Redis alone: how many publishes per second one Redis server runs (the
  engine's publish script through redis-benchmark), with 0 to 16 processes
  subscribed to the room: where Redis saturates.

Nothing is pinned: the load generator, Redis and the workers share the
machine's cores, as they would on a small host; the CPU figures (per
operation) do not depend on that, the rates do. See docs/scaling.md.

    .venv/bin/python bench/scaling.py [--runs 3] [--lines 20000] [--members 100]

Loopback only; every loop is bounded in count and time. Needs redis-server and wrk.
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import CLOCK_TICKS, cpu_seconds, start_myservices, stop  # noqa: E402

from myservices.hub.redis import scripts  # noqa: E402
from myservices.hub.redis.codec import message_prefix  # noqa: E402

CONFIG = """
[daemon]
data_dir = "state"
workers = {workers}
[database]
url = "{database}"
[hub]
engine = "{engine}"
redis_url = "redis://127.0.0.1:{redis_port}/0"
publish_rate = 1000000.0
publish_burst = 1000000
max_pending = 16777216
[services.chat]
endpoint = "tcp:0:interface=127.0.0.1"
max_connections = 100000
[services.http]
endpoint = "tcp:0:interface=127.0.0.1"
max_connections = 100000
"""
TEXT = "x" * 40
DATABASE = ["sqlite:///bench.sqlite3"]  # --mysql replaces it


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and every process under it (the supervisor and its workers)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # it has just ended
            parents[int(entry.name)] = int(fields[1])
    family, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in family:
                family.add(child)
                frontier.append(child)
    total = 0.0
    for p in family:
        try:
            total += cpu_seconds(p)
        except OSError:
            pass
    return total


class Redis:
    """A private redis-server without persistence, on a free port."""

    def __init__(self, workdir: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", workdir], stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while self.cli("PING").strip() != "PONG":
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)  # a start-up poll, not synchronisation of the measured work

    def cli(self, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True).stdout

    def calls(self) -> tuple[int, int]:
        """Scripts called (one round trip each) and commands run, those inside scripts included (INFO commandstats)."""
        stats = self.cli("INFO", "commandstats")
        scripts = sum(int(m) for m in re.findall(r"cmdstat_eval(?:sha)?:calls=(\d+)", stats))
        commands = sum(int(m) for m in re.findall(r"calls=(\d+)", stats))
        return scripts, commands - scripts


@contextmanager
def daemon(engine: str, workers: int, redis: Redis) -> Iterator[tuple[subprocess.Popen, dict[str, int]]]:
    workdir = tempfile.mkdtemp(prefix="myservices-scaling-")
    text = CONFIG.format(engine=engine, workers=workers, redis_port=redis.port, database=DATABASE[0])
    proc, ports = start_myservices(workdir, text)
    try:
        yield proc, ports
    finally:
        stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
        redis.cli("FLUSHALL")


def connect(port: int, n: int, join: bool) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"/join lobby\n" if join else b"/help\n")
        socks.append(s)
    for s in socks:
        buf = b""
        s.settimeout(30)
        while (b"OK join lobby" if join else b"END help") not in buf:
            buf += s.recv(65536)
        s.setblocking(False)
    return socks


def fan_out(port: int, members: int, publishers: int, lines: int, window: int) -> tuple[int, float]:
    """C{publishers} connections (not members: /pub) send C{lines} lines, C{window} in flight each, to
    C{members} members; (lines delivered to the members, seconds).

    The line chat answers a connection's commands in order, each once it is stored and delivered,
    so the rate a publisher reaches is one over a publish's latency: many publishers make the load.
    """
    socks = connect(port, members, join=True) + connect(port, publishers, join=False)
    senders = socks[members:]
    payload = f"/pub lobby {TEXT}\r\n".encode()
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, i)
    received = [0] * members
    acked = [0] * publishers
    sent = [0] * publishers
    tails = [b""] * len(socks)
    share = lines // publishers
    t0 = time.monotonic()
    deadline = t0 + 300
    for p, s in enumerate(senders):
        while sent[p] < min(window, share):
            s.sendall(payload)
            sent[p] += 1
    while min(received) < share * publishers and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1.0):
            i = key.data
            try:
                data = key.fileobj.recv(1 << 20)
            except BlockingIOError:
                continue
            data = tails[i] + data
            cut = data.rfind(b"\n") + 1
            tails[i] = data[cut:]
            if i < members:
                received[i] += data[:cut].count(b"MSG lobby")
                continue
            p = i - members
            acked[p] += data[:cut].count(b"OK pub")
            while sent[p] < share and sent[p] - acked[p] < window:
                key.fileobj.sendall(payload)
                sent[p] += 1
    elapsed = time.monotonic() - t0
    sel.close()
    for s in socks:
        s.close()
    if min(received) < share * publishers:
        raise RuntimeError(f"timed out: {min(received)} of {share * publishers} lines reached every member")
    return sum(received), elapsed


def measure_chat(engine: str, workers: int, redis: Redis, args: argparse.Namespace) -> dict[str, float]:
    with daemon(engine, workers, redis) as (proc, ports):
        # warm-up: every worker has loaded the room and its code paths
        fan_out(ports["chat"], 10, args.publishers, 20 * args.publishers, args.window)
        redis_pid = redis.proc.pid
        cpu0, rcpu0, calls0 = tree_cpu_seconds(proc.pid), cpu_seconds(redis_pid), redis.calls()
        own0 = sum(os.times()[:2])
        delivered, seconds = fan_out(ports["chat"], args.members, args.publishers, args.lines, args.window)
        cpu, rcpu = tree_cpu_seconds(proc.pid) - cpu0, cpu_seconds(redis_pid) - rcpu0
        own = sum(os.times()[:2]) - own0
        scripts, commands = (b - a for a, b in zip(calls0, redis.calls()))
        published = delivered / args.members
        return {
            "lines/s": delivered / seconds,
            "daemon us/line": cpu / delivered * 1e6,
            "daemon us/publish": cpu / published * 1e6,
            "redis us/publish": rcpu / published * 1e6,
            "redis scripts/publish": scripts / published,
            "redis commands/publish": commands / published,
            # how busy the machine was: daemon + Redis + this load generator, in cores
            "cores busy": (cpu + rcpu + own) / seconds,
            "load generator cores": own / seconds,
        }


def measure_http(workers: int, redis: Redis, args: argparse.Namespace) -> dict[str, float]:
    with daemon("redis", workers, redis) as (proc, ports):  # the chat idles; memory would refuse workers
        port = ports["http"]
        subprocess.run(["wrk", "-t1", "-c8", "-d1s", f"http://127.0.0.1:{port}/"], capture_output=True, check=True)
        cpu0 = tree_cpu_seconds(proc.pid)
        out = subprocess.run(
            ["wrk", "-t2", f"-c{args.connections}", f"-d{args.duration}s", f"http://127.0.0.1:{port}/"],
            capture_output=True, text=True, check=True, timeout=args.duration + 60,
        ).stdout
        cpu = tree_cpu_seconds(proc.pid) - cpu0
        m = re.search(r"(\d+) requests in ([\d.]+)s", out)
        if not m or "Non-2xx" in out:
            raise RuntimeError(f"wrk: {out}")
        requests, seconds = int(m.group(1)), float(m.group(2))
        return {"requests/s": requests / seconds, "daemon us/request": cpu / requests * 1e6}


def redis_saturation(redis: Redis, subscribers: int, requests: int) -> float:
    """Publishes per second one Redis server runs: the engine's publish script, redis-benchmark, pipelined.

    The room is seeded with ids to spare (as the engine does), so every call takes the full path:
    next id, XADD to the capped stream, PUBLISH to C{subscribers} listening connections.
    """
    prefix, room = "myservices:", "bench"
    redis.cli("HSET", f"{prefix}room:{room}:meta", "top", "0", "reserved", str(10**15), "base", "0")
    sha = redis.cli("SCRIPT", "LOAD", scripts.PUBLISH).strip()
    listeners = [
        subprocess.Popen(["redis-cli", "-p", str(redis.port), "SUBSCRIBE", f"{prefix}ch:{room}"],
                         stdout=subprocess.DEVNULL)
        for _ in range(subscribers)
    ]
    try:
        payload = message_prefix(room, time.time(), "alice", TEXT)
        out = subprocess.run(
            ["redis-benchmark", "-p", str(redis.port), "-n", str(requests), "-c", "50", "-P", "16", "-q",
             "EVALSHA", sha, "0", prefix, room, "50", payload],
            capture_output=True, text=True, check=True, timeout=300,
        ).stdout
    finally:
        for listener in listeners:
            listener.terminate()
            listener.wait()
        redis.cli("FLUSHALL")
    m = re.search(r"([\d.]+) requests per second", out)
    if not m:
        raise RuntimeError(f"redis-benchmark: {out}")
    return float(m.group(1))


def drop_tables(url: str) -> None:
    """A fresh schema for the run: the daemon migrates it at start."""
    import pymysql  # the daemon's own driver

    m = re.match(r"mysql://([^:@/]+)(?::([^@/]*))?@([^:/]+):(\d+)/(\w+)$", url)
    if not m:
        sys.exit(f"--mysql: expected mysql://USER[:PASSWORD]@HOST:PORT/DATABASE, got {url}")
    user, password, host, port, database = m.groups()
    conn = pymysql.connect(host=host, port=int(port), user=user, password=password or "", database=database)
    with conn.cursor() as cur:
        cur.execute("SET FOREIGN_KEY_CHECKS = 0")
        cur.execute("SHOW TABLES")
        for (table,) in cur.fetchall():
            cur.execute(f"DROP TABLE `{table}`")
    conn.close()


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lines", type=int, default=60000)
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--publishers", type=int, default=256)
    parser.add_argument("--window", type=int, default=1)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--mysql", metavar="URL", help="use this MySQL database (its tables are dropped first)")
    parser.add_argument("--requests", type=int, default=200000, help="redis-benchmark calls per measure")
    parser.add_argument("--only", default="chat,http,redis")
    parser.add_argument("--smoke", action="store_true", help="every measure, tiny (a check that the script runs)")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.lines, args.members, args.duration, args.requests = 1, 400, 5, 1, 2000
        args.publishers = 8
    for tool in ("redis-server", "redis-cli", "redis-benchmark", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (Debian: apt-get install redis-server wrk)")
    if args.mysql:
        DATABASE[0] = args.mysql
        drop_tables(args.mysql)
    workdir = tempfile.mkdtemp(prefix="myservices-redis-")
    redis = Redis(workdir)
    try:
        print(f"# {os.cpu_count()} cores, nothing pinned; median of {args.runs} runs; clock ticks {CLOCK_TICKS}/s")
        if "chat" in args.only:
            print(f"\n## chat fan-out: {args.publishers} publishers x {args.window} in flight -> "
                  f"{args.members} members, {args.lines} lines")
            results = {}
            for engine, workers in (("memory", 1), ("redis", 1), ("redis", 2)):
                runs = [measure_chat(engine, workers, redis, args) for _ in range(args.runs)]
                for i, r in enumerate(runs):
                    print(f"  {engine} x{workers} run {i + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()),
                          file=sys.stderr, flush=True)
                results[(engine, workers)] = median_of(runs)
            keys = list(next(iter(results.values())))
            print("| engine | workers | " + " | ".join(keys) + " |")
            print("| --- | --- |" + " --- |" * len(keys))
            for (engine, workers), r in results.items():
                print(f"| {engine} | {workers} | " + " | ".join(f"{r[k]:.2f}" if r[k] < 10 else f"{r[k]:.0f}"
                                                             for k in keys) + " |")
            one, two = results[("redis", 1)]["lines/s"], results[("redis", 2)]["lines/s"]
            print(f"\nredis, 2 workers / 1 worker: {two / one:.2f}x delivered lines per second")
        if "http" in args.only:
            print(f"\n## HTTP counter: wrk -t2 -c{args.connections} -d{args.duration}s GET /")
            results_http: dict[int, dict[str, Any]] = {}
            for workers in (1, 2):
                runs = [measure_http(workers, redis, args) for _ in range(args.runs)]
                results_http[workers] = median_of(runs)
                print(f"  x{workers}: " + ", ".join(f"{k} {v:.1f}" for k, v in results_http[workers].items()),
                      file=sys.stderr, flush=True)
            print("| workers | requests/s | daemon CPU-us/request |")
            print("| --- | --- | --- |")
            for workers, r in results_http.items():
                print(f"| {workers} | {r['requests/s']:.0f} | {r['daemon us/request']:.1f} |")
            print(f"\n2 workers / 1 worker: {results_http[2]['requests/s'] / results_http[1]['requests/s']:.2f}x")
        if "redis" in args.only:
            print("\n## Redis alone: the publish script, redis-benchmark -c50 -P16 (one Redis core)")
            print("| processes subscribed to the room | publishes/s |")
            print("| --- | --- |")
            for subscribers in (0, 1, 4, 16):
                rate = statistics.median(redis_saturation(redis, subscribers, args.requests) for _ in range(args.runs))
                print(f"| {subscribers} | {rate:.0f} |")
    finally:
        redis.proc.terminate()
        redis.proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
