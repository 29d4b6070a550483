"""Direct messages between front ends of one daemon: line chat, WebSocket /chat, framed JSON and PB."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from myservices.framed.client import FramedError
from myservices.pb.errors import error_code
from myservices.tree import ServiceTree
from tests.pbclient import Listener, failure_of, pb_connect
from tests.support import FAST_ACCOUNTS, chat_client, framed_client, load, port_of, start_tree
from tests.wsclient import ws_connect


def config(url: str, hub: str) -> str:
    services = "".join(
        f'[services.{name}]\nendpoint = "tcp:0:interface=127.0.0.1"\n' for name in ("chat", "websocket", "framed", "pb")
    )
    return f"""
[daemon]
shutdown_timeout = 2
[database]
url = "{url}"
[hub]
{hub}
{FAST_ACCOUNTS}
{services}
"""


class DirectFrontEndTests(TestCase):
    timeout = 20

    async def start(self, hub: str = "publish_rate = 1000.0\npublish_burst = 1000") -> ServiceTree:
        url = f"sqlite:///{self.mktemp()}.db"
        return await start_tree(self, load(self, config(url, hub)))

    async def test_line_chat_to_websocket_and_back(self) -> None:
        tree = await self.start()
        line = await chat_client(self, port_of(tree, "chat"), "liner")
        web = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        await web.call("nick", nick="webby")

        self.assertEqual(await line.command("/dm WEBBY hello there"), ["OK dm WEBBY"])
        event = await web.event("dm")
        self.assertEqual({k: v for k, v in event.items() if k != "ts"},
                         {"type": "dm", "from": "liner", "to": "WEBBY", "text": "hello there", "account": False})
        self.assertIsInstance(event["ts"], float)

        result = await web.call("dm", nick="liner", text="hi ✓")
        self.assertEqual(result["nick"], "liner")
        self.assertEqual(await line.read_until("DM"), ["DM webby liner hi ✓"])

        reply = await web.request("dm", nick="nobody", text="anyone?")
        self.assertEqual((reply["type"], reply["error"]["code"]), ("error", "NICK_OFFLINE"))
        self.assertEqual(await line.command("/dm nobody hi"), ['ERR NICK_OFFLINE no user "nobody" is connected'])
        self.assertEqual(await line.command("/dm webby"), ["ERR BAD_ARGUMENTS usage: /dm NICK TEXT"])
        self.assertEqual((await line.command("/dm bad! hi"))[-1].split(" ")[:2], ["ERR", "NICK_INVALID"])
        # nothing of it is a room or history
        self.assertEqual(await line.command("/rooms"), ["END rooms"])

    async def test_framed_to_line_chat_and_back(self) -> None:
        tree = await self.start()
        line = await chat_client(self, port_of(tree, "chat"), "liner")
        framed = await framed_client(self, port_of(tree, "framed"))
        await framed.call("hub.nick", nick="fred")
        reply = await framed.call("hub.dm", nick="liner", text="from framed")
        self.assertEqual(reply["nick"], "liner")
        self.assertEqual(await line.read_until("DM"), ["DM fred liner from framed"])

        line.send("/dm fred from the terminal")
        self.assertEqual(await line.read_until("OK"), ["OK dm fred"])
        pushed = await framed.pushes.next("dm")
        self.assertEqual((pushed["from"], pushed["to"], pushed["text"], pushed["account"]),
                         ("liner", "fred", "from the terminal", False))

        try:
            await framed.call("hub.dm", nick="nobody", text="x")
        except FramedError as e:
            self.assertEqual(e.code, "NICK_OFFLINE")
        else:
            self.fail("no NICK_OFFLINE")

    async def test_pb_to_line_chat_and_back_through_its_listener(self) -> None:
        tree = await self.start()
        accounts = tree.listeners["pb"].factory.services.accounts
        await accounts.register("pat", "correct horse")
        client = await pb_connect(self, port_of(tree, "pb"))
        avatar = await client.login("pat", "correct horse")
        line = await chat_client(self, port_of(tree, "chat"), "liner")

        # before listen: the DM reaches pat's connection, which has nowhere to put it
        self.assertEqual(await line.command("/dm pat lost"), ["OK dm pat"])
        listener = Listener()
        self.assertEqual(await avatar.callRemote("listen", listener), {})
        self.assertEqual(await line.command("/dm pat hello pat"), ["OK dm pat"])
        got = await listener.next("dm")
        self.assertEqual((got["from"], got["to"], got["text"]), ("liner", "pat", "hello pat"))
        self.assertEqual([kind for kind, _ in listener.events], [])  # not the one sent before listen

        result = await avatar.callRemote("dm", "liner", "from pb")
        self.assertEqual(result["nick"], "liner")
        self.assertEqual(await line.read_until("DM"), ["DM pat liner from pb"])
        failure = await failure_of(avatar.callRemote("dm", "nobody", "x"))
        self.assertEqual(error_code(failure), "NICK_OFFLINE")

    async def test_a_connection_over_its_rate_is_refused_like_a_publisher(self) -> None:
        tree = await self.start("publish_rate = 1.0\npublish_burst = 2")
        line = await chat_client(self, port_of(tree, "chat"), "liner")
        web = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        await web.call("nick", nick="webby")
        for i in range(2):
            self.assertEqual(await line.command(f"/dm webby m{i}"), ["OK dm webby"])
        self.assertEqual(await line.command("/dm webby too fast"), ["ERR RATE_LIMITED at most 1 messages per second"])
        self.assertEqual((await line.command("/join lobby"))[-1], "OK join lobby")
        self.assertEqual(await line.command("/msg lobby too fast"), ["ERR RATE_LIMITED at most 1 messages per second"])
        texts: list[Any] = [(await web.event("dm"))["text"] for _ in range(2)]
        self.assertEqual(texts, ["m0", "m1"])

    async def test_a_pb_listener_that_raises_is_dropped_until_listen_is_called_again(self) -> None:
        tree = await self.start()
        await tree.listeners["pb"].factory.services.accounts.register("pat", "correct horse")
        client = await pb_connect(self, port_of(tree, "pb"))
        avatar = await client.login("pat", "correct horse")
        line = await chat_client(self, port_of(tree, "chat"), "liner")
        called: Deferred[None] = Deferred()

        class Broken(Listener):
            calls = 0

            def remote_dm(self, data: dict[str, Any]) -> None:
                Broken.calls += 1
                if not called.called:
                    called.callback(None)
                raise ValueError("this client has a bug")

        await avatar.callRemote("listen", Broken())
        await line.command("/dm pat one")
        await called
        await avatar.callRemote("ping")  # after the failed call's answer: the server has dropped the listener
        self.assertEqual(await line.command("/dm pat two"), ["OK dm pat"])
        await avatar.callRemote("ping")  # a call to the listener would have come before this answer
        self.assertEqual(Broken.calls, 1)
        listener = Listener()
        await avatar.callRemote("listen", listener)
        await line.command("/dm pat three")
        self.assertEqual((await listener.next("dm"))["text"], "three")
        registry = tree.metrics.registry
        self.assertEqual(registry.get_sample_value(
            "myservices_requests_total", {"service": "pb", "command": "listener", "result": "FAILED"}), 1)
        self.flushLoggedErrors()
