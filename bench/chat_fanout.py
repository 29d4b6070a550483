"""Chat fan-out: server CPU per delivered line, 1 publisher to 100 members.

For each server (myservices' line chat, and the seeds' minimal LineReceiver chat
room as the baseline, run in the same invocation) 100 members connect and one
publisher sends N lines, keeping W of them in flight (it sends the next when
its own copy comes back). The figure is the server's CPU time (utime + stime
from /proc/PID/stat) over the measured window divided by the lines delivered
(N x 101: every member and the publisher get each line), median of several runs.
Server and load generator are pinned to different cores.

    .venv/bin/python bench/chat_fanout.py [--runs 3] [--lines 3000] [--members 100]

Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import statistics
import sys
import time

from common import cpu_seconds, pin, serving

CONFIG = """
[daemon]
data_dir = "state"
[hub]
publish_rate = 1000000.0
publish_burst = 1000000
[services.chat]
endpoint = "tcp:0:interface=127.0.0.1"
max_connections = 10000
"""
TEXT = "x" * 40


def connect_all(port: int, members: int, joins: bool) -> list[socket.socket]:
    socks = []
    for _ in range(members + 1):
        s = socket.create_connection(("127.0.0.1", port))
        if joins:
            s.sendall(b"/join lobby\n")
        socks.append(s)
    # wait until the server serves every member: its "OK join" line, or a first line through the seed chat,
    # sent by the last to connect: the server accepts in connection order, so it reads that line only once
    # it has accepted every member (a server still busy with the connections of a warm-up may not have)
    if not joins:
        socks[-1].sendall(b"warm-up\r\n")
    for s in socks:
        buf = b""
        s.settimeout(30)
        while (b"OK join lobby" if joins else b"warm-up") not in buf:
            buf += s.recv(65536)
    for s in socks:
        s.setblocking(False)
    return socks


def run_once(name: str, members: int, lines: int, window: int) -> tuple[float, float]:
    with serving(name, CONFIG, "chat", "seed_chat.py") as (proc, port):
        pin(proc.pid, 0)
        pin(0, 1)
        socks = connect_all(port, members, joins=name == "myservices")
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        delivered = run_load(socks, lines, window, "msg" if name == "myservices" else "plain")
        cpu = cpu_seconds(proc.pid) - cpu0
        elapsed = time.monotonic() - t0
        for s in socks:
            s.close()
        return cpu / delivered * 1e6, delivered / elapsed


def run_load(socks: list[socket.socket], lines: int, window: int, kind: str) -> int:
    """Publish C{lines} lines, C{window} in flight; count deliveries at every socket."""
    publisher = socks[0]
    payload = (f"/msg lobby {TEXT}\r\n" if kind == "msg" else f"{TEXT}\r\n").encode()
    marker = b"MSG lobby" if kind == "msg" else b"> " + TEXT[:8].encode()
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, i)
    received = [0] * len(socks)
    tails = [b""] * len(socks)
    sent = 0
    deadline = time.monotonic() + 120
    while sent < min(window, lines):
        publisher.sendall(payload)
        sent += 1
    while min(received) < lines and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1.0):
            i = key.data
            try:
                data = key.fileobj.recv(1 << 20)
            except BlockingIOError:
                continue
            data = tails[i] + data
            cut = data.rfind(b"\n") + 1
            tails[i] = data[cut:]
            received[i] += data[:cut].count(marker)
            if i == 0:
                while sent < lines and sent - received[0] < window:
                    publisher.sendall(payload)
                    sent += 1
    sel.close()
    if min(received) < lines:
        raise RuntimeError(f"timed out: {min(received)} of {lines} lines reached every member")
    return sum(received)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lines", type=int, default=3000)
    parser.add_argument("--members", type=int, default=100)
    args = parser.parse_args()
    print(f"1 publisher -> {args.members} members, {args.lines} lines; median of {args.runs} runs; "
          f"server pid pinned to core 0, load to core 1 (of {os.cpu_count()})")
    print(f"{'window':>6} {'server':<12} {'CPU-us/line':>12} {'lines/s':>10} {'ratio':>6}")
    for window in (1, 8):
        medians = {}
        for name in ("seed-chat", "myservices"):
            cpu, rate = [], []
            for i in range(args.runs):
                c, r = run_once(name, args.members, args.lines, window)
                cpu.append(c)
                rate.append(r)
                print(f"  window {window} {name} run {i + 1}: {c:.2f} CPU-us/line, {r:.0f} lines/s",
                      file=sys.stderr, flush=True)
            medians[name] = statistics.median(cpu)
            ratio = medians[name] / medians["seed-chat"]
            print(f"{window:>6} {name:<12} {medians[name]:>12.2f} {statistics.median(rate):>10.0f} {ratio:>6.2f}")


if __name__ == "__main__":
    main()
