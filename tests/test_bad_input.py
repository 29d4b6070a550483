"""Input a client controls is the client's error on every front end: a clear code, no traceback, nobody else hurt.

The poison test is what an attacker did: a message with an unpaired surrogate
published through each front end while members of the room sit on all four.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.spread import pb
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from myservices.db import DatabaseUnavailable
from myservices.errors import BAD_ARGUMENTS, RequestError
from myservices.framed.catalog import COMMANDS
from myservices.handlers import values
from tests.pbclient import Listener, failure_of, pb_connect
from tests.support import FAST_ACCOUNTS, chat_client, connect, framed_client, load, port_of, start_tree
from tests.test_framed import frames, raw_frame
from tests.test_pb import code_of
from tests.wsclient import ws_connect

CONFIG = """
[daemon]
shutdown_timeout = 2
[database]
url = "sqlite:///{path}"
[hub]
publish_rate = 1000000.0
publish_burst = 1000000
{hub}
{accounts}
[services.chat]
endpoint = "tcp:0:interface=127.0.0.1"
[services.framed]
endpoint = "tcp:0:interface=127.0.0.1"
[services.websocket]
endpoint = "tcp:0:interface=127.0.0.1"
[services.pb]
endpoint = "tcp:0:interface=127.0.0.1"
{pb}
"""


def four_front_ends(path: str, hub: str = "", pb: str = "") -> str:
    """A config with the hub's four front ends on ephemeral ports and SQLite at C{path}."""
    return CONFIG.format(path=path, hub=hub, pb=pb, accounts=FAST_ACCOUNTS)


@implementer(ILogObserver)
class Alarms:
    """Every log event at error level or above, and every one that carries a traceback."""

    def __init__(self, testcase: TestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self)
        testcase.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("log_level") in (LogLevel.error, LogLevel.critical):
            self.events.append(event)


class FrontEndsMixin:
    timeout = 30

    async def start(self) -> Any:
        path = self.mktemp() + ".sqlite3"  # type: ignore[attr-defined]
        self.tree = await start_tree(self, load(self, four_front_ends(path)))  # type: ignore[arg-type]
        self.alarms = Alarms(self)  # type: ignore[arg-type]
        return self.tree

    async def framed_raw(self, command: str, body: bytes) -> dict[str, Any]:
        """Send one frame with C{body} as it is; the reply's body."""
        conn = await connect(self, port_of(self.tree, "framed"))  # type: ignore[arg-type]
        conn.transport.write(raw_frame(1, COMMANDS[command], body))
        while not frames(conn.data):
            await conn.receive(len(conn.data) + 1)
        conn.transport.loseConnection()
        return frames(conn.data)[0][1]

    def error_count(self, service: str, code: str) -> float:
        value = self.tree.metrics.registry.get_sample_value(
            "myservices_errors_total", {"service": service, "code": code}
        )
        return value or 0.0


class PoisonMessageTests(FrontEndsMixin, TestCase):
    async def test_a_lone_surrogate_is_refused_everywhere_and_the_room_and_its_history_go_on(self) -> None:
        tree = await self.start()
        line = await chat_client(self, port_of(tree, "chat"), "liner")
        await line.command("/join lobby")
        web = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        await web.call("nick", nick="webby")
        await web.call("join", room="lobby")
        framed = await framed_client(self, port_of(tree, "framed"))
        await framed.call("hub.nick", nick="framer")
        await framed.call("hub.join", room="lobby")
        await tree.listeners["pb"].factory.services.accounts.register("pat", "correct horse")
        pb_client = await pb_connect(self, port_of(tree, "pb"))
        avatar = await pb_client.login("pat", "correct horse")
        listener = Listener()
        room = (await avatar.callRemote("join", "lobby", listener))["object"]

        # the attack, through each front end that can carry it
        reply = await self.framed_raw("hub.publish", b'{"id": 7, "args": {"room": "lobby", "text": "\\ud800"}}')
        self.assertEqual((reply["id"], reply["error"]["code"]), (7, "BAD_ARGUMENTS"))
        self.assertIn("surrogate", reply["error"]["message"])
        web.send_json({"type": "publish", "id": "p", "room": "lobby", "text": "a\udfffb"})
        self.assertEqual((await web.event("error", id="p"))["error"]["code"], "BAD_ARGUMENTS")
        line.send(b"\xed\xa0\x80\r\n")  # a surrogate encoded as if it were UTF-8
        self.assertEqual((await line.read_until("ERR"))[-1], "ERR BAD_ENCODING input is not valid UTF-8")
        # PB cannot carry it: jelly encodes and decodes strings as strict UTF-8 at both ends

        # everyone is still here, and every front end's next message is delivered and stored in order
        line.send("from the terminal")
        await web.call("publish", room="lobby", text="from the browser")
        await framed.call("hub.publish", room="lobby", text="from framed")
        await room.callRemote("publish", "from pb")
        expected = [(1, "from the terminal"), (2, "from the browser"), (3, "from framed"), (4, "from pb")]
        lines = await line.read_until("MSG lobby 4")
        self.assertEqual([ln for ln in lines if ln.startswith("MSG")],
                         [f"MSG lobby {i} {n} {t}" for (i, t), n in zip(expected, ("liner", "webby", "framer", "pat"))])
        for i, _ in expected:
            self.assertEqual((await web.event("message", id=i))["id"], i)
            self.assertEqual((await listener.next("message", id=i))["id"], i)
        self.assertEqual([(m["id"], m["text"]) for m in (await framed.call("hub.history", room="lobby"))["messages"]],
                         expected)
        self.assertEqual(sorted(await tree.hub.who("lobby")), ["framer", "liner", "pat", "webby"])
        # and it is in the database, not only in memory
        _, stored = await tree.hub.engine.store.load("lobby", 50)
        self.assertEqual([(m.id, m.text) for m in stored], expected)
        self.assertEqual(self.alarms.events, [])


# values JSON text can carry that no handler can take; each is sent as the "data" of echo and the "value"
# of kv.set, and inside a publish
BAD_JSON_VALUES = [
    "NaN", "Infinity", "-Infinity", "1e400", "-1e400", '"\\ud800"', '"x\\udc00"', '["ok", {"k": "\\ud83d"}]',
    '{"\\udfff": 1}',
]
TOO_DEEP = "[" * 5000 + "]" * 5000  # past the parser's recursion limit: not readable at all, BAD_REQUEST


class BadValueTests(FrontEndsMixin, TestCase):
    async def test_framed_answers_bad_arguments_with_the_request_id_and_logs_nothing(self) -> None:
        await self.start()
        client = await framed_client(self, port_of(self.tree, "framed"))
        await client.call("register", username="val", password="correct horse")
        for i, bad in enumerate(BAD_JSON_VALUES, 1):
            for command, args in (("echo", '{"data": %s}'), ("hub.publish", '{"room": "r", "text": %s}')):
                reply = await self.framed_raw(command, b'{"id": %d, "args": %s}' % (i, (args % bad).encode()))
                self.assertEqual((reply["id"], reply["error"]["code"]), (i, "BAD_ARGUMENTS"), (command, bad))
                self.assertIs(reply["error"]["retry"], False)
        reply = await self.framed_raw("echo", b'{"id": 99, "args": {"data": %s}}' % TOO_DEEP.encode())
        self.assertEqual((reply["id"], reply["error"]["code"]), (0, "BAD_REQUEST"))
        # what is fine stays fine: a paired surrogate escape is an emoji
        self.assertEqual(await client.call("echo", data="\U0001f600"), {"data": "\U0001f600"})
        reply = await self.framed_raw("echo", b'{"id": 1, "args": {"data": "\\ud83d\\ude00"}}')
        self.assertEqual(reply["result"], {"data": "\U0001f600"})
        self.assertEqual(self.error_count("framed", "BAD_ARGUMENTS"), 2 * len(BAD_JSON_VALUES))
        self.assertEqual(self.error_count("framed", "INTERNAL"), 0)
        self.assertEqual(self.alarms.events, [])

    async def test_websocket_answers_bad_arguments_and_logs_nothing(self) -> None:
        await self.start()
        web = await ws_connect(self, port_of(self.tree, "websocket"), "/chat")
        for i, bad in enumerate(BAD_JSON_VALUES):
            web.sendMessage(b'{"type": "publish", "id": %d, "room": "r", "text": %s}' % (i, bad.encode()))
            error = await web.event("error", id=i)
            self.assertEqual(error["error"]["code"], "BAD_ARGUMENTS", bad)
        web.sendMessage(b'{"type": "echo", "id": 99, "data": %s}' % TOO_DEEP.encode())
        self.assertEqual((await web.event("error"))["error"]["code"], "BAD_REQUEST")
        self.assertEqual(self.error_count("websocket", "BAD_ARGUMENTS"), len(BAD_JSON_VALUES))
        self.assertIs((await web.call("ping"))["pong"], True)  # still served
        self.assertEqual(self.alarms.events, [])

    async def test_pb_answers_bad_arguments_for_values_and_types_it_cannot_take(self) -> None:
        await self.start()
        await self.tree.listeners["pb"].factory.services.accounts.register("val", "correct horse")
        client = await pb_connect(self, port_of(self.tree, "pb"))
        avatar = await client.login("val", "correct horse")

        class NotAllowed(pb.Copyable):
            pass

        nested: Any = []
        for _ in range(200):
            nested = [nested]
        cases = [float("nan"), float("inf"), {1: "int key"}, {(1, 2): "tuple key"}, {"k": float("-inf")},
                 NotAllowed(), nested, {b"bytes": 1}, b"bytes"]
        for value in cases:
            for method, args in (("echo", (value,)), ("kv_set", ("key", value))):
                failure = await failure_of(avatar.callRemote(method, *args))
                self.assertEqual(code_of(failure), "BAD_ARGUMENTS", (method, value))
        self.assertEqual(await avatar.callRemote("echo", {"fine": [1, 2.5, None, True]}),
                         {"data": {"fine": [1, 2.5, None, True]}})
        self.assertEqual(self.error_count("pb", "INTERNAL"), 0)
        self.assertEqual(self.alarms.events, [])


class StrictJSONTests(TestCase):
    def test_loads_refuses_what_json_cannot_carry_and_keeps_what_it_can(self) -> None:
        for bad in BAD_JSON_VALUES:
            self.assertRaises(values.InvalidValue, values.loads, bad)
        for not_json in ("", "{", "[1,]", "'x'", "1" * 5000, TOO_DEEP):
            self.assertRaises(values.InvalidJSON, values.loads, not_json)
        for good in ('"\\ud83d\\ude00"', "1e308", "-0.0", '{"a": [1, "\\u00e9"]}', '"\\\\ud800"'):
            self.assertEqual(values.loads(good), json.loads(good))

    def test_check_value(self) -> None:
        self.assertEqual(values.check_value({"a": [1, 2.0, None, True, "x"]}), {"a": [1, 2.0, None, True, "x"]})
        for bad in (float("nan"), {1: 2}, object(), "\ud800", {"k": {"\udc00": 1}}, set()):
            self.assertRaises(values.InvalidValue, values.check_value, bad)

    def test_a_failure_is_classified_once_for_every_front_end(self) -> None:
        self.assertEqual(values.client_error(values.InvalidValue("x")).error.code, "BAD_ARGUMENTS")
        self.assertEqual(values.client_error(RecursionError()).error.code, "BAD_ARGUMENTS")
        self.assertEqual(values.client_error(DatabaseUnavailable("down")).error.code, "DATABASE_UNAVAILABLE")
        self.assertIsNone(values.client_error(ZeroDivisionError()))
        self.assertIsInstance(values.client_error(RequestError(BAD_ARGUMENTS)), RequestError)

