"""How much server memory a client that sends and never reads can consume.

For each server (myservices' echo, and the seeds' minimal Twisted echo as the
baseline), a client sends up to 200 MB without reading, until it has sent it
all or the server has stopped taking data for 2 seconds. The figure is the
growth of the server's resident memory (VmRSS), median of several runs.

    .venv/bin/python bench/echo_backpressure.py [--runs 3] [--megabytes 200]

Loopback only; every loop is bounded in bytes and time.
"""

from __future__ import annotations

import argparse
import select
import socket
import statistics
import sys
import time

from common import rss_bytes, serving

STALL_SECONDS = 2.0
CONFIG = '[daemon]\ndata_dir = "state"\n[services.echo]\nendpoint = "tcp:0:interface=127.0.0.1"\n'


def flood(port: int, limit: int, pid: int) -> tuple[int, int]:
    """Send up to C{limit} bytes without reading; stop when the server stalls. Returns (sent, RSS then)."""
    chunk = b"x" * 65536
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setblocking(False)
        deadline = time.monotonic() + 120
        while sent < limit and time.monotonic() < deadline:
            _, writable, _ = select.select([], [sock], [], STALL_SECONDS)
            if not writable:
                break  # the server stopped taking data
            try:
                sent += sock.send(chunk[: limit - sent])
            except BlockingIOError:
                continue
        return sent, rss_bytes(pid)  # measured while the connection is still open


def run_once(name: str, limit: int) -> tuple[int, int]:
    with serving(name, CONFIG, "echo", "seed_echo.py") as (proc, port):
        before = rss_bytes(proc.pid)
        sent, after = flood(port, limit, proc.pid)
        return sent, after - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--megabytes", type=int, default=200)
    args = parser.parse_args()
    limit = args.megabytes * 1_000_000
    print(f"client sends up to {args.megabytes} MB without reading; median of {args.runs} runs")
    print(f"{'server':<12} {'sent MB':>9} {'RSS growth MB':>14}")
    for name in ("myservices", "seed-echo"):
        sent, growth = [], []
        for i in range(args.runs):
            s, g = run_once(name, limit)
            sent.append(s)
            growth.append(g)
            print(f"  {name} run {i + 1}: sent {s / 1e6:.1f} MB, RSS +{g / 1e6:.1f} MB", file=sys.stderr, flush=True)
        print(f"{name:<12} {statistics.median(sent) / 1e6:>9.1f} {statistics.median(growth) / 1e6:>14.1f}")


if __name__ == "__main__":
    main()
