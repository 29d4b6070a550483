"""Shared by the benchmarks: starting servers, reading their CPU time and memory, pinning cores."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def pin(pid: int, core: int) -> None:
    """Keep server and load generator on different cores where the machine has two.

    Every thread of the process is pinned (a database pool's threads exist
    before the process can be pinned, and would not inherit it).
    """
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:
        cpus = {core % os.cpu_count()}
        tasks = Path(f"/proc/{pid}/task")
        for tid in [int(t.name) for t in tasks.iterdir()] if pid and tasks.exists() else [pid]:
            try:
                os.sched_setaffinity(tid, cpus)
            except ProcessLookupError:
                pass  # the thread has just ended


def start_myservices(workdir: str, config_text: str) -> tuple[subprocess.Popen, dict[str, int]]:
    """Run twistd myservices on C{config_text}; returns the process and {service: bound port}."""
    config = Path(workdir) / "bench.toml"
    config.write_text(config_text)
    notify_path = os.path.join(workdir, "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(60)
    twistd = Path(sys.executable).parent / "twistd"
    proc = subprocess.Popen(
        [str(twistd), "-n", "--pidfile=", "myservices", "--config", str(config)],
        cwd=workdir, env=dict(os.environ, NOTIFY_SOCKET=notify_path),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    notify.settimeout(1)
    deadline = time.monotonic() + 60
    while True:
        try:
            message = notify.recv(4096)
            break
        except TimeoutError:
            if proc.poll() is not None or time.monotonic() > deadline:
                notify.close()
                raise RuntimeError(f"myservices did not start (exit status {proc.poll()}); config:\n{config_text}")
    fields = dict(line.split("=", 1) for line in message.decode().splitlines())
    notify.close()
    ports = {}
    # "serving NAME=ADDRESS, ...", and with workers "; N of M workers ready" after it
    for item in fields["STATUS"].removeprefix("serving ").split(";")[0].split(", "):
        name, address = item.split("=", 1)
        ports[name] = int(address.rsplit(":", 1)[1])
    return proc, ports


def start_script(workdir: str, script: str, *args: str) -> tuple[subprocess.Popen, int]:
    """Run a baseline server script that prints its port."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "baselines" / script), *args], cwd=workdir, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextmanager
def serving(name: str, config_text: str, service: str, baseline: str) -> Iterator[tuple[subprocess.Popen, int]]:
    """L{start_server} in a fresh working directory; stops the server and removes the directory after."""
    workdir = tempfile.mkdtemp(prefix="myservices-bench-")
    proc, port = start_server(name, workdir, config_text, service, baseline)
    try:
        yield proc, port
    finally:
        stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def start_server(name: str, workdir: str, config_text: str, service: str, baseline: str) -> tuple[subprocess.Popen, int]:
    """Start myservices (C{name} "myservices") or the baseline script; returns the process and port."""
    if name == "myservices":
        proc, ports = start_myservices(workdir, config_text)
        return proc, ports[service]
    return start_script(workdir, baseline)

