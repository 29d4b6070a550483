"""The server API (/api/publish, broadcast, rooms, presence, history, disconnect) on the real service tree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.test.requesthelper import DummyRequest

from myservices.config import ConfigError
from myservices.errors import DatabaseUnavailable
from myservices.web.api_keys import ApiKeys
from tests import redisserver
from tests.apiclient import KEY, OTHER_KEY, ApiClient, ApiTestCase, api_config
from tests.pbclient import Listener, pb_connect
from tests.support import chat_client, framed_client, load, port_of, start_tree
from tests.wsclient import ws_connect


class PublishTests(ApiTestCase):
    async def test_publish_reaches_line_websocket_framed_and_pb_clients_in_the_room(self) -> None:
        tree = await self.start()
        line = await chat_client(self, port_of(tree, "chat"), "liner")
        await line.command("/join lobby")
        web = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        await web.call("join", room="lobby")
        framed = await framed_client(self, port_of(tree, "framed"))
        await framed.call("hub.join", room="lobby")
        accounts = tree.listeners["http"].factory.resource.children[b"api"].children[b"login"].accounts
        await accounts.register("perry", "a good password")
        avatar = await (await pb_connect(self, port_of(tree, "pb"))).login("perry", "a good password")
        listener = Listener()
        await avatar.callRemote("join", "lobby", listener)
        elsewhere = await chat_client(self, port_of(tree, "chat"), "other")
        await elsewhere.command("/join elsewhere")

        response = await self.api.post("/api/publish", {"room": "#Lobby", "text": "hello from the backend"})
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.header("content-type"), "application/json")
        message = response.json()
        self.assertEqual(
            {k: message[k] for k in ("room", "nick", "text", "account")},
            {"room": "lobby", "nick": "api", "text": "hello from the backend", "account": False},
        )
        self.assertIsInstance(message["id"], int)
        self.assertIsInstance(message["ts"], float)
        self.assertEqual(
            (await line.read_until("MSG "))[-1], f"MSG lobby {message['id']} api hello from the backend"
        )
        seen = await web.event("message", id=message["id"])
        self.assertEqual((seen["nick"], seen["text"], seen["account"]), ("api", "hello from the backend", False))
        pushed = await framed.pushes.next("message")
        self.assertEqual((pushed["id"], pushed["nick"], pushed["text"]), (message["id"], "api", "hello from the backend"))
        called = await listener.next("message", id=message["id"])
        self.assertEqual((called["nick"], called["text"], called["account"]), ("api", "hello from the backend", False))

        response = await self.api.post("/api/publish", {"room": "lobby", "text": "second", "nick": "Billing"})
        self.assertEqual(response.json()["nick"], "Billing")
        self.assertEqual((await line.read_until("MSG "))[-1], f"MSG lobby {message['id'] + 1} Billing second")
        self.assertFalse([m for m in elsewhere.unread if m.startswith("MSG")])

    async def test_bad_bodies_are_answered_400_without_a_logged_traceback(self) -> None:
        await self.start()
        cases: list[tuple[Any, str]] = [
            (b"{not json", "BAD_REQUEST"),
            (b"", "BAD_REQUEST"),
            (b"\xff\xfe garbage", "BAD_REQUEST"),
            (b"[" * 60_000, "BAD_REQUEST"),
            (b'{"room": "lobby", "text": NaN}', "BAD_ARGUMENTS"),
            (["lobby", "text"], "BAD_ARGUMENTS"),
            ("a string", "BAD_ARGUMENTS"),
            ({"text": "no room"}, "BAD_ARGUMENTS"),
            ({"room": "lobby"}, "BAD_ARGUMENTS"),
            ({"room": 5, "text": "x"}, "BAD_ARGUMENTS"),
            ({"room": "lobby", "text": ["x"]}, "BAD_ARGUMENTS"),
            ({"room": "lobby", "text": "x", "nick": None}, "BAD_ARGUMENTS"),
            ({"room": "lobby", "text": "x", "extra": 1}, "BAD_ARGUMENTS"),
            ({"room": "no spaces", "text": "x"}, "ROOM_INVALID"),
            ({"room": "lobby", "text": ""}, "TEXT_INVALID"),
            ({"room": "lobby", "text": "bell\x07"}, "TEXT_INVALID"),
            ({"room": "lobby", "text": "x", "nick": "9lives"}, "NICK_INVALID"),
        ]
        for body, code in cases:
            response = await self.api.post("/api/publish", body)
            error = self.assert_error(response, 400, code)
            self.assertTrue(error["message"])
        self.assert_error(await self.api.post("/api/publish", {"room": "a", "text": "b"}, "text/plain"), 415, "BAD_REQUEST")
        self.assert_error(await self.api.post("/api/publish", {"room": "a", "text": "b"}, None), 415, "BAD_REQUEST")
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_a_body_over_the_limit_is_413(self) -> None:
        await self.start(f'keys = ["{KEY}"]\nmax_body_size = 256')
        response = await self.api.post("/api/publish", {"room": "lobby", "text": "x" * 300})
        self.assert_error(response, 413, "TOO_LARGE")
        small = await self.api.post("/api/publish", {"room": "lobby", "text": "x" * 200})
        self.assertEqual(small.code, 200, small.body)

    async def test_unknown_routes_and_methods_are_json(self) -> None:
        await self.start()
        self.assert_error(await self.api.get("/api/nope"), 404, "NOT_FOUND")
        self.assert_error(await self.api.get("/api/rooms/lobby/nope"), 404, "NOT_FOUND")
        self.assert_error(await self.api.get("/api/rooms/lobby"), 404, "NOT_FOUND")
        response = await self.api.get("/api/publish")
        self.assert_error(response, 405, "BAD_REQUEST")
        self.assertIn("POST", response.header("allow") or "")
        self.assert_error(await self.api.post("/api/rooms", {}), 405, "BAD_REQUEST")

    async def test_failures_of_the_hub_share_one_error_path(self) -> None:
        tree = await self.start()

        async def unavailable(*args: Any) -> Any:
            raise DatabaseUnavailable("down")

        async def broken(*args: Any) -> Any:
            raise ZeroDivisionError("a bug")

        self.patch(tree.hub, "post", unavailable)
        response = await self.api.post("/api/publish", {"room": "lobby", "text": "x"})
        self.assert_error(response, 503, "DATABASE_UNAVAILABLE")
        self.assertEqual(response.header("retry-after"), "5")
        self.patch(tree.hub, "post", broken)
        self.assert_error(await self.api.post("/api/publish", {"room": "lobby", "text": "x"}), 500, "INTERNAL")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        # in a broadcast, each room's failure is its own result
        response = await self.api.post("/api/broadcast", {"rooms": ["a", "b"], "text": "x"})
        self.assertEqual([r["error"]["code"] for r in response.json()["results"]], ["INTERNAL", "INTERNAL"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)


class BroadcastTests(ApiTestCase):
    async def test_one_publish_per_room_and_a_failed_room_does_not_stop_the_others(self) -> None:
        tree = await self.start()
        alpha = await chat_client(self, port_of(tree, "chat"), "alpha")
        await alpha.command("/join alpha")
        beta = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        await beta.call("join", room="beta")

        response = await self.api.post(
            "/api/broadcast", {"rooms": ["alpha", "bad room", "beta"], "text": "maintenance at noon", "nick": "ops"}
        )
        self.assertEqual(response.code, 200, response.body)
        results = response.json()["results"]
        self.assertEqual([r["room"] for r in results], ["alpha", "bad room", "beta"])
        self.assertEqual(results[1]["error"]["code"], "ROOM_INVALID")
        self.assertEqual((results[0]["text"], results[0]["nick"]), ("maintenance at noon", "ops"))
        self.assertEqual((await alpha.read_until("MSG "))[-1], f"MSG alpha {results[0]['id']} ops maintenance at noon")
        self.assertEqual((await beta.event("message", room="beta"))["id"], results[2]["id"])

    async def test_the_rooms_are_checked_and_capped(self) -> None:
        await self.start(f'keys = ["{KEY}"]\nmax_broadcast_rooms = 3')
        for rooms in ([], ["a", "b", "c", "d"], ["a", "a"], ["a", 1], "a"):
            response = await self.api.post("/api/broadcast", {"rooms": rooms, "text": "x"})
            self.assert_error(response, 400, "BAD_ARGUMENTS")
        response = await self.api.post("/api/broadcast", {"rooms": ["a", "b", "c"], "text": "x"})
        self.assertEqual(response.code, 200, response.body)


class RoomsTests(ApiTestCase):
    async def test_rooms_presence_and_history(self) -> None:
        tree = await self.start()
        alice = await chat_client(self, port_of(tree, "chat"), "alice")
        await alice.command("/join lobby")
        await alice.command("/join ops")
        bob = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        await bob.call("nick", nick="bob")
        await bob.call("join", room="lobby")
        await bob.call("subscribe", room="news")
        ids = [(await self.api.post("/api/publish", {"room": "lobby", "text": f"m{i}"})).json()["id"] for i in range(5)]

        rooms = (await self.api.get("/api/rooms")).json()["rooms"]
        self.assertEqual(
            rooms,
            [
                {"name": "lobby", "members": 2, "subscribers": 0, "last_id": ids[-1]},
                {"name": "news", "members": 0, "subscribers": 1, "last_id": 0},
                {"name": "ops", "members": 1, "subscribers": 0, "last_id": 0},
            ],
        )
        presence = (await self.api.get("/api/rooms/%23Lobby/presence")).json()
        self.assertEqual(presence, {"room": "lobby", "members": ["alice", "bob"], "member_count": 2, "subscriber_count": 0})
        empty = (await self.api.get("/api/rooms/nobody-here/presence")).json()
        self.assertEqual(empty, {"room": "nobody-here", "members": [], "member_count": 0, "subscriber_count": 0})

        history = (await self.api.get("/api/rooms/lobby/history")).json()
        self.assertEqual([m["id"] for m in history["messages"]], ids)
        self.assertEqual([m["text"] for m in history["messages"]], [f"m{i}" for i in range(5)])
        self.assertEqual(history["last_id"], ids[-1])
        last_two = (await self.api.get("/api/rooms/lobby/history?limit=2")).json()
        self.assertEqual([m["id"] for m in last_two["messages"]], ids[-2:])

        # paging with since: the first page after ids[0], then the next, until the last id
        page = (await self.api.get(f"/api/rooms/lobby/history?since={ids[0]}&limit=2")).json()
        self.assertEqual([m["id"] for m in page["messages"]], ids[1:3])
        self.assertTrue(page["complete"])
        page = (await self.api.get(f"/api/rooms/lobby/history?since={ids[2]}&limit=2")).json()
        self.assertEqual([m["id"] for m in page["messages"]], ids[3:5])
        page = (await self.api.get(f"/api/rooms/lobby/history?since={ids[4]}")).json()
        self.assertEqual((page["messages"], page["complete"]), ([], True))

    async def test_since_older_than_what_is_kept_is_not_complete(self) -> None:
        await self.start(hub="history_size = 3")
        ids = [(await self.api.post("/api/publish", {"room": "lobby", "text": f"m{i}"})).json()["id"] for i in range(6)]
        page = (await self.api.get(f"/api/rooms/lobby/history?since={ids[0]}")).json()
        self.assertFalse(page["complete"])
        self.assertEqual([m["id"] for m in page["messages"]], ids[3:])
        page = (await self.api.get(f"/api/rooms/lobby/history?since={ids[2]}")).json()
        self.assertTrue(page["complete"])

    async def test_query_arguments_are_checked(self) -> None:
        await self.start(hub="history_size = 10")
        for query in (
            "since=-1", "since=abc", "since=1.5", "since=", "limit=0", "limit=11", "limit=x", "since=99999999999999999999",
            "since=1&since=2", "other=1", "limit=%EF%BC%91",
        ):
            response = await self.api.get(f"/api/rooms/lobby/history?{query}")
            self.assert_error(response, 400, "BAD_ARGUMENTS")
        self.assert_error(await self.api.get("/api/rooms/bad%20room/history"), 400, "ROOM_INVALID")
        self.assert_error(await self.api.get("/api/rooms?x=1"), 400, "BAD_ARGUMENTS")
        response = await self.api.get("/api/rooms/lobby/history?since=0&limit=10")
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(self.flushLoggedErrors(), [])


class DisconnectTests(ApiTestCase):
    async def test_every_connection_of_the_nick_is_closed_and_told_why(self) -> None:
        tree = await self.start()
        target = await chat_client(self, port_of(tree, "chat"), "Mallory")
        await target.command("/join lobby")
        web = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        await web.call("nick", nick="bystander")
        await web.call("join", room="lobby")

        response = await self.api.post("/api/disconnect", {"nick": "mallory", "reason": "spam"})
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.json(), {"nick": "mallory", "disconnected": True})
        lines = await target.read_until("ERR ")
        self.assertEqual(lines[-1], "ERR DISCONNECTED spam")
        await target.closed
        self.assertEqual((await web.event("presence", kind="part"))["nick"], "Mallory")
        response = await self.api.post("/api/disconnect", {"nick": "mallory"})
        self.assertEqual(response.json(), {"nick": "mallory", "disconnected": False})

    async def test_the_body_is_checked(self) -> None:
        await self.start()
        for body in ({}, {"nick": 1}, {"nick": "a", "reason": 2}, {"nick": "a", "reason": "x" * 201}, {"nick": "a", "x": 1}):
            self.assert_error(await self.api.post("/api/disconnect", body), 400, "BAD_ARGUMENTS")
        self.assert_error(await self.api.post("/api/disconnect", {"nick": "no spaces"}), 400, "NICK_INVALID")
        self.assert_error(await self.api.post("/api/disconnect", {"nick": "a", "reason": "bell\x07"}), 400, "TEXT_INVALID")


class AuthTests(ApiTestCase):
    ROUTES = (
        ("POST", "/api/publish", {"room": "lobby", "text": "x"}),
        ("POST", "/api/broadcast", {"rooms": ["lobby"], "text": "x"}),
        ("GET", "/api/rooms", None),
        ("GET", "/api/rooms/lobby/presence", None),
        ("GET", "/api/rooms/lobby/history", None),
        ("POST", "/api/disconnect", {"nick": "nobody"}),
    )

    async def call(self, client: ApiClient, method: str, path: str, body: Any, key: Any = True) -> Any:
        if method == "POST":
            return await client.post(path, body, key=key)
        return await client.get(path, key=key)

    async def test_no_key_or_a_wrong_key_is_401_on_every_protected_route(self) -> None:
        await self.start()
        for method, path, body in self.ROUTES:
            for key in (None, "wrong-key-of-enough-length", KEY + "x", KEY[:-1], ""):
                response = await self.call(self.api, method, path, body, key)
                self.assert_error(response, 401, "UNAUTHENTICATED")
                self.assertEqual(response.header("www-authenticate"), 'Bearer realm="myservices"')
            response = await self.call(self.api, method, path, body)
            self.assertEqual(response.code, 200, (path, response.body))

    async def test_public_routes_need_no_key(self) -> None:
        await self.start()
        for path in ("/api/counter", "/api/openapi.json"):
            response = await self.api.get(path, key=None)
            self.assertEqual(response.code, 200, response.body)
        response = await self.api.post("/api/logout", {}, key=None)
        self.assertEqual(response.code, 200, response.body)

    async def test_without_a_configured_key_the_protected_routes_are_403(self) -> None:
        await self.start(api="")
        for method, path, body in self.ROUTES:
            for key in (KEY, None):
                error = self.assert_error(await self.call(self.api, method, path, body, key), 403, "FORBIDDEN")
                self.assertIn("MYSERVICES_API_KEY", error["message"])
                self.assertIn("[api] keys", error["message"])
        self.assertEqual((await self.api.get("/api/counter", key=None)).code, 200)

    async def test_two_keys_and_the_environment_key_are_each_accepted(self) -> None:
        env_key = "a-key-from-the-environment-42"
        await self.start(api=f'keys = ["{KEY}", "{OTHER_KEY}"]', environ={"MYSERVICES_API_KEY": env_key})
        for key in (KEY, OTHER_KEY, env_key):
            self.assertEqual((await self.api.get("/api/rooms", key=key)).code, 200)
        self.assert_error(await self.api.get("/api/rooms", key="not-one-of-the-three-keys"), 401, "UNAUTHENTICATED")

    async def test_the_key_file_variable(self) -> None:
        path = Path(self.mktemp())
        path.write_text("a-key-in-a-file-0123456789\n")
        await self.start(api="", environ={"MYSERVICES_API_KEY_FILE": str(path)})
        self.assertEqual((await self.api.get("/api/rooms", key="a-key-in-a-file-0123456789")).code, 200)

    async def test_each_key_has_its_own_rate_limit(self) -> None:
        await self.start(api=f'keys = ["{KEY}", "{OTHER_KEY}"]\nrate = 0.01\nburst = 3\nmax_broadcast_rooms = 3')
        self.assertEqual((await self.api.post("/api/broadcast", {"rooms": ["a", "b"], "text": "x"})).code, 200)
        self.assertEqual((await self.api.get("/api/rooms")).code, 200)
        response = await self.api.get("/api/rooms")
        self.assert_error(response, 429, "RATE_LIMITED")
        self.assertGreaterEqual(int(response.header("retry-after") or 0), 90)
        self.assertEqual((await self.api.get("/api/rooms", key=OTHER_KEY)).code, 200)
        # a broadcast costs one token per room: three rooms do not fit in the two left
        response = await self.api.post("/api/broadcast", {"rooms": ["a", "b", "c"], "text": "x"}, key=OTHER_KEY)
        self.assert_error(response, 429, "RATE_LIMITED")


class ApiKeysTests(TestCase):
    """The key check and the buckets, on a Clock."""

    def request(self, authorization: bytes | None) -> DummyRequest:
        request = DummyRequest([b""])
        if authorization is not None:
            request.requestHeaders.setRawHeaders(b"authorization", [authorization])
        return request

    def test_bearer_scheme_and_keys(self) -> None:
        keys = ApiKeys((KEY, OTHER_KEY), 1, 2, Clock())
        self.assertEqual(keys.authenticate(self.request(b"Bearer " + KEY.encode())), 0)
        self.assertEqual(keys.authenticate(self.request(b"bearer  " + OTHER_KEY.encode() + b" ")), 1)
        for header in (None, b"Basic " + KEY.encode(), b"Bearer", b"Bearer ", KEY.encode(), b"Bearer x" + KEY.encode()):
            with self.assertRaises(Exception) as caught:
                keys.authenticate(self.request(header))
            self.assertEqual(caught.exception.error.code, "UNAUTHENTICATED")  # type: ignore[attr-defined]
        self.assertNotIn(KEY, repr(keys))

    def test_the_bucket_refills_on_the_clock(self) -> None:
        clock = Clock()
        keys = ApiKeys((KEY,), 0.5, 2, clock)
        keys.charge(0, 2)
        with self.assertRaises(Exception) as caught:
            keys.charge(0)
        self.assertEqual(caught.exception.retry_after, 2)  # type: ignore[attr-defined]
        clock.advance(2)
        keys.charge(0)
        with self.assertRaises(Exception):
            keys.charge(0)
        clock.advance(4)
        keys.charge(0, 2)


class ConfigTests(TestCase):
    def config(self, api: str, environ: dict[str, str] | None = None) -> Any:
        return load(self, api_config("sqlite:///x.sqlite3", api), environ)

    def test_keys_are_secret_and_checked(self) -> None:
        config = self.config(f'keys = ["{KEY}"]', {"MYSERVICES_API_KEY": OTHER_KEY})
        self.assertEqual(config.api.keys, (KEY, OTHER_KEY))
        self.assertNotIn(KEY, repr(config))
        self.assertNotIn(OTHER_KEY, repr(config.api))
        with self.assertRaises(ConfigError) as caught:
            self.config('keys = ["short-key"]', {"MYSERVICES_API_KEY": "tiny"})
        message = str(caught.exception)
        self.assertIn("environment variable MYSERVICES_API_KEY: expected an API key of at least 16", message)
        self.assertNotIn("tiny", message)
        with self.assertRaises(ConfigError) as caught:
            self.config('keys = ["short-key", "a-long-enough-key-0123"]')
        message = str(caught.exception)
        self.assertIn("api.keys: key 1 of 2: expected at least 16 characters", message)
        self.assertNotIn("short-key", message)

    def test_defaults_and_limits(self) -> None:
        api = self.config("").api
        self.assertEqual((api.keys, api.nick, api.max_body_size, api.max_broadcast_rooms), ((), "api", 65536, 100))
        for bad in ('nick = "9"', "burst = 10\nmax_broadcast_rooms = 11", "max_body_size = 0", "rate = 0", "bogus = 1"):
            with self.assertRaises(ConfigError):
                self.config(bad)
        self.assertEqual(json.loads(json.dumps(list(self.config('nick = "bot"').api.keys))), [])


@pytest.mark.redis
class TwoDaemonsTests(TestCase):
    """Two trees on one Redis: what the API of one does reaches the other's connections."""

    timeout = 60

    async def test_publish_rooms_and_disconnect_reach_every_process(self) -> None:
        redis = redisserver.start_redis(self)
        data = Path(self.mktemp()).resolve()
        hub = f'engine = "redis"\nredis_url = "{redis.url}"'
        config = load(self, api_config(f"sqlite:///{data}/shared.sqlite3", hub=hub))
        one = await start_tree(self, config)
        two = await start_tree(self, config)
        for tree in (one, two):
            await tree.hub.engine.when_connected(timeout=10)
        far = await chat_client(self, port_of(two, "chat"), "faraway")
        await far.command("/join lobby")
        api = ApiClient(self, port_of(one, "http"))

        message = (await api.post("/api/publish", {"room": "lobby", "text": "across processes"})).json()
        self.assertEqual((await far.read_until("MSG "))[-1], f"MSG lobby {message['id']} api across processes")
        rooms = (await api.get("/api/rooms")).json()["rooms"]
        self.assertEqual(rooms, [{"name": "lobby", "members": 1, "subscribers": 0, "last_id": message["id"]}])
        presence = (await api.get("/api/rooms/lobby/presence")).json()
        self.assertEqual(presence["members"], ["faraway"])
        history = (await api.get("/api/rooms/lobby/history?since=0")).json()
        self.assertEqual([m["id"] for m in history["messages"]], [message["id"]])

        response = await api.post("/api/disconnect", {"nick": "FarAway", "reason": "bye"})
        self.assertEqual(response.json(), {"nick": "FarAway", "disconnected": True})
        self.assertEqual((await far.read_until("ERR "))[-1], "ERR DISCONNECTED bye")
        await far.closed
