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
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STALL_SECONDS = 2.0


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def start_myservices(workdir: str) -> tuple[subprocess.Popen, int]:
    config = Path(workdir) / "bench.toml"
    config.write_text('[daemon]\ndata_dir = "state"\n[services.echo]\nendpoint = "tcp:0:interface=127.0.0.1"\n')
    notify_path = os.path.join(workdir, "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(60)
    twistd = Path(sys.executable).parent / "twistd"
    env = dict(os.environ, NOTIFY_SOCKET=notify_path)
    proc = subprocess.Popen(
        [str(twistd), "-n", "--pidfile=", "myservices", "--config", str(config)],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    fields = dict(line.split("=", 1) for line in notify.recv(4096).decode().splitlines())
    notify.close()
    port = int(fields["STATUS"].split("echo=")[1].split(",")[0].rsplit(":", 1)[1])
    return proc, port


def start_baseline(workdir: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "baselines" / "seed_echo.py")], cwd=workdir, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def run_once(name: str, limit: int) -> tuple[int, int]:
    workdir = tempfile.mkdtemp(prefix="myservices-bench-")
    start = start_myservices if name == "myservices" else start_baseline
    proc, port = start(workdir)
    try:
        before = rss_bytes(proc.pid)
        result: dict[str, int] = {}
        sent = flood_and_measure(port, limit, proc.pid, result)
        return sent, result["after"] - before
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


def flood_and_measure(port: int, limit: int, pid: int, result: dict[str, int]) -> int:
    chunk = b"x" * 65536
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setblocking(False)
        deadline = time.monotonic() + 120
        while sent < limit and time.monotonic() < deadline:
            _, writable, _ = select.select([], [sock], [], STALL_SECONDS)
            if not writable:
                break
            try:
                sent += sock.send(chunk[: limit - sent])
            except BlockingIOError:
                continue
        result["after"] = rss_bytes(pid)
    return sent


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
