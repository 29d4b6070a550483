"""Framed JSON request/reply: server CPU per request against the seeds' minimal framed echo.

C connections each keep W echo requests in flight (a new one is sent as each
reply arrives) until N replies have come back in all. The figure is the
server's CPU time (utime + stime from /proc/PID/stat) over the measured window
divided by the replies, median of several runs; the baseline (the seeds'
12-byte-header protocol as a bare echo, bench/baselines/seed_framed.py) runs
in the same invocation with the same load. Server and load generator are
pinned to different cores.

    .venv/bin/python bench/framed_rpc.py [--runs 3] [--requests 100000] [--connections 10] [--window 16]

Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import statistics
import struct
import sys
import time

from common import cpu_seconds, pin, serving

CONFIG = """
[daemon]
data_dir = "state"
[services.framed]
endpoint = "tcp:0:interface=127.0.0.1"
max_connections = 10000
max_in_flight = 1000
request_rate = 1000000000.0
request_burst = 1000000000
"""
HEADER = struct.Struct("!III")
ECHO = 2


def frame(request_id: int) -> bytes:
    body = json.dumps({"id": request_id, "args": {"data": "x" * 40}}, separators=(",", ":")).encode()
    return HEADER.pack(1, len(body), ECHO) + body


def run_load(port: int, connections: int, window: int, total: int) -> int:
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    sel = selectors.DefaultSelector()
    buffers = [b""] * connections
    sent = received = 0
    ids = [0] * connections
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
        for _ in range(window):
            ids[i] += 1
            s.sendall(frame(ids[i]))
            sent += 1
    deadline = time.monotonic() + 120
    while received < total and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1.0):
            i = key.data
            try:
                data = key.fileobj.recv(1 << 20)
            except BlockingIOError:
                continue
            buf = buffers[i] + data
            pos, n = 0, 0
            while len(buf) - pos >= 12:
                _, size, _ = HEADER.unpack_from(buf, pos)
                if len(buf) - pos < 12 + size:
                    break
                pos += 12 + size
                n += 1
            buffers[i] = buf[pos:]
            received += n
            out = []
            for _ in range(min(n, max(0, total - sent))):
                ids[i] += 1
                out.append(frame(ids[i]))
            if out:
                key.fileobj.sendall(b"".join(out))
                sent += len(out)
    sel.close()
    for s in socks:
        s.close()
    if received < total:
        raise RuntimeError(f"timed out: {received} of {total} replies")
    return received


def run_once(name: str, connections: int, window: int, total: int) -> tuple[float, float]:
    with serving(name, CONFIG, "framed", "seed_framed.py") as (proc, port):
        pin(proc.pid, 0)
        pin(0, 1)
        run_load(port, connections, window, min(total, 2000))  # warm-up
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        done = run_load(port, connections, window, total)
        cpu = cpu_seconds(proc.pid) - cpu0
        return cpu / done * 1e6, done / (time.monotonic() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--window", type=int, default=16)
    args = parser.parse_args()
    print(f"echo requests, {args.connections} connections x {args.window} in flight, {args.requests} replies; "
          f"median of {args.runs} runs; server pinned to core 0, load to core 1 (of {os.cpu_count()})")
    print(f"{'server':<12} {'CPU-us/req':>10} {'req/s':>9} {'ratio':>6}")
    medians: dict[str, float] = {}
    for name in ("seed-framed", "myservices"):
        cpu, rate = [], []
        for i in range(args.runs):
            c, r = run_once(name, args.connections, args.window, args.requests)
            cpu.append(c)
            rate.append(r)
            print(f"  {name} run {i + 1}: {c:.2f} CPU-us/req, {r:.0f} req/s", file=sys.stderr, flush=True)
        medians[name] = statistics.median(cpu)
        print(f"{name:<12} {medians[name]:>10.2f} {statistics.median(rate):>9.0f} "
              f"{medians[name] / medians['seed-framed']:>6.2f}")


if __name__ == "__main__":
    main()
