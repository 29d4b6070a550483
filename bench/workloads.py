"""The servers and workloads of bench/run.py: which servers each workload compares, and how each starts."""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common import start_myservices, start_script
from loads import measure_chat, measure_echo, measure_framed, measure_http, measure_idle, measure_pb, measure_udp, measure_ws

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
    """One server of a workload: a baseline script in bench/baselines/, or (script None) myservices."""

    label: str
    script: str | None = None  # a baseline in bench/baselines/, else myservices
    args: tuple[str, ...] = ()
    service: str = ""
    extra: str = ""  # more keys for the myservices service section
    baseline: bool = False
    stack: str = "twisted"  # the library it is built on, for the comparison with other stacks


Measure = Callable[["Workload", Server, subprocess.Popen, int, argparse.Namespace], dict[str, float]]


@dataclass
class Workload:
    """A load, the servers it compares, and how it is warmed up and measured."""

    name: str
    what: str
    unit: str  # what one operation is
    servers: list[Server]
    measure: Measure
    params: dict[str, Any] = field(default_factory=dict)
    transport: str = "tcp"  # what the warm-up opens and closes: "tcp" or "udp"
    warm_load: bool = True  # whether the warm-up also runs the load, unmeasured (not for idle memory)


def start(server: Server, workdir: str) -> tuple[subprocess.Popen, int]:
    """Start a server in C{workdir}; returns its process and port."""
    if server.script is None:
        endpoint = "udp:0:interface=127.0.0.1" if server.service == "udp" else "tcp:0:interface=127.0.0.1"
        extra = server.extra if server.service == "udp" else "max_connections = 100000\n" + server.extra
        text = MYSERVICES_CONFIG.format(service=server.service, endpoint=endpoint, extra=extra)
        proc, ports = start_myservices(workdir, text)
        return proc, ports[server.service]
    return start_script(workdir, server.script, *server.args)


def workloads() -> list[Workload]:
    """Every workload of the benchmark page, in its order."""
    echo = [
        Server("myservices echo", service="echo"),
        Server("seed Twisted echo", "seed_echo.py", baseline=True),
        Server("asyncio echo", "asyncio_echo.py", stack="asyncio"),
        Server("uvloop echo", "asyncio_echo.py", ("--uvloop",), stack="uvloop"),
    ]
    ws = [
        Server("myservices WebSocket /echo", service="websocket",
               extra='max_message_size = "1 MiB"\nmax_frame_size = "1 MiB"\nidle_timeout = 0\nping_interval = 0'),
        Server("minimal autobahn echo", "ws_echo.py", baseline=True),
        Server("websockets library echo", "ws_echo.py", ("--websockets",), stack="websockets"),
    ]
    return [
        Workload("echo-64", "TCP echo, 64 B messages, 50 connections, 1 in flight each", "message",
                 echo, measure_echo, {"size": 64}),
        Workload("echo-16k", "TCP echo, 16 KiB messages, 50 connections, 1 in flight each", "message",
                 echo, measure_echo, {"size": 16384}),
        Workload("udp", "UDP echo, 64 B datagrams, 8 sockets, 4 in flight each", "datagram", [
            Server("myservices UDP echo", service="udp"),
            Server("Twisted DatagramProtocol", "udp_echo.py", baseline=True),
            Server("asyncio datagram echo", "udp_echo.py", ("--asyncio",), stack="asyncio"),
        ], measure_udp, transport="udp"),
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
            Server("seed in-memory twisted.web counter, no access log", "seed_counter.py", baseline=True),
            Server("aiohttp in-memory counter, no access log", "aiohttp_counter.py", stack="aiohttp"),
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
        ], measure_idle, {"connections": 5000, "websocket": False}, warm_load=False),
        Workload("idle-ws", "idle memory: 2,000 WebSocket connections", "connection", ws[:2], measure_idle,
                 {"connections": 2000, "websocket": True}, warm_load=False),
    ]
