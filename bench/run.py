"""Every benchmark in one run: each workload against myservices and its minimal baselines, the same load,
the same invocation; a table, a chart and BENCHMARKS.md.

    .venv/bin/python bench/run.py                    # full: median of 3 runs, about 15 minutes
    .venv/bin/python bench/run.py --runs 5 --only echo-64,udp
    .venv/bin/python bench/run.py --smoke --output /tmp/bench   # each workload for a second (CI)

For each run of each server: a fresh server process (pinned, every thread, to
core 0), then the load generator (pinned to core 1): the compiled
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
import os
import platform
import resource
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from base64 import b64encode
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import HERE, cpu_seconds, pin, rss_bytes, start_myservices, start_script, stop  # noqa: E402

REPO = HERE.parent
MYSERVICES_CONFIG = """
[daemon]
data_dir = "state"
[database]
url = "sqlite:///bench.sqlite3"
[hub]
publish_rate = 1000000.0
publish_burst = 1000000
max_pending = 16777216
[services.{service}]
endpoint = "{endpoint}"
{extra}
"""


@dataclass
class Server:
    label: str
    script: str | None = None  # a baseline in bench/baselines/, else myservices
    args: tuple[str, ...] = ()
    service: str = ""
    extra: str = ""  # more keys for the myservices service section
    baseline: bool = False


@dataclass
class Workload:
    name: str
    what: str
    unit: str  # what one operation is
    servers: list[Server]
    measure: Callable[[Workload, Server, subprocess.Popen, int, argparse.Namespace], dict[str, float]]
    params: dict[str, Any] = field(default_factory=dict)


# --- servers -----------------------------------------------------------------


def start(server: Server, workdir: str) -> tuple[subprocess.Popen, int]:
    if server.script is None:
        endpoint = "udp:0:interface=127.0.0.1" if server.service == "udp" else "tcp:0:interface=127.0.0.1"
        extra = server.extra if server.service == "udp" else "max_connections = 100000\n" + server.extra
        text = MYSERVICES_CONFIG.format(service=server.service, endpoint=endpoint, extra=extra)
        proc, ports = start_myservices(workdir, text)
        return proc, ports[server.service]
    return start_script(workdir, server.script, *server.args)


# --- request templates and reply sizes per protocol --------------------------------

ID_WIDTH = 8
ID_PLACEHOLDER = 10 ** (ID_WIDTH - 1)


def ws_frame(payload: bytes, masked: bool) -> bytes:
    n = len(payload)
    head = bytes([0x81])
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    return head + (b"\0\0\0\0" if masked else b"") + payload  # a zero mask leaves the payload as it is


def ws_handshake(path: str) -> bytes:
    key = b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def framed_template(server: Server, data: str) -> tuple[bytes, int]:
    """The request (with ID_PLACEHOLDER as its id) and the size of the reply, for each framed server."""
    body = {"id": ID_PLACEHOLDER, "args": {"data": data}}
    if server.script == "int32_json_echo.py":
        request = json.dumps(body).encode()
        return struct.pack("!I", len(request)) + request, 4 + len(json.dumps(body).encode())
    if server.script == "seed_framed.py":
        request = json.dumps(body).encode()
        reply = json.dumps({"id": ID_PLACEHOLDER, "ok": True, "result": body["args"]}).encode()
        return struct.pack("!III", 1, len(request), 2) + request, 12 + len(reply)
    from myservices.framed.catalog import COMMANDS
    from myservices.framed.wire import encode_json

    request = encode_json(COMMANDS["echo"], body)
    reply = encode_json(COMMANDS["echo"], {"id": ID_PLACEHOLDER, "ok": True, "result": {"data": data}})
    return request, len(reply)


# --- load generators ------------------------------------------------------------------


def loadgen_binary(workdir: str) -> str:
    out = Path(workdir) / "loadgen"
    if not out.exists():
        subprocess.run(["cc", "-O2", "-o", str(out), str(HERE / "loadgen.c")], check=True)
    return str(out)


def run_loadgen(proc: subprocess.Popen, port: int, args: argparse.Namespace, mode: str, conns: int, window: int,
                request: bytes, reply_size: int, id_offset: int | None = None, preamble: bytes | None = None,
                ) -> dict[str, float]:
    work = args.workdir
    req = Path(work) / "request.bin"
    req.write_bytes(request)
    env = dict(os.environ)
    if preamble is not None:
        (Path(work) / "preamble.bin").write_bytes(preamble)
        env["LOADGEN_PREAMBLE"] = str(Path(work) / "preamble.bin")
    argv = [loadgen_binary(work), mode, "127.0.0.1", str(port), str(conns), str(window), str(args.seconds),
            str(args.max_ops), str(req), str(reply_size)]
    if id_offset is not None:
        argv += [str(id_offset), str(ID_WIDTH)]
    return drive(argv, proc, env)


def drive(argv: list[str], proc: subprocess.Popen, env: dict[str, str] | None = None) -> dict[str, float]:
    """Run a load generator that connects, prints "ready", starts on a line from stdin and prints
    {"ops": N, "seconds": T}; the server's CPU time is read just around the load."""
    gen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    pin(gen.pid, 1)
    assert gen.stdin and gen.stdout
    if gen.stdout.readline().strip() != "ready":
        raise RuntimeError(f"{Path(argv[0]).name} did not get ready: exit status {gen.wait()}")
    cpu0 = cpu_seconds(proc.pid)
    gen.stdin.write("go\n")
    gen.stdin.flush()
    result = json.loads(gen.stdout.readline())
    cpu = cpu_seconds(proc.pid) - cpu0
    gen.wait(timeout=30)
    ops = result["ops"]
    if not ops:
        raise RuntimeError("no operation completed")
    return {"ops_s": ops / result["seconds"], "cpu_us": cpu / ops * 1e6, "rss_mb": rss_bytes(proc.pid) / 2**20}


def measure_echo(w: Workload, s: Server, proc: subprocess.Popen, port: int, args: argparse.Namespace) -> dict[str, float]:
    size = w.params["size"]
    return run_loadgen(proc, port, args, "tcp", args.conns(50), 1, b"x" * size, size)


def measure_udp(w: Workload, s: Server, proc: subprocess.Popen, port: int, args: argparse.Namespace) -> dict[str, float]:
    return run_loadgen(proc, port, args, "udp", args.conns(8), 4, b"x" * 64, 64)


def measure_ws(w: Workload, s: Server, proc: subprocess.Popen, port: int, args: argparse.Namespace) -> dict[str, float]:
    payload = b"x" * w.params["size"]
    return run_loadgen(proc, port, args, "tcp", args.conns(50), 1, ws_frame(payload, True), len(ws_frame(payload, False)),
                       preamble=ws_handshake("/echo"))


def measure_framed(w: Workload, s: Server, proc: subprocess.Popen, port: int, args: argparse.Namespace) -> dict[str, float]:
    request, reply_size = framed_template(s, "x" * 40)
    offset = request.index(str(ID_PLACEHOLDER).encode())
    return run_loadgen(proc, port, args, "tcp", args.conns(10), 16, request, reply_size, id_offset=offset)


def measure_http(w: Workload, s: Server, proc: subprocess.Popen, port: int, args: argparse.Namespace) -> dict[str, float]:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is missing (Debian: apt-get install wrk)")
    cpu0 = cpu_seconds(proc.pid)
    gen = subprocess.Popen([wrk, "-t1", f"-c{args.conns(50)}", f"-d{max(1, round(args.seconds))}s",
                            f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, text=True)
    pin(gen.pid, 1)
    out, _ = gen.communicate(timeout=args.seconds + 60)
    cpu = cpu_seconds(proc.pid) - cpu0
    requests = int(next(line for line in out.splitlines() if "requests in" in line).split()[0])
    seconds = float(next(line for line in out.splitlines() if "requests in" in line).split("in ")[1].split("s")[0])
    return {"ops_s": requests / seconds, "cpu_us": cpu / requests * 1e6, "rss_mb": rss_bytes(proc.pid) / 2**20}


def measure_chat(w: Workload, s: Server, proc: subprocess.Popen, port: int, args: argparse.Namespace) -> dict[str, float]:
    from chat_fanout import connect_all, run_load

    members = args.conns(100)
    socks = connect_all(port, members, joins=s.script is None)
    pin(0, 1)
    try:
        lines = max(50, int(3000 * min(1.0, args.seconds / 5)))
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        delivered = run_load(socks, lines, w.params["window"], "plain" if s.script else "msg")
        cpu, elapsed = cpu_seconds(proc.pid) - cpu0, time.monotonic() - t0
    finally:
        for sock in socks:
            sock.close()
    return {"ops_s": delivered / elapsed, "cpu_us": cpu / delivered * 1e6, "rss_mb": rss_bytes(proc.pid) / 2**20}


def measure_pb(w: Workload, s: Server, proc: subprocess.Popen, port: int, args: argparse.Namespace) -> dict[str, float]:
    return drive([sys.executable, str(HERE / "pb_load.py"), str(port), str(args.conns(10)), "16", str(args.seconds),
                  str(args.max_ops), "anonymous" if s.script is None else "root"], proc)


def measure_idle(w: Workload, s: Server, proc: subprocess.Popen, port: int, args: argparse.Namespace) -> dict[str, float]:
    count = args.conns(w.params["connections"])
    websocket = w.params["websocket"]
    before = rss_bytes(proc.pid)
    socks = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            socks.append(sock)
            if websocket:
                sock.sendall(ws_handshake("/echo"))
        for sock in socks:
            if websocket:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += sock.recv(4096)
        # the server has accepted them all: a round trip on the last one
        socks[-1].sendall(ws_frame(b"ping", True) if websocket else b"ping")
        socks[-1].recv(100)
        after = rss_bytes(proc.pid)
    finally:
        for sock in socks:
            sock.close()
    return {"ops_s": 0.0, "cpu_us": 0.0, "rss_mb": after / 2**20, "kib_per_conn": (after - before) / count / 1024}


# --- the workloads ------------------------------------------------------------------------


def workloads() -> list[Workload]:
    echo = [
        Server("myservices echo", service="echo"),
        Server("seed Twisted echo", "seed_echo.py", baseline=True),
        Server("asyncio echo", "asyncio_echo.py"),
        Server("uvloop echo", "asyncio_echo.py", ("--uvloop",)),
    ]
    ws = [
        Server("myservices WebSocket /echo", service="websocket",
               extra='max_message_size = "1 MiB"\nmax_frame_size = "1 MiB"\nidle_timeout = 0\nping_interval = 0'),
        Server("minimal autobahn echo", "ws_echo.py", baseline=True),
        Server("websockets library echo", "ws_echo.py", ("--websockets",)),
    ]
    return [
        Workload("echo-64", "TCP echo, 64 B messages, 50 connections, 1 in flight each", "message",
                 echo, measure_echo, {"size": 64}),
        Workload("echo-16k", "TCP echo, 16 KiB messages, 50 connections, 1 in flight each", "message",
                 echo, measure_echo, {"size": 16384}),
        Workload("udp", "UDP echo, 64 B datagrams, 8 sockets, 4 in flight each", "datagram", [
            Server("myservices UDP echo", service="udp"),
            Server("Twisted DatagramProtocol", "udp_echo.py", baseline=True),
            Server("asyncio datagram echo", "udp_echo.py", ("--asyncio",)),
        ], measure_udp),
        Workload("chat-1", "chat fan-out, 1 publisher -> 100 members, 1 line in flight", "delivered line", [
            Server("myservices line chat", service="chat"),
            Server("seed LineReceiver chat", "seed_chat.py", baseline=True),
        ], measure_chat, {"window": 1}),
        Workload("chat-8", "chat fan-out, 1 publisher -> 100 members, 8 lines in flight", "delivered line", [
            Server("myservices line chat", service="chat"),
            Server("seed LineReceiver chat", "seed_chat.py", baseline=True),
        ], measure_chat, {"window": 8}),
        Workload("http", "HTTP request counter, wrk -c50", "request", [
            Server("myservices durable counter", service="http"),
            Server("seed in-memory twisted.web counter", "seed_counter.py", baseline=True),
            Server("aiohttp in-memory counter", "aiohttp_counter.py"),
        ], measure_http),
        Workload("ws-64", "WebSocket echo, 64 B messages, 50 connections", "message", ws, measure_ws, {"size": 64}),
        Workload("ws-16k", "WebSocket echo, 16 KiB messages, 50 connections", "message", ws, measure_ws, {"size": 16384}),
        Workload("framed", "framed JSON echo request/reply, 10 connections x 16 in flight", "request", [
            Server("myservices framed JSON", service="framed", extra="request_rate = 1000000000.0\nrequest_burst = 1000000000"),
            Server("minimal Int32StringReceiver JSON echo", "int32_json_echo.py", baseline=True),
            Server("seed framed echo (12-byte header)", "seed_framed.py"),
        ], measure_framed),
        Workload("pb", "PB call round trip (echo), 10 connections x 16 in flight", "call", [
            Server("myservices PB", service="pb",
                   extra="allow_anonymous = true\nrequest_rate = 1000000000.0\nrequest_burst = 1000000000\nmax_in_flight = 64"),
            Server("minimal pb.Root", "pb_echo.py", baseline=True),
        ], measure_pb),
        Workload("idle-tcp", "idle memory: 5,000 TCP connections", "connection", [
            Server("myservices echo", service="echo", extra="idle_timeout = 0"),
            Server("seed Twisted echo", "seed_echo.py", baseline=True),
        ], measure_idle, {"connections": 5000, "websocket": False}),
        Workload("idle-ws", "idle memory: 2,000 WebSocket connections", "connection", ws[:2], measure_idle,
                 {"connections": 2000, "websocket": True}),
    ]


# --- running and reporting -----------------------------------------------------------------------


def run(selected: list[Workload], args: argparse.Namespace) -> list[dict[str, Any]]:
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
                    result = w.measure(w, s, proc, port, args)
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
            row = {"workload": w.name, "what": w.what, "unit": w.unit, "server": s.label, "baseline": s.baseline, **m}
            if "kib_per_conn" in m:
                row["ratio"] = m["kib_per_conn"] / base["kib_per_conn"] if base["kib_per_conn"] > 0 else float("nan")
            else:
                row["ratio"] = m["cpu_us"] / base["cpu_us"]
                row["ops_ratio"] = m["ops_s"] / base["ops_s"]
            rows.append(row)
    return rows


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import twisted

    return (f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, Python {platform.python_version()}, "
            f"Twisted {twisted.__version__}")


def table(rows: list[dict[str, Any]]) -> str:
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


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [r for r in rows if r["server"].startswith("myservices")]
    others = [r for r in rows if not r["baseline"] and not r["server"].startswith("myservices")]
    fig, ax = plt.subplots(figsize=(10, 5))
    names = [r["workload"] for r in mine]
    ax.bar(range(len(mine)), [r["ratio"] for r in mine], color="#3b7dd8", label="myservices")
    for r in others:
        i = names.index(r["workload"])
        ax.plot(i, r["ratio"], "o", color="#d86b3b", label="other servers")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(mine)), names, rotation=30, ha="right")
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
        table=table(rows), chart=os.path.relpath(chart_path, out.parent), workloads="\n".join(seen.values()), **meta
    ))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per server (the median is reported)")
    parser.add_argument("--seconds", type=float, default=5.0, help="load per run")
    parser.add_argument("--max-ops", type=int, default=10_000_000, help="stop a run after this many operations")
    parser.add_argument("--only", help="comma-separated workload names")
    parser.add_argument("--smoke", action="store_true", help="every workload once, for about a second, few connections")
    parser.add_argument("--output", help="directory for BENCHMARKS.md, benchmarks.png and benchmarks.json "
                        "(default: BENCHMARKS.md, docs/benchmarks.png and bench/results/ in the repository)")
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
        print(f"{len(selected)} workloads x {args.runs} runs, {args.seconds:g} s each; server on core 0, load on core 1;"
              f" {machine()}", file=sys.stderr, flush=True)
        rows = run(selected, args)
    finally:
        shutil.rmtree(args.workdir, ignore_errors=True)
    print(table(rows))
    meta = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "runs": args.runs, "seconds": args.seconds,
            "command": " ".join(["bench/run.py", *sys.argv[1:]])}
    result = {"meta": meta, "rows": rows}
    data_path.parent.mkdir(parents=True, exist_ok=True)
    data_path.write_text(json.dumps(result, indent=1) + "\n")
    write_report(result, out, chart_path)


if __name__ == "__main__":
    main()
