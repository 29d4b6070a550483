"""The report of bench/run.py: the table, the chart, the targets and the comparison with the other stacks,
computed from the rows, and BENCHMARKS.md written from its template."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from common import HERE

# (workload, what is compared, the limit, "max" or "min", what the target says); a ratio is myservices'
# figure over the workload's baseline in the same run. "cpu": CPU per op; "ops": ops/s; "memory": per connection.
TARGETS: list[tuple[str, str, float, str, str]] = [
    ("echo-64", "cpu", 0.80, "max", "CPU per message at most 0.8x the minimal Twisted echo's"),
    ("echo-16k", "cpu", 0.80, "max", "CPU per message at most 0.8x the minimal Twisted echo's"),
    ("ws-64", "cpu", 0.90, "max", "CPU per message at most 0.9x the minimal autobahn echo's"),
    ("ws-16k", "cpu", 0.90, "max", "CPU per message at most 0.9x the minimal autobahn echo's"),
    ("http", "cpu", 1.00, "max", "CPU per request at most the minimal twisted.web counter's (no access log)"),
    ("http", "ops", 0.85, "min", "durable counter: at least 0.85x the in-memory twisted.web counter's req/s"),
    ("framed", "cpu", 1.15, "max", "CPU per request at most 1.15x the minimal Int32StringReceiver JSON echo's"),
    ("pb", "cpu", 1.15, "max", "CPU per call at most 1.15x the minimal pb.Root's"),
    # "no worse than today": the ratios of the page measured 2026-12-02
    ("chat-1", "cpu", 0.91, "max", "CPU per delivered line no worse than on 2026-12-02 (0.91x the seed chat's)"),
    ("chat-8", "cpu", 0.47, "max", "CPU per delivered line no worse than on 2026-12-02 (0.47x the seed chat's)"),
    # earlier targets the issue left as they were
    ("udp", "cpu", 1.15, "max", "CPU per datagram at most 1.15x the Twisted DatagramProtocol's"),
    ("idle-tcp", "memory", 1.50, "max", "memory per idle connection at most 1.5x the minimal Twisted echo's"),
    ("idle-ws", "memory", 1.50, "max", "memory per idle connection at most 1.5x the minimal autobahn echo's"),
]


def machine() -> str:
    """Cores, CPU model, kernel, Python and Twisted versions."""
    import twisted

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, Python {platform.python_version()}, "
            f"Twisted {twisted.__version__}")


def table(rows: list[dict[str, Any]]) -> str:
    """The results table, one line per workload and server."""
    lines = ["| workload | server | ops/s | CPU-µs per op | RSS MB | ratio to baseline |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        server = r["server"] + (" (baseline)" if r["baseline"] else "")
        if "kib_per_conn" in r:
            lines.append(f"| {r['workload']} | {server} | | {r['kib_per_conn']:.1f} KiB per connection | "
                         f"{r['rss_mb']:.0f} | {r['ratio']:.2f} (memory) |")
        else:
            lines.append(f"| {r['workload']} | {server} | {r['ops_s']:,.0f} | {r['cpu_us']:.2f} | {r['rss_mb']:.0f} | "
                         f"{r['ratio']:.2f} (CPU), {r['ops_ratio']:.2f} (ops/s) |")
    return "\n".join(lines)


def mine(rows: list[dict[str, Any]], workload: str) -> dict[str, Any] | None:
    """myservices' row of a workload, if it was measured."""
    return next((r for r in rows if r["workload"] == workload and r["server"].startswith("myservices")), None)


def targets(rows: list[dict[str, Any]]) -> str:
    """Each target, myservices' ratio in this run, and whether it is met."""
    lines = ["| workload | target | ratio in this run | |", "| --- | --- | --- | --- |"]
    for workload, kind, limit, sense, what in TARGETS:
        r = mine(rows, workload)
        if r is None:
            continue
        ratio = r["ops_ratio"] if kind == "ops" else r["ratio"]
        met = ratio <= limit if sense == "max" else ratio >= limit
        lines.append(f"| {workload} | {what} | {ratio:.2f} | {'met' if met else '**missed**'} |")
    return "\n".join(lines)


def other_stacks(rows: list[dict[str, Any]]) -> str:
    """myservices against every server on another stack than Twisted (asyncio, uvloop, aiohttp, websockets)."""
    lines = ["| workload | other server | its CPU-µs per op | myservices' CPU per op over it | "
             "myservices' ops/s over its | minimal Twisted baseline's CPU per op over it |",
             "| --- | --- | --- | --- | --- | --- |"]
    compared: list[tuple[float, str]] = []
    for r in rows:
        if r.get("stack", "twisted") == "twisted" or "kib_per_conn" in r:
            continue
        m = mine(rows, r["workload"])
        base = next(b for b in rows if b["workload"] == r["workload"] and b["baseline"])
        if m is None:
            continue
        lines.append(f"| {r['workload']} | {r['server']} | {r['cpu_us']:.2f} | {m['cpu_us'] / r['cpu_us']:.2f}x | "
                     f"{m['ops_s'] / r['ops_s']:.2f}x | {base['cpu_us'] / r['cpu_us']:.2f}x |")
        compared.append((m["cpu_us"] / r["cpu_us"], f"{r['server']}, {r['workload']}"))
    if not compared:
        return "(no server on another stack in this run)"
    low, high = min(compared), max(compared)
    more = sum(ratio > 1 for ratio, _ in compared)
    return "\n".join(lines) + (
        f"\n\nIn this run myservices spends more CPU per operation than the other stack's server in {more} of "
        f"{len(compared)} comparisons: from {low[0]:.2f}x ({low[1]}) to {high[0]:.2f}x ({high[1]}).")


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    """A bar per workload: myservices' ratio to the baseline; a dot per other server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours = [r for r in rows if r["server"].startswith("myservices")]
    others = [r for r in rows if not r["baseline"] and not r["server"].startswith("myservices")]
    fig, ax = plt.subplots(figsize=(10, 5))
    names = [r["workload"] for r in ours]
    ax.bar(range(len(ours)), [r["ratio"] for r in ours], color="#3b7dd8", label="myservices")
    for r in others:
        i = names.index(r["workload"])
        ax.plot(i, r["ratio"], "o", color="#d86b3b", label="other servers")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(ours)), names, rotation=30, ha="right")
    ax.set_ylabel("ratio to the minimal baseline\n(CPU per op; memory per connection for idle-*)")
    ax.set_title("myservices against minimal servers on the same stack (lower is better)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys())
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(result: dict[str, Any], out: Path, chart_path: Path) -> None:
    """BENCHMARKS.md (from the template) and the chart, from a result: {"meta": {...}, "rows": [...]}."""
    meta, rows = result["meta"], result["rows"]
    out.parent.mkdir(parents=True, exist_ok=True)
    chart_path.parent.mkdir(parents=True, exist_ok=True)
    chart(rows, chart_path)
    template = (HERE / "BENCHMARKS.template.md").read_text()
    seen: dict[str, str] = {}
    for r in rows:
        seen.setdefault(r["workload"], f"- **{r['workload']}**: {r['what']} (one op: a {r['unit']})")
    out.write_text(template.format(
        table=table(rows), chart=os.path.relpath(chart_path, out.parent), workloads="\n".join(seen.values()),
        targets=targets(rows), other_stacks=other_stacks(rows), **{"warmup": 0.0, **meta}
    ))
