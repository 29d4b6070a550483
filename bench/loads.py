"""The loads of bench/run.py: request templates per protocol, the load generators, the measured window of each
workload, and the warm-up that brings every server to its steady state before it is measured."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from base64 import b64encode
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from common import HERE, cpu_seconds, pin, rss_bytes

if TYPE_CHECKING:
    from workloads import Server, Workload

# --- request templates and reply sizes per protocol --------------------------------

ID_WIDTH = 8
ID_PLACEHOLDER = 10 ** (ID_WIDTH - 1)


def ws_frame(payload: bytes, masked: bool) -> bytes:
    """One WebSocket text frame; masked (as a client sends it) with a zero mask."""
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
    """A WebSocket opening handshake for C{path}."""
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


# --- the measured window -----------------------------------------------------------------


def open_window(proc: subprocess.Popen, args: argparse.Namespace) -> Callable[[], float]:
    """Start the measured window of a load: returns the function that ends it and gives the server's CPU
    seconds in it. C{args.on_window}, when set (bench/syscalls.py), is called with the server's pid at the
    start and returns what to call at the end."""
    hook = getattr(args, "on_window", None)
    end_hook = hook(proc.pid) if hook else None
    cpu0 = cpu_seconds(proc.pid)

    def close() -> float:
        cpu = cpu_seconds(proc.pid) - cpu0
        if end_hook:
            end_hook()
        return cpu

    return close


# --- load generators ------------------------------------------------------------------


def loadgen_binary(workdir: str) -> str:
    """loadgen.c compiled into C{workdir} (once)."""
    out = Path(workdir) / "loadgen"
    if not out.exists():
        subprocess.run(["cc", "-O2", "-o", str(out), str(HERE / "loadgen.c")], check=True)
    return str(out)


def run_loadgen(proc: subprocess.Popen, port: int, args: argparse.Namespace, mode: str, conns: int, window: int,
                request: bytes, reply_size: int, id_offset: int | None = None, preamble: bytes | None = None,
                ) -> dict[str, float]:
    """The C load generator against C{port}: C{conns} connections with C{window} requests in flight each."""
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
    return drive(argv, proc, args, env)


def drive(argv: list[str], proc: subprocess.Popen, args: argparse.Namespace,
          env: dict[str, str] | None = None) -> dict[str, float]:
    """Run a load generator that connects, prints "ready", starts on a line from stdin and prints
    {"ops": N, "seconds": T}; the measured window is just around the load."""
    gen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    pin(gen.pid, 1)
    assert gen.stdin and gen.stdout
    if gen.stdout.readline().strip() != "ready":
        raise RuntimeError(f"{Path(argv[0]).name} did not get ready: exit status {gen.wait()}")
    window = open_window(proc, args)
    gen.stdin.write("go\n")
    gen.stdin.flush()
    result = json.loads(gen.stdout.readline())
    cpu = window()
    gen.wait(timeout=30)
    ops = result["ops"]
    if not ops:
        raise RuntimeError("no operation completed")
    return {"ops_s": ops / result["seconds"], "cpu_us": cpu / ops * 1e6, "rss_mb": rss_bytes(proc.pid) / 2**20,
            "ops": ops}


# --- one function per kind of workload: the load, and the server's CPU over it --------------------------


def measure_echo(w: Workload, s: Server, proc: subprocess.Popen, port: int, args: argparse.Namespace) -> dict[str, float]:
    """TCP echo, w.params["size"] bytes, 1 in flight per connection."""
    size = w.params["size"]
    return run_loadgen(proc, port, args, "tcp", args.conns(50), 1, b"x" * size, size)


def measure_udp(w: Workload, s: Server, proc: subprocess.Popen, port: int, args: argparse.Namespace) -> dict[str, float]:
    """UDP echo, 64 B datagrams, 4 in flight per socket."""
    return run_loadgen(proc, port, args, "udp", args.conns(8), 4, b"x" * 64, 64)


def measure_ws(w: Workload, s: Server, proc: subprocess.Popen, port: int, args: argparse.Namespace) -> dict[str, float]:
    """WebSocket echo on /echo after a real opening handshake."""
    payload = b"x" * w.params["size"]
    return run_loadgen(proc, port, args, "tcp", args.conns(50), 1, ws_frame(payload, True), len(ws_frame(payload, False)),
                       preamble=ws_handshake("/echo"))


def measure_framed(w: Workload, s: Server, proc: subprocess.Popen, port: int, args: argparse.Namespace) -> dict[str, float]:
    """Framed JSON echo, a distinct request id per request in flight."""
    request, reply_size = framed_template(s, "x" * 40)
    offset = request.index(str(ID_PLACEHOLDER).encode())
    return run_loadgen(proc, port, args, "tcp", args.conns(10), 16, request, reply_size, id_offset=offset)


def measure_http(w: Workload, s: Server, proc: subprocess.Popen, port: int, args: argparse.Namespace) -> dict[str, float]:
    """wrk -t1 on GET /."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is missing (Debian: apt-get install wrk)")
    window = open_window(proc, args)
    gen = subprocess.Popen([wrk, "-t1", f"-c{args.conns(50)}", f"-d{max(1, round(args.seconds))}s",
                            f"http://127.0.0.1:{port}/"], stdout=subprocess.PIPE, text=True)
    pin(gen.pid, 1)
    out, _ = gen.communicate(timeout=args.seconds + 60)
    cpu = window()
    requests = int(next(line for line in out.splitlines() if "requests in" in line).split()[0])
    seconds = float(next(line for line in out.splitlines() if "requests in" in line).split("in ")[1].split("s")[0])
    return {"ops_s": requests / seconds, "cpu_us": cpu / requests * 1e6, "rss_mb": rss_bytes(proc.pid) / 2**20,
            "ops": requests}


def measure_chat(w: Workload, s: Server, proc: subprocess.Popen, port: int, args: argparse.Namespace) -> dict[str, float]:
    """The chat fan-out of chat_fanout.py, w.params["window"] lines in flight."""
    from chat_fanout import connect_all, run_load

    members = args.conns(100)
    socks = connect_all(port, members, joins=s.script is None)
    pin(0, 1)
    try:
        lines = getattr(args, "chat_lines", None) or max(50, int(3000 * min(1.0, args.seconds / 5)))
        window, t0 = open_window(proc, args), time.monotonic()
        delivered = run_load(socks, lines, w.params["window"], "plain" if s.script else "msg")
        cpu, elapsed = window(), time.monotonic() - t0
    finally:
        for sock in socks:
            sock.close()
    return {"ops_s": delivered / elapsed, "cpu_us": cpu / delivered * 1e6, "rss_mb": rss_bytes(proc.pid) / 2**20,
            "ops": delivered}


def measure_pb(w: Workload, s: Server, proc: subprocess.Popen, port: int, args: argparse.Namespace) -> dict[str, float]:
    """PB echo calls with Twisted's client (pb_load.py)."""
    return drive([sys.executable, str(HERE / "pb_load.py"), str(port), str(args.conns(10)), "16", str(args.seconds),
                  str(args.max_ops), "anonymous" if s.script is None else "root"], proc, args)


def measure_idle(w: Workload, s: Server, proc: subprocess.Popen, port: int, args: argparse.Namespace) -> dict[str, float]:
    """RSS growth per idle connection (after a WebSocket handshake when w.params["websocket"])."""
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


# --- warm-up -----------------------------------------------------------------------------------


def touch(transport: str, port: int, timeout: float = 10.0) -> None:
    """What every server sees before it is measured, whatever its protocol. TCP: a connection opened and
    closed; returns once the server has closed its side, so it has read the end of the stream. UDP: a
    zero-length datagram, then a 64-byte one; returns once the 64-byte one is echoed, so the server has read
    both (datagrams from one socket arrive in order; each is sent again after a second without its echo).

    A real server sees connections close and empty reads all the time; without them asyncio receives every
    message into a fresh 256 KiB bytes object, which glibc serves with mmap until it frees one such block
    whole (see bench/README.md)."""
    if transport == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("127.0.0.1", port))
            sock.settimeout(1.0)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                sock.send(b"")
                sock.send(b"w" * 64)
                try:
                    while len(sock.recv(65536)) != 64:
                        pass  # the echo of the empty datagram, from servers that send it back
                    return
                except TimeoutError:
                    continue
            raise RuntimeError(f"no UDP echo from port {port} in {timeout:g} s")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass


def warm_up(w: Workload, s: Server, proc: subprocess.Popen, port: int, args: argparse.Namespace) -> dict[str, float]:
    """Bring a server to its steady state, the same way for every server: L{touch}, then (except for the
    idle-memory workloads, whose figure is the memory a fresh server grows by) the workload's own load for
    C{args.warmup} seconds, not measured; its connections close at its end. Returns what the harness records
    of it. C{args.warmup} 0 skips all of it (to see the artifact it removes)."""
    if args.warmup <= 0:
        return {"warmup_touches": 0, "warmup_seconds": 0.0}
    touch(w.transport, port)
    if not w.warm_load:
        return {"warmup_touches": 1, "warmup_seconds": 0.0}
    load_args = argparse.Namespace(**{**vars(args), "seconds": args.warmup, "on_window": None})
    w.measure(w, s, proc, port, load_args)
    return {"warmup_touches": 1, "warmup_seconds": args.warmup}
