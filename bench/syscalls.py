"""System calls per operation of every server of bench/run.py, counted by `strace -c -f` around the measured
window: the evidence behind the figures (an allocator that maps and unmaps memory per message, a reactor
that re-arms epoll per write).

    .venv/bin/python bench/syscalls.py                     # every workload but idle-*, warmed up as run.py does
    .venv/bin/python bench/syscalls.py --only echo-64 --warmup 0   # without the warm-up: the asyncio artifact

Each server runs as in bench/run.py (fresh process, pinned to core 0, the same warm-up), then strace attaches
to every thread of it, the load runs for --seconds, strace detaches, and its counts are divided by the
operations completed. Under strace the server is several times slower: the counts per operation are what
this reports, not speed. Needs strace (Debian: apt-get install strace) and ptrace rights over the server.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import pin, stop  # noqa: E402
from loads import warm_up  # noqa: E402
from workloads import Workload, start, workloads  # noqa: E402

# the calls each column groups; the rest are summed in "other"
COLUMNS = {
    "receive": ("read", "recvfrom", "recvmsg", "recvmmsg", "readv"),
    "send": ("write", "sendto", "sendmsg", "sendmmsg", "writev"),
    "epoll_wait": ("epoll_wait", "epoll_pwait", "epoll_pwait2", "select", "poll"),
    "epoll_ctl": ("epoll_ctl",),
    "mmap/mremap/munmap": ("mmap", "mremap", "munmap"),
    "brk": ("brk",),
    "futex": ("futex",),
}


def strace_window(out: Path) -> Callable[[int], Callable[[], None]]:
    """An C{args.on_window} for loads.open_window: strace -c on every thread of the server for the window."""

    def begin(pid: int) -> Callable[[], None]:
        tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", str(out)],
                                  stderr=subprocess.PIPE, text=True)
        assert tracer.stderr is not None
        while "attached" not in (line := tracer.stderr.readline()):  # "Process N attached [with M threads]"
            if not line:
                raise RuntimeError(f"strace could not attach to {pid}: exit status {tracer.wait()}")

        def end() -> None:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=60)

        return end

    return begin


def parse_counts(text: str) -> dict[str, int]:
    """{syscall: calls} from the summary strace -c writes."""
    counts = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            counts[fields[-1]] = int(fields[3])
    return counts


def per_op(counts: dict[str, int], ops: int) -> dict[str, float]:
    """The counts grouped into COLUMNS (and "other", "total"), per operation."""
    grouped = {name: sum(counts.get(c, 0) for c in calls) / ops for name, calls in COLUMNS.items()}
    known = {c for calls in COLUMNS.values() for c in calls}
    grouped["other"] = sum(n for c, n in counts.items() if c not in known) / ops
    grouped["total"] = sum(counts.values()) / ops
    return grouped


def measure(w: Workload, args: argparse.Namespace) -> list[tuple[str, int, dict[str, float], dict[str, int]]]:
    """Each server of C{w} once: (label, operations, per-op columns, raw counts)."""
    rows = []
    for s in w.servers:
        workdir = tempfile.mkdtemp(prefix="myservices-bench-", dir=args.workdir)
        out = Path(workdir) / "strace.txt"
        proc, port = start(s, workdir)
        try:
            pin(proc.pid, 0)
            warm_up(w, s, proc, port, args)
            result = w.measure(w, s, proc, port, argparse.Namespace(**{**vars(args), "on_window": strace_window(out)}))
            counts = parse_counts(out.read_text())
        finally:
            stop(proc)
            shutil.rmtree(workdir, ignore_errors=True)
        ops = int(result["ops"])
        rows.append((s.label, ops, per_op(counts, ops), counts))
        top = ", ".join(f"{c} {n / ops:.2f}" for c, n in sorted(counts.items(), key=lambda item: -item[1])[:8])
        print(f"{w.name}: {s.label}: {ops} ops, per op: {top}", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    """Parse the options, run, print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="load under strace per server")
    parser.add_argument("--warmup", type=float, default=1.0, help="as bench/run.py's (0: none at all)")
    parser.add_argument("--chat-lines", type=int, default=200,
                        help="lines per chat fan-out run (each reaches 101 sockets; the server is slow under strace)")
    parser.add_argument("--only", help="comma-separated workload names")
    args = parser.parse_args()
    if shutil.which("strace") is None:
        raise SystemExit("strace is missing (Debian: apt-get install strace)")
    args.max_ops, args.conns = 10_000_000, lambda n: n
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    selected = [w for w in workloads() if w.warm_load and (not args.only or w.name in args.only.split(","))]
    args.workdir = tempfile.mkdtemp(prefix="myservices-bench-")
    print("| workload | server | ops | " + " | ".join(COLUMNS) + " | other | total (per op) |")
    print("| --- " * (len(COLUMNS) + 5) + "|")
    try:
        for w in selected:
            for label, ops, columns, counts in measure(w, args):
                cells = " | ".join(f"{v:.2f}" for v in columns.values())
                print(f"| {w.name} | {label} | {ops:,} | {cells} |", flush=True)
    finally:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
