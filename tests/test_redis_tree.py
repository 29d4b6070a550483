"""Two daemons (two service trees) with [hub] engine = "redis" share their rooms through one private Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.trial.unittest import TestCase

from myservices.config import ENV_REDIS_PASSWORD
from myservices.hub.redis import RedisEngine
from tests import redisserver
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from tests.wsclient import ws_connect
from tests.support import HttpClient, LineClient, chat_client, disconnect_at_cleanup, load, port_of, start_tree


def _messages_txn(txn: Any) -> list[tuple[int, str]]:
    txn.execute("SELECT id, text FROM chat_messages WHERE room = 'lobby' ORDER BY id")
    return [(int(i), t) for i, t in txn.fetchall()]


def redis_config(redis_url: str, data_dir: Path) -> str:
    return f"""
[daemon]
shutdown_timeout = 2
data_dir = "{data_dir}"
[database]
url = "sqlite:///shared.sqlite3"
[hub]
engine = "redis"
redis_url = "{redis_url}"
publish_rate = 100000.0
publish_burst = 100000
[services.chat]
endpoint = "tcp:0:interface=127.0.0.1"
[services.http]
endpoint = "tcp:0:interface=127.0.0.1"
[services.websocket]
endpoint = "tcp:0:interface=127.0.0.1"
"""


@pytest.mark.redis
class TwoDaemonsTests(TestCase):
    async def test_two_daemons_share_rooms_nicks_ids_and_one_database(self) -> None:
        redis = redisserver.start_redis(self)
        data = Path(self.mktemp()).resolve()
        # one SQLite file for both trees, as two daemons on one host would share it (MySQL: one server)
        config = load(self, redis_config(redis.url, data))
        one = await start_tree(self, config)
        two = await start_tree(self, config)
        for tree in (one, two):
            assert tree.hub is not None and isinstance(tree.hub.engine, RedisEngine)
            await tree.hub.engine.when_connected(timeout=10)  # a busy machine may take a while to connect
        alice = await chat_client(self, port_of(one, "chat"), "alice")
        bob = await chat_client(self, port_of(two, "chat"), "bob")
        self.assertEqual((await bob.command("/nick ALICE"))[-1].split()[:2], ["ERR", "NICK_TAKEN"])
        self.assertEqual((await alice.command("/join lobby"))[-1], "OK join lobby")
        self.assertEqual((await bob.command("/join lobby"))[-1], "OK join lobby")
        self.assertIn("OK msg lobby 1", await alice.command("/msg lobby hello from one"))
        self.assertEqual(await bob.read_until("MSG"), ["MSG lobby 1 alice hello from one"])
        self.assertIn("OK msg lobby 2", await bob.command("/msg lobby hello from two"))
        self.assertEqual((await alice.read_until("MSG lobby 2"))[-1], "MSG lobby 2 bob hello from two")
        self.assertEqual(await alice.command("/who lobby"), ["WHO lobby alice", "WHO lobby bob", "END who lobby"])
        for tree in (one, two):
            response = await HttpClient(self, port_of(tree, "http")).get("/readyz")
            self.assertEqual(response.code, 200, response.body)
        self.assertEqual(await one.database.run(_messages_txn), [(1, "hello from one"), (2, "hello from two")])

    async def test_a_chat_connection_opened_while_redis_is_away_is_told_so_not_internal(self) -> None:
        redis = redisserver.start_redis(self)
        tree = await start_tree(self, load(self, redis_config(redis.url, Path(self.mktemp()).resolve())))
        assert tree.hub is not None and isinstance(tree.hub.engine, RedisEngine)
        await tree.hub.engine.when_connected(timeout=10)
        redis.kill()
        client = LineClient()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port_of(tree, "chat")), client)
        disconnect_at_cleanup(self, client)
        # the shared error code (retry: true), and no traceback: trial fails a test that logs one
        self.assertEqual((await client.read_until("ERR"))[-1].split()[:2], ["ERR", "ENGINE_UNAVAILABLE"])

    async def test_a_websocket_chat_opened_while_redis_is_away_is_closed_try_again_later_not_internal(self) -> None:
        redis = redisserver.start_redis(self)
        tree = await start_tree(self, load(self, redis_config(redis.url, Path(self.mktemp()).resolve())))
        assert tree.hub is not None and isinstance(tree.hub.engine, RedisEngine)
        await tree.hub.engine.when_connected(timeout=10)
        redis.kill()
        client = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        code, reason = await client.closed
        # 1013 "try again later" with the shared code; no traceback (trial fails a test that logs one)
        self.assertEqual(code, 1013)
        self.assertTrue(str(reason).startswith("ENGINE_UNAVAILABLE: "), reason)

    def test_the_redis_password_comes_from_the_environment_and_is_never_shown(self) -> None:
        config = load(self, '[hub]\nengine = "redis"\nredis_url = "redis://:inurl@127.0.0.1:6390/2"\n',
                      environ={ENV_REDIS_PASSWORD: "s3cret"})
        self.assertEqual(config.hub.redis_password, "s3cret")
        self.assertNotIn("s3cret", repr(config.hub))
        self.assertNotIn("inurl", repr(config.hub))

    def test_a_bad_redis_url_is_a_config_error(self) -> None:
        from myservices.config import ConfigError

        with self.assertRaises(ConfigError) as caught:
            load(self, '[hub]\nengine = "redis"\nredis_url = "http://127.0.0.1/x"\n')
        self.assertIn("hub.redis_url", str(caught.exception))
