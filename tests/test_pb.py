"""The PB service over loopback with Twisted's own PB client: login, every method, rooms shared with the
other front ends, listeners that fail or fall behind, malformed input and limits."""

from __future__ import annotations

import gc
import os
import sys
from typing import Any

import pytest
from twisted.cred.credentials import Anonymous, UsernamePassword
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.spread import pb
from twisted.trial.unittest import TestCase

from myservices.metrics import Metrics
from myservices.pb.errors import error_code
from myservices.pb.server import PBFactory
from myservices.tree import ServiceTree
from tests import mysql
from tests.pbclient import Listener, PBClient, failure_of, pb_connect
from tests.support import FAST_ACCOUNTS, chat_client, connect, load, port_of, start_tree
from tests.wsclient import ws_connect

EXAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "examples", "pb_client.py")


def pb_config(url: str, pb_section: str = "", extra: str = "") -> str:
    return f"""
[daemon]
shutdown_timeout = 2
[database]
url = "{url}"
[hub]
publish_rate = 100000.0
publish_burst = 100000
{FAST_ACCOUNTS}
{extra}
[services.chat]
endpoint = "tcp:0:interface=127.0.0.1"
[services.websocket]
endpoint = "tcp:0:interface=127.0.0.1"
[services.pb]
endpoint = "tcp:0:interface=127.0.0.1"
{pb_section}
"""


def code_of(failure: Any) -> str | None:
    # every error a client sees is ours, with a code, and never carries a server traceback
    assert failure.traceback == "Traceback unavailable\n", failure.traceback
    return error_code(failure)


class PBTestsMixin:
    timeout = 20

    def database_url(self) -> str:
        raise NotImplementedError

    async def start(self, pb_section: str = "", extra: str = "") -> ServiceTree:
        url = getattr(self, "url", None) or self.database_url()
        self.url = url
        tree = await start_tree(self, load(self, pb_config(url, pb_section, extra)))  # type: ignore[arg-type]
        self.port = port_of(tree, "pb")
        self.accounts = tree.listeners["pb"].factory.services.accounts
        return tree

    async def user(self, name: str, password: str = "correct horse") -> tuple[PBClient, pb.RemoteReference]:
        try:
            await self.accounts.register(name, password)
        except Exception:
            pass  # registered by an earlier call
        client = await pb_connect(self, self.port)  # type: ignore[arg-type]
        return client, await client.login(name, password)

    async def test_login_with_an_account(self) -> None:
        await self.start()
        _, avatar = await self.user("alice")
        self.assertEqual(await avatar.callRemote("whoami"), {"username": "alice", "nick": "alice", "admin": False})

    async def test_key_value_over_pb(self) -> None:
        await self.start()
        _, avatar = await self.user("kim")
        value = {"score": 10, "tags": ["a", "ü"], "ok": True, "none": None}
        self.assertEqual(await avatar.callRemote("kv_set", "k", value), {"key": "k", "created": True})
        self.assertEqual(await avatar.callRemote("kv_get", key="k"), {"key": "k", "value": value})
        self.assertEqual(await avatar.callRemote("kv_list"), {"keys": ["k"]})
        self.assertEqual(await avatar.callRemote("kv_delete", "k"), {"key": "k", "deleted": True})
        self.assertEqual(code_of(await failure_of(avatar.callRemote("kv_get", "k"))), "NOT_FOUND")


class SQLitePBTests(PBTestsMixin, TestCase):
    def database_url(self) -> str:
        return f"sqlite:///{os.path.abspath(self.mktemp())}.sqlite3"

    async def test_wrong_password_and_unknown_user_fail_alike(self) -> None:
        await self.start()
        await self.accounts.register("alice", "correct horse")
        for username, password in [("alice", "wrong password"), ("nobody", "correct horse")]:
            client = await pb_connect(self, self.port)
            failure = await failure_of(client.root.callRemote("login", username, password))
            self.assertEqual(code_of(failure), "LOGIN_FAILED")
            self.assertEqual(failure.getErrorMessage(), "LOGIN_FAILED: wrong username or password")
            # the connection stays usable: a right password after a wrong one logs in
            avatar = await client.login("alice", "correct horse")
            self.assertEqual((await avatar.callRemote("whoami"))["username"], "alice")
            # one login per connection
            failure = await failure_of(client.root.callRemote("login", "alice", "correct horse"))
            self.assertEqual(code_of(failure), "BAD_REQUEST")

    async def test_non_ascii_password(self) -> None:
        # the checker gets the password as UTF-8 bytes (IUsernamePassword) and checks the same text
        await self.start()
        await self.accounts.register("zoe", "pässwörd ✓ 🔑")
        client = await pb_connect(self, self.port)
        failure = await failure_of(client.root.callRemote("login", "zoe", "passwort ✓ 🔑"))
        self.assertEqual(code_of(failure), "LOGIN_FAILED")
        avatar = await client.login("zoe", "pässwörd ✓ 🔑")
        self.assertEqual((await avatar.callRemote("whoami"))["username"], "zoe")

    async def test_twisted_challenge_response_login_gets_a_clear_error(self) -> None:
        await self.start()
        await self.accounts.register("alice", "correct horse")
        client = await pb_connect(self, self.port)
        failure = await failure_of(client.factory.login(UsernamePassword(b"alice", b"correct horse")))
        self.assertEqual(code_of(failure), "BAD_ARGUMENTS")
        self.assertIn("challenge-response", failure.getErrorMessage())

    async def test_anonymous_login_is_off_by_default(self) -> None:
        await self.start()
        client = await pb_connect(self, self.port)
        failure = await failure_of(client.root.callRemote("loginAnonymous"))
        self.assertEqual(code_of(failure), "UNAUTHENTICATED")
        self.assertIn("anonymous login is disabled", failure.getErrorMessage())
        failure = await failure_of(client.factory.login(Anonymous()))
        self.assertEqual(code_of(failure), "UNAUTHENTICATED")

    async def test_anonymous_login_when_allowed_is_read_only(self) -> None:
        await self.start("allow_anonymous = true")
        _, writer = await self.user("wendy")
        await writer.callRemote("publish", "news", "first")
        await writer.callRemote("counter_increment")
        client = await pb_connect(self, self.port)
        # Twisted's own anonymous login works unchanged
        avatar = await client.factory.login(Anonymous())
        who = await avatar.callRemote("whoami")
        self.assertIsNone(who["username"])
        self.assertRegex(who["nick"], r"^guest\d+$")
        self.assertEqual(await avatar.callRemote("echo", [1, "two"]), {"data": [1, "two"]})
        self.assertEqual(await avatar.callRemote("counter_get"), {"value": 1})
        self.assertEqual([m["text"] for m in (await avatar.callRemote("history", "news"))["messages"]], ["first"])
        for method, args in [("kv_get", ("k",)), ("publish", ("news", "x")), ("join", ("news", Listener())),
                             ("counter_increment", ()), ("nick", ("anon",))]:
            failure = await failure_of(avatar.callRemote(method, *args))
            self.assertEqual(code_of(failure), "UNAUTHENTICATED", method)
            self.assertIn("needs a login", failure.getErrorMessage())

    async def test_every_method(self) -> None:
        tree = await self.start()
        _, avatar = await self.user("alice")
        pong = await avatar.callRemote("ping")
        self.assertIs(pong["pong"], True)
        data = {"text": "héllo ✓", "n": [1, 2.5, None, True], "nested": {"a": {}}}
        self.assertEqual(await avatar.callRemote("echo", data), {"data": data})
        self.assertEqual(await avatar.callRemote("counter_increment"), {"value": 1})
        self.assertEqual(await avatar.callRemote("counter_increment"), {"value": 2})
        self.assertEqual(await avatar.callRemote("counter_get"), {"value": 2})
        # an account's nick is its username
        self.assertEqual(code_of(await failure_of(avatar.callRemote("nick", "ally"))), "FORBIDDEN")
        self.assertEqual(await avatar.callRemote("publish", "#News", "topic-style"), {"room": "news", "id": 1})
        history = await avatar.callRemote("history", "news", limit=5)
        self.assertEqual([(m["id"], m["nick"], m["text"]) for m in history["messages"]], [(1, "alice", "topic-style")])

        listener = Listener()
        joined = await avatar.callRemote("join", "Lobby", listener, presence=True)
        room = joined.pop("object")
        self.assertIsInstance(room, pb.RemoteReference)
        self.assertEqual(joined, {"room": "lobby", "history": [], "recovered": True, "last_id": 0, "members": ["alice"]})
        self.assertEqual(await listener.next("presence"),
                         {"kind": "join", "room": "lobby", "nick": "alice", "account": True})
        self.assertEqual(await avatar.callRemote("who", "lobby"), {"room": "lobby", "members": ["alice"]})
        self.assertEqual(await avatar.callRemote("rooms"), {"rooms": [{"name": "lobby", "members": 1, "subscribers": 0, "last_id": 0}]})

        self.assertEqual(await room.callRemote("publish", "hello, wörld"), {"room": "lobby", "id": 1})
        message = await listener.next("message")
        self.assertEqual({k: message[k] for k in ("room", "id", "nick", "text")},
                         {"room": "lobby", "id": 1, "nick": "alice", "text": "hello, wörld"})
        self.assertIsInstance(message["ts"], float)
        self.assertEqual(await room.callRemote("who"), {"room": "lobby", "members": ["alice"]})
        self.assertEqual([m["id"] for m in (await room.callRemote("history"))["messages"]], [1])
        self.assertEqual(await room.callRemote("part"), {"room": "lobby"})
        self.assertEqual(await listener.next("presence", kind="part"),
                         {"kind": "part", "room": "lobby", "nick": "alice", "account": True})
        failure = await failure_of(room.callRemote("publish", "after parting"))
        self.assertEqual(code_of(failure), "NOT_IN_ROOM")
        self.assertIn("parted", failure.getErrorMessage())
        self.assertEqual(await avatar.callRemote("who", "lobby"), {"room": "lobby", "members": []})

        registry = tree.metrics.registry
        sample = lambda command, result: registry.get_sample_value(  # noqa: E731
            "myservices_requests_total", {"service": "pb", "command": command, "result": result}
        )
        self.assertEqual((sample("ping", "ok"), sample("pb.join", "ok"), sample("room.publish", "NOT_IN_ROOM")),
                         (1, 1, 1))

    async def test_pb_line_and_websocket_members_share_a_room(self) -> None:
        tree = await self.start()
        _, avatar = await self.user("pat")
        listener = Listener()
        joined = await avatar.callRemote("join", "lobby", listener, presence=True)
        room = joined["object"]

        line = await chat_client(self, port_of(tree, "chat"), "liner")
        await line.command("/join lobby")
        web = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        await web.call("nick", nick="webby")
        await web.call("join", room="lobby")
        await listener.next("presence", nick="webby")

        await room.callRemote("publish", "from pb")
        self.assertEqual((await line.read_until("MSG lobby 1"))[-1], "MSG lobby 1 pat from pb")
        self.assertEqual((await web.event("message", id=1))["text"], "from pb")

        line.send("from the terminal")
        self.assertEqual((await listener.next("message", nick="liner"))["text"], "from the terminal")
        await web.call("publish", room="lobby", text="from the browser")
        self.assertEqual((await listener.next("message", nick="webby"))["text"], "from the browser")
        self.assertEqual((await line.read_until("MSG lobby 3"))[-1], "MSG lobby 3 webby from the browser")

    async def test_disconnect_ends_the_membership(self) -> None:
        tree = await self.start()
        client, avatar = await self.user("dora")
        await avatar.callRemote("join", "lobby", Listener())
        line = await chat_client(self, port_of(tree, "chat"), "liner")
        await line.command("/join lobby")
        self.assertIn("dora", (await line.command("/who lobby"))[0])
        client.broker.transport.loseConnection()
        await client.closed
        self.assertEqual(await line.read_until("PART lobby dora"), ["PART lobby dora"])
        self.assertEqual(await tree.hub.who("lobby"), ["liner"])

    async def test_wrong_arguments_get_pb_errors_never_tracebacks(self) -> None:
        await self.start()
        client, avatar = await self.user("eve")
        cases: list[tuple[str, tuple[Any, ...], dict[str, Any], str, str]] = [
            ("kv_get", (42,), {}, "BAD_ARGUMENTS", '"key" must be a string'),
            ("kv_get", (b"bytes",), {}, "BAD_ARGUMENTS", '"key" must be a string'),
            ("kv_get", (), {}, "BAD_ARGUMENTS", 'missing argument "key"'),
            ("kv_get", ("a", "b"), {}, "BAD_ARGUMENTS", "takes at most 1 arguments (key), got 2"),
            ("kv_get", (), {"nope": 1}, "BAD_ARGUMENTS", 'unknown argument "nope"'),
            ("kv_get", ("a",), {"key": "a"}, "BAD_ARGUMENTS", 'argument "key" given twice'),
            ("kv_set", ("k", {1, 2}), {}, "BAD_ARGUMENTS", '"value" must be a JSON value'),
            ("kv_set", ("k", float("nan")), {}, "BAD_ARGUMENTS", '"value" must be a JSON value'),
            ("history", ("lobby",), {"limit": "ten"}, "BAD_ARGUMENTS", '"limit" must be an integer'),
            ("history", ("lobby",), {"limit": True}, "BAD_ARGUMENTS", '"limit" must be an integer'),
            ("join", ("lobby", "not a listener"), {}, "BAD_ARGUMENTS", '"listener" must be a pb.Referenceable'),
            ("publish", ("x" * 300, "hi"), {}, "BAD_ARGUMENTS", '"room" is longer than 256'),
            ("publish", ("bad room!", "hi"), {}, "ROOM_INVALID", "bad room!"),
            ("nick", ("9lives",), {}, "NICK_INVALID", "9lives"),
            ("no_such_method", (), {}, "UNKNOWN_COMMAND", 'no method "no_such_method"'),
            ("perspective_kv_get", (), {}, "UNKNOWN_COMMAND", "methods: admin_stats, counter_get"),
        ]
        for method, args, kw, code, text in cases:
            failure = await failure_of(avatar.callRemote(method, *args, **kw))
            self.assertEqual(code_of(failure), code, (method, args, kw))
            self.assertIn(text, failure.getErrorMessage(), (method, args, kw))
        # calls sent without wanting an answer: their failures are counted, not left unhandled (trial would see them)
        self.assertIsNone(avatar.callRemote("kv_get", 42, pbanswer=False))
        self.assertIsNone(avatar.callRemote("no_such_method", pbanswer=False))
        await avatar.callRemote("ping")  # answered after those two were handled
        gc.collect()
        # deeply nested data is refused, not a crash
        deep: Any = "x"
        for _ in range(5000):
            deep = [deep]
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(30_000)  # for the client's encoder only: the call is encoded and sent right here
        try:
            call = avatar.callRemote("echo", deep)
        finally:
            sys.setrecursionlimit(limit)
        failure = await failure_of(call)
        self.assertEqual(code_of(failure), "BAD_ARGUMENTS")
        self.assertIn("nested too deeply", failure.getErrorMessage())
        # the root object and room objects are just as strict
        failure = await failure_of(client.root.callRemote("login", 1, 2))
        self.assertEqual(code_of(failure), "BAD_ARGUMENTS")
        failure = await failure_of(client.root.callRemote("shutdown"))
        self.assertEqual(code_of(failure), "UNKNOWN_COMMAND")
        room = (await avatar.callRemote("join", "lobby", Listener()))["object"]
        failure = await failure_of(room.callRemote("publish", ["not", "text"]))
        self.assertEqual(code_of(failure), "BAD_ARGUMENTS")
        failure = await failure_of(room.callRemote("kick", "someone"))
        self.assertEqual(code_of(failure), "UNKNOWN_COMMAND")
        # and the connection is still fine
        self.assertEqual((await avatar.callRemote("whoami"))["username"], "eve")

    async def test_a_failing_listener_is_dropped_and_others_go_on(self) -> None:
        tree = await self.start()

        class Broken(Listener):
            def remote_message(self, data: dict[str, Any]) -> None:
                raise ValueError("this client has a bug")

        _, bad = await self.user("bad")
        bad_room = (await bad.callRemote("join", "lobby", Broken()))["object"]
        _, good = await self.user("good")
        listener = Listener()
        good_room = (await good.callRemote("join", "lobby", listener, presence=True))["object"]
        await good_room.callRemote("publish", "one")
        self.assertEqual((await listener.next("message"))["text"], "one")
        # the broken listener's membership ended: the others see it leave
        self.assertEqual(await listener.next("presence", kind="part"),
                         {"kind": "part", "room": "lobby", "nick": "bad", "account": True})
        failure = await failure_of(bad_room.callRemote("publish", "still here?"))
        self.assertEqual(code_of(failure), "NOT_IN_ROOM")
        self.assertIn("remote_message failed: this client has a bug", failure.getErrorMessage())
        await good_room.callRemote("publish", "two")
        self.assertEqual((await listener.next("message"))["text"], "two")
        self.assertEqual(await tree.hub.who("lobby"), ["good"])
        # the dropped client's connection and login still work: it may join again
        self.assertEqual((await bad.callRemote("whoami"))["username"], "bad")
        self.flushLoggedErrors()

    async def test_a_listener_that_falls_behind_is_dropped(self) -> None:
        tree = await self.start("max_unanswered = 5")
        stuck: list[Deferred[None]] = []

        class Stuck(Listener):
            def remote_message(self, data: dict[str, Any]) -> Deferred[None]:
                d: Deferred[None] = Deferred()
                stuck.append(d)
                return d

        _, slow = await self.user("slow")
        slow_room = (await slow.callRemote("join", "lobby", Stuck()))["object"]
        _, fast = await self.user("fast")
        listener = Listener()
        fast_room = (await fast.callRemote("join", "lobby", listener))["object"]
        for i in range(1, 11):
            await fast_room.callRemote("publish", f"m{i}")
        # the fast member got every message in order
        for i in range(1, 11):
            self.assertEqual((await listener.next("message"))["id"], i)
        self.assertEqual(await tree.hub.who("lobby"), ["fast"])
        failure = await failure_of(slow_room.callRemote("who"))
        self.assertEqual(code_of(failure), "NOT_IN_ROOM")
        self.assertIn("5 events unanswered", failure.getErrorMessage())
        self.assertEqual(len(stuck), 5)
        for d in stuck:
            d.callback(None)

    async def test_a_message_over_the_size_limit_closes_only_that_connection(self) -> None:
        await self.start("max_message_size = 2048")
        big, big_avatar = await self.user("big")
        _, other = await self.user("other")
        self.assertEqual(await big_avatar.callRemote("echo", "x" * 1000), {"data": "x" * 1000})
        failure = await failure_of(big_avatar.callRemote("echo", "x" * 10_000))
        self.assertTrue(failure.check(pb.PBConnectionLost), failure)
        await big.closed
        self.assertEqual((await other.callRemote("whoami"))["username"], "other")

    async def test_garbage_on_the_wire_closes_the_connection(self) -> None:
        tree = await self.start()
        raw = await connect(self, self.port)
        await raw.receive(1)  # the dialect offer
        raw.transport.write(b"\x01\x02\x03\xff" * 10)
        await raw.closed
        self.assertEqual(
            tree.metrics.registry.get_sample_value(
                "myservices_connections_closed_by_server_total", {"service": "pb", "reason": "bad_stream"}
            ),
            1,
        )
        _, avatar = await self.user("after")
        self.assertEqual((await avatar.callRemote("whoami"))["username"], "after")

    async def test_rate_limit(self) -> None:
        await self.start("request_rate = 1.0\nrequest_burst = 3")
        _, avatar = await self.user("rita")  # the login is one call
        await avatar.callRemote("ping")
        await avatar.callRemote("ping")
        failure = await failure_of(avatar.callRemote("ping"))
        self.assertEqual(code_of(failure), "RATE_LIMITED")

    async def test_stopping_the_server_disconnects_clients_and_ends_memberships(self) -> None:
        tree = await self.start()
        client, avatar = await self.user("sam")
        await avatar.callRemote("join", "lobby", Listener())
        await tree.stopService()
        await client.closed
        self.assertEqual(await tree.hub.who("lobby"), [])

    async def test_the_documented_example_client(self) -> None:
        tree = await self.start()
        await self.accounts.register("alice", "correct horse")
        line = await chat_client(self, port_of(tree, "chat"), "liner")
        await line.command("/join lobby")
        line.send("before the example")
        await line.read_until("MSG lobby 1")
        env = dict(os.environ, MYSERVICES_PASSWORD="correct horse")
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            [EXAMPLE, "--endpoint", f"tcp:127.0.0.1:{self.port}", "--user", "alice", "--say", "hello from pb",
             "--count", "1", "lobby"],
            env=env, reactor=reactor,
        )
        self.assertEqual(code, 0, err.decode())
        lines = out.decode().splitlines()
        self.assertEqual(lines[0], "logged in: {'username': 'alice', 'nick': 'alice', 'admin': False}")
        self.assertIn("members: liner, alice", lines)
        self.assertIn("[lobby #1] <liner> before the example (history)", lines)
        self.assertIn("[lobby #2] <alice> hello from pb", lines)
        self.assertEqual((await line.read_until("MSG lobby 2"))[-1], "MSG lobby 2 alice hello from pb")
        # a wrong password: the error code, exit status 1
        env["MYSERVICES_PASSWORD"] = "wrong"
        out, err, code = await getProcessOutputAndValue(
            sys.executable, [EXAMPLE, "--endpoint", f"tcp:127.0.0.1:{self.port}", "--user", "alice"],
            env=env, reactor=reactor,
        )
        self.assertEqual((code, err.decode().strip()), (1, "error: LOGIN_FAILED: wrong username or password"))


@pytest.mark.mysql
class MySQLPBTests(PBTestsMixin, TestCase):
    """Login and stored data through PB on the production database."""

    def database_url(self) -> str:
        return mysql.create_database(self)


class PBConnectionUnitTests(TestCase):
    """Timers of a single connection, on a Clock."""

    def connection(self, section: str = "") -> tuple[Any, StringTransport, Clock]:
        cfg = load(self, pb_config("sqlite:///:memory:", section)).services["pb"]
        clock = Clock()
        services = _FakeServices()
        self.metrics = Metrics()
        factory = PBFactory("pb", cfg, services, self.metrics, clock, 1024 * 1024)  # type: ignore[arg-type]
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport, clock

    def test_login_timeout(self) -> None:
        proto, transport, clock = self.connection("login_timeout = 10\nidle_timeout = 0")
        clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_malformed_arguments_are_answered_before_the_close(self) -> None:
        proto, transport, clock = self.connection("login_timeout = 0")
        transport.clear()
        # root.login(<malformed jelly>): the call is refused, and the connection closes after the answer
        proto.proto_message(1, b"root", b"login", 1, [b"tuple", [b"dictionary", [1]]], [b"dictionary"])
        self.assertTrue(transport.disconnecting)
        self.assertIn(b"malformed arguments", transport.value())
        proto.connectionLost(None)

    def test_idle_timeout_counts_any_input(self) -> None:
        proto, transport, clock = self.connection("login_timeout = 0\nidle_timeout = 10")
        clock.advance(8)
        proto.dataReceived(b"")  # input of any kind keeps the connection
        clock.advance(8)
        self.assertFalse(transport.disconnecting)
        clock.advance(3)
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(None)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_max_in_flight_stops_reading_until_a_call_finishes(self) -> None:
        from myservices.handlers.router import Command

        proto, transport, clock = self.connection("max_in_flight = 2\nlogin_timeout = 0")
        pending: list[Deferred[dict[str, Any]]] = []

        def slow(target: Any) -> Deferred[dict[str, Any]]:
            d: Deferred[dict[str, Any]] = Deferred()
            pending.append(d)
            return d

        command = Command("slow", slow, ())
        calls = [proto.call("slow", command, None, proto.serialize(()), proto.serialize({})) for _ in range(2)]
        self.assertEqual(transport.producerState, "paused")
        pending[0].callback({"done": 1})
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(self.successResultOf(calls[0]), {"done": 1})
        pending[1].errback(ValueError("a bug"))
        failure = self.failureResultOf(calls[1])
        self.assertEqual(failure.getErrorMessage(), "INTERNAL: internal error; it has been logged")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        proto.connectionLost(None)

    def test_output_a_client_does_not_read_is_bounded(self) -> None:
        proto, transport, clock = self.connection("login_timeout = 0")
        written = len(transport.value())
        proto.outbound.pauseProducing()  # what Twisted does when the socket buffer is full
        for _ in range(20):
            proto.sendEncoded(b"x" * 100_000)  # 2 MB against a 1 MiB bound
        self.assertTrue(transport.disconnected)  # aborted: nothing more is sent to it
        self.assertEqual(len(transport.value()), written)
        self.assertEqual(self.metrics.registry.get_sample_value("myservices_slow_consumers_total", {"service": "pb"}), 1)
        proto.connectionLost(None)


class _FakeServices:
    accounts = None
    hub = None
    logins = None
