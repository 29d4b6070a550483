"""Recovery after a disconnect, on every front end: rejoin with the last id you saw, get exactly what you missed.

One scenario (L{RecoveryScenario}) runs against each front end through a
small adapter around its real client, over loopback against the real tree:
messages arrive live, the client drops its connection, more are published,
the client reconnects and joins with C{since} = the last id it saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.trial.unittest import TestCase

from myservices.framed.client import FramedError
from tests.pbclient import Listener, failure_of, pb_connect
from tests.support import chat_client, framed_client, load, port_of, start_tree
from tests.test_bad_input import Alarms, four_front_ends
from tests.test_pb import code_of
from tests.wsclient import ws_connect

HISTORY = 5  # [hub] history_size of these tests: a longer absence leaves a gap


@dataclass(frozen=True)
class Rejoined:
    """What a front end's join or subscribe reply says, in one shape."""

    ids: list[int]  # the history's message ids, in the order received
    recovered: bool
    last_id: int


class FrontEnd:
    """A real client of one front end; C{connect} again after C{disconnect} is a new connection."""

    subscribes = True  # has a subscribe (topic-style) besides join
    bad_since: list[Any] = [-1, "3", 1.5, True, None, [3], 2**63]  # JSON values that are no message id

    def __init__(self, testcase: TestCase, tree: Any) -> None:
        self.testcase = testcase
        self.tree = tree

    async def connect(self) -> None:
        raise NotImplementedError

    async def join(self, room: str, since: int, subscribe: bool = False) -> Rejoined:
        raise NotImplementedError

    async def next_message(self) -> int:
        """The id of the next live message."""
        raise NotImplementedError

    async def error(self, room: str, since: Any) -> str:
        """The error code a join with this C{since} is answered with."""
        raise NotImplementedError

    async def disconnect(self) -> None:
        """Drop the connection, as a network failure would (no goodbye)."""
        raise NotImplementedError


class LineChat(FrontEnd):
    bad_since = ["-1", "abc", "1.5", "²", "9" * 40, str(2**63), "0x10"]

    async def connect(self) -> None:
        self.client = await chat_client(self.testcase, port_of(self.tree, "chat"))

    async def join(self, room: str, since: int, subscribe: bool = False) -> Rejoined:
        self.lines = await self.client.command(f"{'/sub' if subscribe else '/join'} {room} {since}")
        ok = self.lines[-1].split(" ")
        assert ok[:3] == ["OK", "sub" if subscribe else "join", room], self.lines
        ids = [int(line.split(" ")[2]) for line in self.lines if line.startswith(f"HISTORY {room} ")]
        return Rejoined(ids, not any(line.startswith("GAP ") for line in self.lines), int(ok[3]))

    async def next_message(self) -> int:
        return int((await self.client.read_until("MSG "))[-1].split(" ")[2])

    async def error(self, room: str, since: Any) -> str:
        return (await self.client.command(f"/join {room} {since}"))[-1].split(" ")[1]

    async def disconnect(self) -> None:
        self.client.transport.abortConnection()
        await self.client.closed


class WebSocketChat(FrontEnd):
    async def connect(self) -> None:
        self.client = await ws_connect(self.testcase, port_of(self.tree, "websocket"), "/chat")

    async def join(self, room: str, since: int, subscribe: bool = False) -> Rejoined:
        result = await self.client.call("subscribe" if subscribe else "join", room=room, since=since)
        return Rejoined([m["id"] for m in result["history"]], result["recovered"], result["last_id"])

    async def next_message(self) -> int:
        return int((await self.client.event("message"))["id"])

    async def error(self, room: str, since: Any) -> str:
        return str((await self.client.request("join", room=room, since=since))["error"]["code"])

    async def disconnect(self) -> None:
        self.client.transport.abortConnection()
        await self.client.closed


class Framed(FrontEnd):
    async def connect(self) -> None:
        self.client = await framed_client(self.testcase, port_of(self.tree, "framed"))

    async def join(self, room: str, since: int, subscribe: bool = False) -> Rejoined:
        result = await self.client.call("hub.subscribe" if subscribe else "hub.join", room=room, since=since)
        return Rejoined([m["id"] for m in result["history"]], result["recovered"], result["last_id"])

    async def next_message(self) -> int:
        return int((await self.client.pushes.next("message"))["id"])

    async def error(self, room: str, since: Any) -> str:
        try:
            await self.client.call("hub.join", room=room, since=since)
        except FramedError as e:
            return e.code
        raise AssertionError(f"since={since!r} was accepted")

    async def disconnect(self) -> None:
        self.client.transport.abortConnection()
        await self.client.closed


class PerspectiveBroker(FrontEnd):
    subscribes = False  # PB's join takes a listener; there is no topic-style subscribe
    bad_since = [-1, "3", 1.5, True, None, [3], 2**63]

    async def connect(self) -> None:
        accounts = self.tree.listeners["pb"].factory.services.accounts
        if not hasattr(self.tree, "pat"):
            await accounts.register("pat", "correct horse")
            self.tree.pat = True
        self.client = await pb_connect(self.testcase, port_of(self.tree, "pb"))
        self.avatar = await self.client.login("pat", "correct horse")
        self.listener = Listener()

    async def join(self, room: str, since: int, subscribe: bool = False) -> Rejoined:
        assert not subscribe
        result = await self.avatar.callRemote("join", room, self.listener, False, since)
        return Rejoined([m["id"] for m in result["history"]], result["recovered"], result["last_id"])

    async def next_message(self) -> int:
        return int((await self.listener.next("message"))["id"])

    async def error(self, room: str, since: Any) -> str:
        code = code_of(await failure_of(self.avatar.callRemote("join", room, Listener(), since=since)))
        return str(code)

    async def disconnect(self) -> None:
        self.client.broker.transport.abortConnection()
        await self.client.closed


class RecoveryScenario:
    """The scenario, for the front end named by C{front_end}."""

    front_end: type[FrontEnd]
    timeout = 30

    async def start(self) -> FrontEnd:
        path = self.mktemp() + ".sqlite3"  # type: ignore[attr-defined]
        config = load(self, four_front_ends(path, hub=f"history_size = {HISTORY}"))  # type: ignore[arg-type]
        self.tree = await start_tree(self, config)  # type: ignore[arg-type]
        self.alarms = Alarms(self)  # type: ignore[arg-type]
        self.publisher = await framed_client(self, port_of(self.tree, "framed"))  # type: ignore[arg-type]
        client = self.front_end(self, self.tree)  # type: ignore[arg-type]
        await client.connect()
        return client

    async def publish(self, room: str, count: int) -> list[int]:
        return [(await self.publisher.call("hub.publish", room=room, text=f"m{i}"))["id"] for i in range(count)]

    async def rejoin_after_a_disconnect(self, subscribe: bool) -> FrontEnd:
        t: Any = self
        client = await self.start()
        # a first join with since=0: nothing missed yet, and the reply says where the room is
        t.assertEqual(await client.join("lobby", since=0, subscribe=subscribe), Rejoined([], True, 0))
        await self.publish("lobby", 3)
        seen = [await client.next_message() for _ in range(3)]
        t.assertEqual(seen, [1, 2, 3])

        await client.disconnect()
        t.assertEqual(await self.publish("lobby", 3), [4, 5, 6])
        await client.connect()
        t.assertEqual(await client.join("lobby", since=seen[-1], subscribe=subscribe), Rejoined([4, 5, 6], True, 6))
        await self.publish("lobby", 1)
        t.assertEqual(await client.next_message(), 7)  # then live again: none twice, none missed

        # away for longer than the history reaches: the most recent messages, and recovered false
        await client.disconnect()
        await self.publish("lobby", 2 * HISTORY)
        await client.connect()
        t.assertEqual(await client.join("lobby", since=7, subscribe=subscribe), Rejoined([13, 14, 15, 16, 17], False, 17))
        await self.publish("lobby", 1)
        t.assertEqual(await client.next_message(), 18)
        t.assertEqual(self.alarms.events, [])
        return client

    async def test_rejoin_with_since_gets_exactly_what_was_missed_or_says_there_is_a_gap(self) -> None:
        await self.rejoin_after_a_disconnect(subscribe=False)

    async def test_resubscribe_with_since_gets_exactly_what_was_missed_or_says_there_is_a_gap(self) -> None:
        if self.front_end.subscribes:
            await self.rejoin_after_a_disconnect(subscribe=True)

    async def test_a_since_that_is_no_message_id_is_bad_arguments(self) -> None:
        t: Any = self
        client = await self.start()
        for value in client.bad_since:
            t.assertEqual(await client.error("lobby", value), "BAD_ARGUMENTS", value)
        t.assertEqual(await client.join("lobby", since=0), Rejoined([], True, 0))  # the connection goes on
        errors = self.tree.metrics.registry.get_sample_value(
            "myservices_errors_total", {"service": self.front_end_service(), "code": "BAD_ARGUMENTS"}
        )
        t.assertEqual(errors, len(client.bad_since))
        t.assertEqual(self.alarms.events, [])  # the client's error: nothing logged as an error, no traceback

    def front_end_service(self) -> str:
        return {LineChat: "chat", WebSocketChat: "websocket", Framed: "framed", PerspectiveBroker: "pb"}[self.front_end]


class LineChatRecoveryTests(RecoveryScenario, TestCase):
    front_end = LineChat

    async def test_the_reply_lines_say_what_was_recovered(self) -> None:
        client = await self.start()
        assert isinstance(client, LineChat)
        await self.publish("lobby", 8)
        await client.join("lobby", since=6)
        self.assertEqual([ln.split(" ", 3)[:3] for ln in client.lines if not ln.startswith("JOIN")],
                         [["HISTORY", "lobby", "7"], ["HISTORY", "lobby", "8"], ["OK", "join", "lobby"]])
        self.assertEqual(client.lines[-1], "OK join lobby 8")
        await client.join("lobby", since=1)
        self.assertEqual(client.lines[-2:], ["GAP lobby 4 messages #2 to #3 are no longer kept", "OK join lobby 8"])
        await client.join("lobby", since=99)  # ids this room never gave (its history was reset)
        self.assertEqual(client.lines, ["GAP lobby 9 #99 is past this room's last message #8", "OK join lobby 8"])
        # without SINCE, the replies are what they always were
        self.assertEqual((await client.client.command("/sub news"))[-1], "OK sub news")
        self.assertEqual((await client.client.command("/part lobby"))[-1], "OK part lobby")
        lines = await client.client.command("/join lobby")
        self.assertEqual(lines[-1], "OK join lobby")
        self.assertEqual(len([ln for ln in lines if ln.startswith("HISTORY")]), HISTORY)
        help_lines = await client.client.command("/help")
        self.assertIn("INFO /join ROOM [SINCE]", "\n".join(help_lines))
        self.assertIn("INFO /sub TOPIC [SINCE]", "\n".join(help_lines))
        usage = await client.client.command("/join lobby x")
        self.assertEqual(
            usage, ["ERR BAD_ARGUMENTS usage: /join ROOM [SINCE] (SINCE: the id of the last message you saw, 0 or more)"]
        )


class WebSocketRecoveryTests(RecoveryScenario, TestCase):
    front_end = WebSocketChat


class FramedRecoveryTests(RecoveryScenario, TestCase):
    front_end = Framed


class PBRecoveryTests(RecoveryScenario, TestCase):
    front_end = PerspectiveBroker
