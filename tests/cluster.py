"""What tests/test_cluster.py uses: a member of the chat on each front end, and which process serves a connection.

A L{Member} is a real client of one front end (line chat, WebSocket /chat,
framed JSON, PB) with one interface: take a nick, join with C{since}, publish,
ask who is in, and what it has received so far (messages, PARTs). Which
worker serves it is read from the kernel (/proc), not guessed.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.python.failure import Failure

from myservices.framed.client import FramedError
from myservices.framed.client import connect as framed_connect
from myservices.pb.errors import error_code
from tests.pbclient import Listener, pb_connect
from tests.support import chat_client, poll_until
from tests.wsclient import ws_connect

DEADLINE = 20.0  # seconds any one awaited event may take on a loaded machine before the test fails


class Refused(Exception):
    """The server answered an error: its code, and whether it says to retry."""

    def __init__(self, code: str, retry: bool | None) -> None:
        super().__init__(code)
        self.code = code
        self.retry = retry


async def until(condition: Any, what: str, timeout: float = DEADLINE) -> float:
    """Poll C{condition} on the reactor until it holds (bounded); the seconds it took."""
    return await poll_until(condition, what, timeout)


def children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


def server_side_owner(server_port: int, client_port: int, pids: set[int]) -> int | None:
    """The pid among C{pids} holding the accepted socket of the loopback connection from C{client_port}."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if int(local.rsplit(":", 1)[1], 16) == server_port and int(remote.rsplit(":", 1)[1], 16) == client_port:
                    inodes.add(f"socket:[{inode}]")
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


class Member:
    """A client of one front end, in one room; what it received is in C{messages} and C{parts}."""

    kind = ""

    def __init__(self, testcase: Any, port: int) -> None:
        self.testcase = testcase
        self.port = port
        self.messages: list[tuple[int, str]] = []  # (id, text) of every MSG received live, in order
        self.parts: list[str] = []  # nicks whose PART it received
        self.nick = ""

    def __repr__(self) -> str:
        return f"<{self.kind} {self.nick}>"

    async def connect(self) -> None:
        raise NotImplementedError

    async def take_nick(self, nick: str) -> None:
        """Raises L{Refused} when the hub says no."""
        raise NotImplementedError

    async def join(self, room: str, since: int) -> tuple[list[int], bool, int]:
        """(ids of the history, recovered, last_id)."""
        raise NotImplementedError

    async def publish(self, room: str, text: str) -> int:
        raise NotImplementedError

    async def who(self, room: str) -> list[str]:
        raise NotImplementedError

    async def closed(self) -> None:
        """Fires when the server has closed the connection."""
        raise NotImplementedError

    def transport(self) -> Any:
        raise NotImplementedError

    def local_port(self) -> int:
        return int(self.transport().getHost().port)

    async def abort(self) -> None:
        """Drop the connection, as a network failure would."""
        self.transport().abortConnection()
        await self.closed()

    def texts(self) -> list[str]:
        return [t for _, t in self.messages]


class LineMember(Member):
    kind = "chat"

    async def connect(self) -> None:
        self.client = await chat_client(self.testcase, self.port)
        received = self.client.dataReceived

        buffer = [b""]

        def record(data: bytes) -> None:
            *lines, buffer[0] = (buffer[0] + data).split(b"\r\n")
            for line in lines:
                words = line.decode().split(" ", 4)
                if words[0] == "MSG":
                    self.messages.append((int(words[2]), words[4]))
                elif words[0] == "PART":
                    self.parts.append(words[2])
            received(data)

        self.client.dataReceived = record  # type: ignore[method-assign]

    def transport(self) -> Any:
        return self.client.transport

    async def _command(self, line: str) -> list[str]:
        lines = await self.client.command(line)
        if lines[-1].startswith("ERR "):
            raise Refused(lines[-1].split(" ")[1], None)
        return lines

    async def take_nick(self, nick: str) -> None:
        await self._command(f"/nick {nick}")
        self.nick = nick

    async def join(self, room: str, since: int) -> tuple[list[int], bool, int]:
        lines = await self._command(f"/join {room} {since}")
        ids = [int(line.split(" ")[2]) for line in lines if line.startswith(f"HISTORY {room} ")]
        return ids, not any(line.startswith("GAP ") for line in lines), int(lines[-1].split(" ")[3])

    async def publish(self, room: str, text: str) -> int:
        return int((await self._command(f"/msg {room} {text}"))[-1].split(" ")[3])

    async def who(self, room: str) -> list[str]:
        return [line.split(" ")[2] for line in await self._command(f"/who {room}") if line.startswith("WHO ")]

    async def closed(self) -> None:
        await self.client.closed


class WebSocketMember(Member):
    kind = "websocket"

    async def connect(self) -> None:
        self.client = await ws_connect(self.testcase, self.port, "/chat")
        received = self.client.onMessage

        def record(payload: bytes, binary: bool) -> None:
            received(payload, binary)
            event = self.client.unread[-1][2]
            if isinstance(event, dict) and event.get("type") == "message":
                self.messages.append((event["id"], event["text"]))
            elif isinstance(event, dict) and event.get("type") == "presence" and event["kind"] == "part":
                self.parts.append(event["nick"])
            if isinstance(event, dict) and event.get("type") in ("message", "presence", "nick"):
                self.client.unread.pop()  # recorded here; unread keeps only replies

        self.client.onMessage = record  # type: ignore[method-assign]

    def transport(self) -> Any:
        return self.client.transport

    async def _call(self, type_: str, **args: Any) -> Any:
        reply = await self.client.request(type_, **args)
        if reply["type"] == "error":
            raise Refused(reply["error"]["code"], reply["error"]["retry"])
        return reply["result"]

    async def take_nick(self, nick: str) -> None:
        await self._call("nick", nick=nick)
        self.nick = nick

    async def join(self, room: str, since: int) -> tuple[list[int], bool, int]:
        result = await self._call("join", room=room, since=since)
        return [m["id"] for m in result["history"]], result["recovered"], result["last_id"]

    async def publish(self, room: str, text: str) -> int:
        return int((await self._call("publish", room=room, text=text))["id"])

    async def who(self, room: str) -> list[str]:
        return list((await self._call("who", room=room))["members"])

    async def closed(self) -> None:
        await self.client.closed


class FramedMember(Member):
    kind = "framed"

    async def connect(self) -> None:
        self.client = await framed_connect(reactor, f"tcp:127.0.0.1:{self.port}", on_push=self._push)
        self.testcase.addCleanup(self._cleanup)

    async def _cleanup(self) -> None:
        if self.client.transport.connected:
            self.client.transport.abortConnection()
            await self.client.closed

    def _push(self, name: str, data: dict[str, Any]) -> None:
        if name == "message":
            self.messages.append((data["id"], data["text"]))
        elif name == "presence" and data["kind"] == "part":
            self.parts.append(data["nick"])

    def transport(self) -> Any:
        return self.client.transport

    async def _call(self, command: str, **args: Any) -> Any:
        try:
            return await self.client.call(command, **args)
        except FramedError as e:
            raise Refused(e.code, e.retry) from e

    async def take_nick(self, nick: str) -> None:
        await self._call("hub.nick", nick=nick)
        self.nick = nick

    async def join(self, room: str, since: int) -> tuple[list[int], bool, int]:
        result = await self._call("hub.join", room=room, since=since)
        return [m["id"] for m in result["history"]], result["recovered"], result["last_id"]

    async def publish(self, room: str, text: str) -> int:
        return int((await self._call("hub.publish", room=room, text=text))["id"])

    async def who(self, room: str) -> list[str]:
        return list((await self._call("hub.who", room=room))["members"])

    async def closed(self) -> None:
        await self.client.closed


class RecordingListener(Listener):
    def __init__(self, member: Member) -> None:
        super().__init__()
        self.member = member

    def remote_message(self, data: dict[str, Any]) -> None:
        self.member.messages.append((data["id"], data["text"]))

    def remote_presence(self, data: dict[str, Any]) -> None:
        if data["kind"] == "part":
            self.member.parts.append(data["nick"])


class PBMember(Member):
    """Logs in as its nick (the account must exist: L{register} it first); its nick is its username."""

    kind = "pb"

    async def connect(self) -> None:
        self.client = await pb_connect(self.testcase, self.port)

    def transport(self) -> Any:
        return self.client.broker.transport

    async def _call(self, method: str, *args: Any) -> Any:
        outcome: list[Any] = []
        d = self.client.avatar.callRemote(method, *args)
        d.addBoth(outcome.append)
        await d
        if isinstance(outcome[0], Failure):
            code = error_code(outcome[0])
            if code is None:
                outcome[0].raiseException()
            raise Refused(str(code), None)
        return outcome[0]

    async def take_nick(self, nick: str) -> None:
        self.client.avatar = await self.client.login(nick, "correct horse")
        self.nick = nick
        whoami = await self._call("whoami")
        if whoami["nick"] != nick:
            raise Refused("NICK_TAKEN", None)

    async def join(self, room: str, since: int) -> tuple[list[int], bool, int]:
        result = await self._call("join", room, RecordingListener(self), True, since)
        return [m["id"] for m in result["history"]], result["recovered"], result["last_id"]

    async def publish(self, room: str, text: str) -> int:
        return int((await self._call("publish", room, text))["id"])

    async def who(self, room: str) -> list[str]:
        return list((await self._call("who", room))["members"])

    async def closed(self) -> None:
        await self.client.closed


KINDS: dict[str, type[Member]] = {m.kind: m for m in (LineMember, WebSocketMember, FramedMember, PBMember)}


async def register(port: int, usernames: list[str]) -> None:
    """PB members' accounts, through the framed service (one database for every process)."""
    client = await framed_connect(reactor, f"tcp:127.0.0.1:{port}")
    try:
        for name in usernames:
            await client.call("register", username=name, password="correct horse")
    finally:
        client.transport.loseConnection()
        await client.closed
