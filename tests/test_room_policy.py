"""The room policy on the real service tree: the same FORBIDDEN on the line chat, WebSocket, framed JSON and PB.

A private room refuses a non-member on every front end and leaks nothing of
itself (history, members, its name in the room list); a rule by pattern
holds everywhere; admins kick and ban through the framed service and the
line chat, and the kicked connections are told why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.trial.unittest import TestCase

from myservices.framed.client import FramedError
from tests import mysql
from tests.pbclient import Listener, failure_of, pb_connect
from tests.support import chat_client, framed_client, load, port_of, start_tree
from tests.test_bad_input import four_front_ends
from tests.test_pb import code_of
from tests.wsclient import ws_connect

ROOMS = """
[rooms]
admins = ["root"]
[[rooms.rules]]
pattern = "staff-*"
join = "accounts"
subscribe = "accounts"
read = "accounts"
"""

SECRET = "the plan is in the vault"


async def presence(client: Any, kind: str) -> dict[str, Any]:
    """The next presence push of C{kind} a framed client received."""
    while True:
        data: dict[str, Any] = await client.pushes.next("presence")
        if data["kind"] == kind:
            return data


class RoomPolicyTestsMixin:
    timeout = 60

    def database_url(self) -> str | None:
        return None  # SQLite

    async def asyncSetUp(self) -> Any:
        path = self.mktemp() + ".sqlite3"
        config = four_front_ends(path) + ROOMS
        url = self.database_url()
        if url is not None:
            config = config.replace(f'url = "sqlite:///{path}"', f'url = "{url}"')
        self.tree = await start_tree(self, load(self, config))
        accounts = self.tree.listeners["pb"].factory.services.accounts
        for name in ("alice", "bob", "root"):
            await accounts.register(name, "correct horse")
        return self.tree

    async def framed_user(self, username: str | None) -> Any:
        client = await framed_client(self, port_of(self.tree, "framed"))
        if username is not None:
            await client.call("login", username=username, password="correct horse")
        return client

    async def framed_error(self, client: Any, command: str, **args: Any) -> FramedError:
        with self.assertRaises(FramedError) as caught:
            await client.call(command, **args)
        return caught.exception

    async def test_a_private_room_refuses_a_non_member_on_every_front_end_and_leaks_nothing(self) -> None:
        tree = await self.asyncSetUp()
        alice = await self.framed_user("alice")
        self.assertEqual(await alice.call("hub.create", room="secret"), {"room": "secret", "private": True})
        await alice.call("hub.join", room="secret")
        await alice.call("hub.publish", room="secret", text=SECRET)
        line = await chat_client(self, port_of(tree, "chat"), "liner")
        await line.command("/join lobby")  # a public room, listed to everyone

        # the line chat (anonymous)
        for command in ("/join secret", "/sub secret", "/history secret", "/who secret", "/pub secret hello?"):
            lines = await line.command(command)
            self.assertEqual(lines[-1].split(" ")[:2], ["ERR", "FORBIDDEN"], (command, lines))
            self.assertEqual(len(lines), 1, lines)
        self.assertEqual(await line.command("/rooms"), ["ROOM lobby 1 0", "END rooms"])

        # WebSocket (anonymous)
        web = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        for op in ("join", "subscribe", "history", "who"):
            reply = await web.request(op, room="secret")
            self.assertEqual((reply["type"], reply["error"]["code"]), ("error", "FORBIDDEN"), (op, reply))
        reply = await web.request("publish", room="secret", text="hello?")
        self.assertEqual(reply["error"]["code"], "FORBIDDEN")
        self.assertEqual([r["name"] for r in (await web.call("rooms"))["rooms"]], ["lobby"])

        # framed JSON, logged in as an account that was not invited
        bob = await self.framed_user("bob")
        for command in ("hub.join", "hub.subscribe", "hub.history", "hub.who"):
            self.assertEqual((await self.framed_error(bob, command, room="secret")).code, "FORBIDDEN", command)
        self.assertEqual((await self.framed_error(bob, "hub.publish", room="secret", text="x")).code, "FORBIDDEN")
        self.assertEqual([r["name"] for r in (await bob.call("hub.rooms"))["rooms"]], ["lobby"])
        self.assertEqual((await self.framed_error(bob, "hub.invite", room="secret", username="bob")).code,
                         "FORBIDDEN")

        # PB, logged in as bob
        client = await pb_connect(self, port_of(tree, "pb"))
        avatar = await client.login("bob", "correct horse")
        listener = Listener()
        for call in (avatar.callRemote("join", "secret", listener), avatar.callRemote("history", "secret"),
                     avatar.callRemote("who", "secret"), avatar.callRemote("publish", "secret", "x")):
            failure = await failure_of(call)
            self.assertEqual(code_of(failure), "FORBIDDEN")
            self.assertNotIn(SECRET, failure.getErrorMessage())
        self.assertEqual([r["name"] for r in (await avatar.callRemote("rooms"))["rooms"]], ["lobby"])

        # nothing of the room reached anyone outside it
        self.assertEqual(listener.events, [])
        self.assertFalse([ln for ln in line.unread if "secret" in ln])
        # the owner sees it all; an invitation lets bob in, on PB, with the history
        self.assertEqual([r["name"] for r in (await alice.call("hub.rooms"))["rooms"]], ["lobby", "secret"])
        await alice.call("hub.invite", room="secret", username="bob")
        joined = await avatar.callRemote("join", "secret", listener)
        self.assertEqual([m["text"] for m in joined["history"]], [SECRET])
        self.assertEqual(len(joined["members"]), 2)  # alice, and bob under a guest nick (framed bob holds "bob")

    async def test_a_rule_by_pattern_holds_on_every_front_end(self) -> None:
        tree = await self.asyncSetUp()
        line = await chat_client(self, port_of(tree, "chat"), "liner")
        self.assertEqual((await line.command("/join staff-room"))[-1].split(" ")[:2], ["ERR", "FORBIDDEN"])
        web = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        self.assertEqual((await web.request("join", room="staff-room"))["error"]["code"], "FORBIDDEN")
        anon = await self.framed_user(None)
        self.assertEqual((await self.framed_error(anon, "hub.join", room="staff-room")).code, "FORBIDDEN")
        bob = await self.framed_user("bob")
        await bob.call("hub.join", room="staff-room")  # accounts may
        client = await pb_connect(self, port_of(tree, "pb"))
        avatar = await client.login("alice", "correct horse")
        joined = await avatar.callRemote("join", "staff-room", Listener())
        self.assertEqual(sorted(joined["members"]), ["alice", "bob"])

    async def test_admins_kick_and_ban_on_the_framed_service_and_the_line_chat(self) -> None:
        tree = await self.asyncSetUp()
        line = await chat_client(self, port_of(tree, "chat"), "liner")
        await line.command("/join lobby")
        bob = await self.framed_user("bob")
        await bob.call("hub.join", room="lobby")
        root = await self.framed_user("root")

        # framed: an admin kicks the line chat user, who is told why, then everyone sees the PART
        self.assertEqual((await self.framed_error(bob, "hub.kick", room="lobby", nick="liner")).code, "FORBIDDEN")
        await root.call("hub.kick", room="lobby", nick="liner", reason="flooding")
        lines = await line.read_until("PART lobby liner")
        self.assertIn("KICK lobby liner kicked by root: flooding", lines)
        self.assertEqual((await presence(bob, "part"))["nick"], "liner")
        self.assertEqual((await line.command("/join lobby"))[-1], "OK join lobby")  # a kick is not a ban

        # the line chat: an admin (its session's account set as a login would) bans bob for a minute
        session = next(s for s in tree.hub.sessions.values() if s.nick == "liner")
        session.account = "root"
        lines = await line.command("/ban lobby bob 60")
        self.assertEqual(lines[-1].split(" ")[:4], ["OK", "ban", "lobby", "bob"])
        kick = await presence(bob, "kick")
        self.assertEqual((kick["room"], kick["reason"]), ("lobby", "banned by liner for 60 seconds"))
        error = await self.framed_error(bob, "hub.join", room="lobby")
        self.assertEqual(error.code, "FORBIDDEN")
        self.assertIn("banned", error.message)
        self.assertEqual(await tree.hub.who("lobby"), ["liner"])
        # bans are in the database: the policy's cache forgotten, the ban still holds
        tree.hub.policy._cache.clear()  # type: ignore[attr-defined]
        self.assertEqual((await self.framed_error(bob, "hub.join", room="lobby")).code, "FORBIDDEN")
        self.assertEqual((await line.command("/unban lobby bob"))[-1], "OK unban lobby bob")
        await bob.call("hub.join", room="lobby")

        # closing: everyone out, and only admins may come back until it is reopened
        await root.call("hub.close", room="lobby")
        await line.read_until("KICK lobby liner")
        self.assertEqual(await tree.hub.who("lobby"), [])
        self.assertEqual((await self.framed_error(bob, "hub.join", room="lobby")).code, "FORBIDDEN")
        await root.call("hub.reopen", room="lobby")
        await bob.call("hub.join", room="lobby")

    async def test_an_admin_disconnects_a_nick_on_every_front_end(self) -> None:
        tree = await self.asyncSetUp()
        line = await chat_client(self, port_of(tree, "chat"), "spammer")
        await line.command("/join lobby")
        web = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        await web.call("nick", nick="Spammer2")
        bob = await self.framed_user("bob")
        await bob.call("hub.join", room="lobby")
        self.assertEqual((await self.framed_error(bob, "hub.disconnect", nick="spammer")).code, "FORBIDDEN")
        root = await self.framed_user("root")
        # an admin's token limited to some rooms (a widget's) may kick there, not disconnect anyone anywhere
        widget = await self.framed_user(None)
        await widget.call("login", token=(await root.call("token", rooms=["staff-only"]))["token"])
        self.assertEqual((await self.framed_error(widget, "hub.disconnect", nick="spammer")).code, "FORBIDDEN")
        self.assertEqual(await root.call("hub.disconnect", nick="SPAMMER", reason="flooding"),
                         {"nick": "SPAMMER", "disconnected": True})
        lines = await line.read_until("ERR")
        self.assertEqual(lines[-1], "ERR DISCONNECTED disconnected by root: flooding")
        await line.closed
        self.assertEqual((await presence(bob, "part"))["nick"], "spammer")
        self.assertEqual(await tree.hub.who("lobby"), ["bob"])
        self.assertEqual(await root.call("hub.disconnect", nick="spammer"), {"nick": "spammer", "disconnected": False})
        # the line chat's admin command, on a WebSocket user
        admin_line = await chat_client(self, port_of(tree, "chat"), "boss")
        self.assertEqual((await admin_line.command("/disconnect spammer2"))[-1].split(" ")[0], "ERR")  # not an admin
        next(s for s in tree.hub.sessions.values() if s.nick == "boss").account = "root"  # as a login would
        self.assertEqual((await admin_line.command("/disconnect spammer2 bye"))[-1], "OK disconnect spammer2")
        code, reason = await web.closed
        self.assertEqual((code, reason), (1008, "DISCONNECTED: disconnected by boss: bye"))

    async def test_a_kicked_pb_member_is_told_and_its_room_object_ends(self) -> None:
        tree = await self.asyncSetUp()
        client = await pb_connect(self, port_of(tree, "pb"))
        avatar = await client.login("bob", "correct horse")
        listener = Listener()
        room = (await avatar.callRemote("join", "lobby", listener))["object"]
        admin = await (await pb_connect(self, port_of(tree, "pb"))).login("root", "correct horse")
        failure = await failure_of(avatar.callRemote("room_kick", "lobby", "root"))
        self.assertEqual(code_of(failure), "FORBIDDEN")  # bob is no admin
        self.assertEqual(await admin.callRemote("room_kick", "lobby", "bob", reason="off topic"),
                         {"room": "lobby", "nick": "bob"})
        event = await listener.next("presence", kind="kick")
        self.assertEqual(event["reason"], "kicked by root: off topic")
        failure = await failure_of(room.callRemote("who"))
        self.assertEqual(code_of(failure), "NOT_IN_ROOM")
        self.assertEqual(await tree.hub.who("lobby"), [])


    async def test_rules_change_on_reload(self) -> None:
        tree = await self.asyncSetUp()
        line = await chat_client(self, port_of(tree, "chat"), "liner")
        self.assertEqual((await line.command("/join lobby2"))[-1], "OK join lobby2")
        await line.command("/part lobby2")
        path = Path(tree.config.source)
        path.write_text(path.read_text() + '[[rooms.rules]]\npattern = "lob*"\njoin = "accounts"\n')
        self.assertTrue(tree.getServiceNamed("reload").reload(environ={}))
        self.assertEqual((await line.command("/join lobby2"))[-1].split(" ")[:2], ["ERR", "FORBIDDEN"])
        self.assertEqual((await line.command("/join staff-x"))[-1].split(" ")[:2], ["ERR", "FORBIDDEN"])


class SQLiteRoomPolicyTests(RoomPolicyTestsMixin, TestCase):
    pass


@pytest.mark.mysql
class MySQLRoomPolicyTests(RoomPolicyTestsMixin, TestCase):
    def database_url(self) -> str | None:
        return mysql.create_database(self)
