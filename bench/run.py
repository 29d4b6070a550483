"""Every benchmark in one run: each workload against myservices and its minimal baselines, the same load,
the same invocation; a table, a chart and BENCHMARKS.md.

    .venv/bin/python bench/run.py                    # full: median of 3 runs, about 20 minutes
    .venv/bin/python bench/run.py --runs 5 --only echo-64,udp
    .venv/bin/python bench/run.py --smoke --output /tmp/bench   # each workload for a second (CI)
    .venv/bin/python bench/run.py --only chat-1,chat-8 --update   # replace those rows of the last results

For each run of each server: a fresh server process (pinned, every thread, to
core 0), warmed up (a connection opened and closed, or for UDP an empty
datagram, then the workload's own load for a second, not measured: see
loads.warm_up), then the load generator (pinned to core 1): the compiled
`loadgen.c` for TCP, UDP, WebSocket and framed JSON, wrk for HTTP, Python for
the chat fan-out and PB. Reported per server, median of the runs: operations
per second, server CPU-µs per operation (utime + stime from /proc/PID/stat
over the measured window, divided by the operations), RSS at the end, and
the ratios to the workload's baseline (a minimal server on the same stack).
Loopback only; every load is bounded in time and count.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import HERE, pin, stop  # noqa: E402
from loads import warm_up  # noqa: E402
from report import machine, table, write_report  # noqa: E402
from workloads import Workload, start, workloads  # noqa: E402

REPO = HERE.parent


def run(selected: list[Workload], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every server of every selected workload, C{args.runs} times, each warmed up and then measured; the
    medians and ratios, one row per workload and server."""
    rows = []
    total = sum(len(w.servers) for w in selected) * args.runs
    done = 0
    for w in selected:
        results: dict[str, list[dict[str, float]]] = {}
        for run_index in range(args.runs):
            for s in w.servers:  # interleaved, so a slow phase of the machine hits every server alike
                workdir = tempfile.mkdtemp(prefix="myservices-bench-", dir=args.workdir)
                proc, port = start(s, workdir)
                try:
                    pin(proc.pid, 0)
                    warm = warm_up(w, s, proc, port, args)
                    result = {**w.measure(w, s, proc, port, args), **warm}
                finally:
                    stop(proc)
                    shutil.rmtree(workdir, ignore_errors=True)
                results.setdefault(s.label, []).append(result)
                done += 1
                figure = (f"{result['kib_per_conn']:.1f} KiB/connection" if "kib_per_conn" in result
                          else f"{result['ops_s']:,.0f} {w.unit}s/s, {result['cpu_us']:.2f} CPU-us/{w.unit}")
                print(f"[{done}/{total}] {w.name} run {run_index + 1}: {s.label}: {figure}", file=sys.stderr, flush=True)
        medians = {label: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for label, runs in results.items()}
        base = medians[next(s.label for s in w.servers if s.baseline)]
        for s in w.servers:
            m = medians[s.label]
            row = {"workload": w.name, "what": w.what, "unit": w.unit, "server": s.label, "baseline": s.baseline,
                   "stack": s.stack, **m}
            if "kib_per_conn" in m:
                row["ratio"] = m["kib_per_conn"] / base["kib_per_conn"] if base["kib_per_conn"] > 0 else float("nan")
            else:
                row["ratio"] = m["cpu_us"] / base["cpu_us"]
                row["ops_ratio"] = m["ops_s"] / base["ops_s"]
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per server (the median is reported)")
    parser.add_argument("--seconds", type=float, default=5.0, help="load per run")
    parser.add_argument("--max-ops", type=int, default=10_000_000, help="stop a run after this many operations")
    parser.add_argument("--warmup", type=float, help="seconds of unmeasured load before each measured one, after a "
                        "connection opened and closed (default 1, 0.2 with --smoke); 0: no warm-up at all, to see "
                        "the artifact it removes (bench/README.md)")
    parser.add_argument("--only", help="comma-separated workload names")
    parser.add_argument("--smoke", action="store_true", help="every workload once, for about a second, few connections")
    parser.add_argument("--output", help="directory for BENCHMARKS.md, benchmarks.png and benchmarks.json "
                        "(default: BENCHMARKS.md, docs/benchmarks.png and bench/results/ in the repository)")
    parser.add_argument("--update", action="store_true",
                        help="with --only: replace those workloads' rows in the last results and keep the others "
                        "(after a change that concerns only them)")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: rewrite BENCHMARKS.md and the chart from the last results (after "
                        "editing the template)")
    args = parser.parse_args()
    if args.output:
        out, chart_path, data_path = (Path(args.output) / n for n in ("BENCHMARKS.md", "benchmarks.png", "benchmarks.json"))
    else:
        out, chart_path = REPO / "BENCHMARKS.md", REPO / "docs" / "benchmarks.png"
        data_path = REPO / "bench" / "results" / "benchmarks.json"
    if args.report_only:
        write_report(json.loads(data_path.read_text()), out, chart_path)
        return
    if args.smoke:
        args.runs, args.seconds = 1, 1.0
    if args.warmup is None:
        args.warmup = 0.2 if args.smoke else 1.0
    scale = 0.1 if args.smoke else 1.0
    args.conns = lambda n: max(2, int(n * scale))
    # idle-* opens thousands of sockets: raise the soft limit (children inherit it)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    all_workloads = workloads()
    selected = [w for w in all_workloads if not args.only or w.name in args.only.split(",")]
    if not selected:
        raise SystemExit(f"no such workload; known: {', '.join(w.name for w in all_workloads)}")
    args.workdir = tempfile.mkdtemp(prefix="myservices-bench-")
    try:
        print(f"{len(selected)} workloads x {args.runs} runs, {args.seconds:g} s each after {args.warmup:g} s of "
              f"warm-up; server on core 0, load on core 1; {machine()}", file=sys.stderr, flush=True)
        rows = run(selected, args)
    finally:
        shutil.rmtree(args.workdir, ignore_errors=True)
    print(table(rows))
    meta = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "runs": args.runs, "seconds": args.seconds,
            "warmup": args.warmup, "command": " ".join(["bench/run.py", *sys.argv[1:]])}
    if args.update and data_path.exists():
        last = json.loads(data_path.read_text())
        order = {w.name: i for i, w in enumerate(all_workloads)}
        names = {w.name for w in selected}
        kept = [r for r in last["rows"] if r["workload"] not in names]
        rows = sorted(kept + rows, key=lambda r: order.get(r["workload"], len(order)))
        meta = {**last["meta"], "date": f"{last['meta']['date']}, {', '.join(sorted(names))} again {meta['date']}",
                "command": f"{last['meta']['command']}, then {meta['command']}"}
    result = {"meta": meta, "rows": rows}
    data_path.parent.mkdir(parents=True, exist_ok=True)
    data_path.write_text(json.dumps(result, indent=1) + "\n")
    write_report(result, out, chart_path)


if __name__ == "__main__":
    main()
