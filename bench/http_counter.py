"""HTTP counter: the durable counter (group commit to SQLite or MySQL) against the seeds' in-memory counter.

wrk drives each server with the same load in the same invocation (default
50 connections, 2 threads, 5 seconds). Reported per server, median of several
runs: requests per second, server CPU-us per request (utime + stime from
/proc/PID/stat over the run, divided by the requests wrk completed) and RSS,
and each figure's ratio to the in-memory baseline. Server and wrk are pinned
to different cores. Needs wrk (Debian: apt-get install wrk).

    .venv/bin/python bench/http_counter.py [--runs 3] [--duration 5] [--connections 50] [--mysql URL] [--access-log]

Loopback only; every run is bounded by --duration.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import urllib.request

from common import cpu_seconds, pin, rss_bytes, serving

CONFIG = """
[daemon]
data_dir = "state"
reactor_lag_interval = 0
[database]
url = "{url}"
pool_max = 5
[services.http]
endpoint = "tcp:0:interface=127.0.0.1:backlog=1024"
max_connections = 10000
access_log = {access_log}
"""


def run_wrk(port: int, duration: float, connections: int) -> tuple[int, float, int]:
    """(requests completed, seconds, non-2xx or socket errors)."""
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True, timeout=duration + 60,
    ).stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out)
    if not m:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    seconds = float(m.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m.group(3)]
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"):
        e = re.search(pattern, out)
        if e:
            errors += sum(int(g) for g in e.groups())
    return int(m.group(1)), seconds, errors


def measure(name: str, args: argparse.Namespace) -> dict[str, float]:
    url = args.mysql or "sqlite:///counter.sqlite3"
    config = CONFIG.format(url=url, access_log="true" if args.access_log else "false")
    with serving(name, config, "http", "seed_counter.py") as (proc, port):
        pin(proc.pid, 0)
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read()  # warm: schema, first batch
        cpu0 = cpu_seconds(proc.pid)
        requests, seconds, errors = run_wrk(port, args.duration, args.connections)
        cpu = cpu_seconds(proc.pid) - cpu0
        rss = rss_bytes(proc.pid)
        if errors:
            raise RuntimeError(f"{name}: {errors} failed requests")
        return {"rps": requests / seconds, "cpu_us": cpu / requests * 1e6, "rss_mb": rss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--mysql", help="mysql://... URL for the durable counter (default: SQLite)")
    parser.add_argument("--access-log", action="store_true", help="turn the daemon's access log on")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    # wrk on the other core; the server processes get pinned to core 0
    pin(0, 1)
    results: dict[str, list[dict[str, float]]] = {"seed in-memory counter": [], "myservices durable counter": []}
    for run in range(args.runs):
        for label, name in (("seed in-memory counter", "seed"), ("myservices durable counter", "myservices")):
            r = measure(name, args)
            results[label].append(r)
            print(f"run {run + 1}/{args.runs} {label}: {r['rps']:.0f} req/s, {r['cpu_us']:.1f} CPU-us/req,"
                  f" {r['rss_mb']:.1f} MB", file=sys.stderr, flush=True)
    median = {label: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for label, rs in results.items()}
    base = median["seed in-memory counter"]
    print(f"\nHTTP counter, wrk -t2 -c{args.connections} -d{args.duration:g}s, median of {args.runs}"
          f" ({'MySQL' if args.mysql else 'SQLite'}{', access log on' if args.access_log else ''})")
    print(f"{'server':30} {'req/s':>9} {'ratio':>6} {'CPU-us/req':>11} {'ratio':>6} {'RSS MB':>7}")
    for label, m in median.items():
        print(f"{label:30} {m['rps']:9.0f} {m['rps'] / base['rps']:6.2f} {m['cpu_us']:11.1f}"
              f" {m['cpu_us'] / base['cpu_us']:6.2f} {m['rss_mb']:7.1f}")


if __name__ == "__main__":
    main()
