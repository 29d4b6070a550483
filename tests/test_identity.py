"""One identity on every chat front end: logins, reserved nicks, the account flag, anonymous modes, churn limits.

Each test starts the real service tree (SQLite) and talks to it with real
clients: line chat, WebSocket, framed JSON and PB.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jwt

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from myservices.framed.client import FramedError
from myservices.tree import ServiceTree
from tests.pbclient import failure_of, pb_connect
from tests.support import FAST_ACCOUNTS, chat_client, framed_client, load, port_of, start_tree
from tests.test_pb import code_of
from tests.wsclient import ws_connect

PASSWORD = "correct horse"
SECRET = "a test secret of at least thirty-two characters"


def minted(sub: str, exp: float, **claims: Any) -> str:
    """A token as an application backend mints it with the shared secret (docs/security.md)."""
    return str(jwt.encode({"sub": sub, "exp": exp, **claims}, SECRET, algorithm="HS256"))


def identity_config(url: str, services: str = "", hub: str = "", chat: str = "", framed: str = "") -> str:
    return f"""
[daemon]
shutdown_timeout = 2
[database]
url = "{url}"
[hub]
publish_rate = 100000.0
publish_burst = 100000
{hub}
{FAST_ACCOUNTS}
[services.chat]
endpoint = "tcp:0:interface=127.0.0.1"
{chat}
[services.websocket]
endpoint = "tcp:0:interface=127.0.0.1"
[services.framed]
endpoint = "tcp:0:interface=127.0.0.1"
{framed}
[services.pb]
endpoint = "tcp:0:interface=127.0.0.1"
[tokens]
secret = "{SECRET}"
{services}
"""


async def framed_error(call: Any) -> FramedError:
    try:
        await call
    except FramedError as e:
        return e
    raise AssertionError("expected an error")


class IdentityTests(TestCase):
    timeout = 30

    async def start(self, services: str = "", hub: str = "", **sections: str) -> ServiceTree:
        url = f"sqlite:///{os.path.abspath(self.mktemp())}.sqlite3"
        tree = await start_tree(self, load(self, identity_config(url, services, hub, **sections)))
        self.tree = tree
        self.accounts = tree.listeners["pb"].factory.services.accounts
        return tree

    async def test_nobody_takes_the_nick_of_an_account_on_any_front_end(self) -> None:
        # the impersonation of the issue: an anonymous user takes a registered user's name
        tree = await self.start()
        await self.accounts.register("pbuser", PASSWORD)
        line = await chat_client(self, port_of(tree, "chat"))
        lines = await line.command("/nick pbuser")
        self.assertEqual(lines[-1].split(" ")[:2], ["ERR", "NICK_TAKEN"])
        self.assertIn("belongs to an account", lines[-1])
        self.assertEqual((await line.command("/nick PBUser"))[-1].split(" ")[:2], ["ERR", "NICK_TAKEN"])
        ws = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        await ws.event("welcome")
        self.assertEqual((await ws.request("nick", nick="pbuser"))["error"]["code"], "NICK_TAKEN")
        framed = await framed_client(self, port_of(tree, "framed"))
        self.assertEqual((await framed_error(framed.call("hub.nick", nick="pbuser"))).code, "NICK_TAKEN")
        # the account itself gets its nick on every front end, at once on each
        pb = await pb_connect(self, port_of(tree, "pb"))
        avatar = await pb.login("pbuser", PASSWORD)
        self.assertEqual((await avatar.callRemote("whoami"))["nick"], "pbuser")
        self.assertEqual(await line.command("/login pbuser correct horse"), ["NICK guest1 pbuser", "OK login pbuser"])
        self.assertEqual((await ws.call("login", username="pbuser", password=PASSWORD))["nick"], "pbuser")
        self.assertEqual((await framed.call("login", username="pbuser", password=PASSWORD))["nick"], "pbuser")
        # a logged-in connection keeps its username as nick
        self.assertEqual((await line.command("/nick other"))[-1].split(" ")[:2], ["ERR", "FORBIDDEN"])
        self.assertEqual(code_of(await failure_of(avatar.callRemote("nick", "other"))), "FORBIDDEN")

    async def test_an_anonymous_holder_gives_the_name_up_when_the_account_logs_in(self) -> None:
        # a nick taken before the account existed: the registration is refused while someone else uses it,
        # and if it happened anyway (an older version registered it), the account wins at login
        tree = await self.start()
        squatter = await chat_client(self, port_of(tree, "chat"), "pbuser")
        framed = await framed_client(self, port_of(tree, "framed"))
        error = await framed_error(framed.call("register", username="pbuser", password=PASSWORD))
        self.assertEqual(error.code, "NICK_TAKEN")
        await self.accounts.register("pbuser", PASSWORD)  # behind the hub's back, as an older release could
        await squatter.command("/join lobby")
        self.assertEqual((await framed.call("login", username="pbuser", password=PASSWORD))["nick"], "pbuser")
        renamed = await squatter.read_until("NICK pbuser")
        self.assertRegex(renamed[-1], r"^NICK pbuser guest\d+$")

    async def test_the_registering_connection_may_hold_the_name_it_registers(self) -> None:
        tree = await self.start()
        line = await chat_client(self, port_of(tree, "chat"), "carol")
        self.assertEqual(await line.command("/register carol correct horse"), ["OK register carol"])
        self.assertEqual(await line.command("/login carol correct horse"), ["OK login carol"])
        self.assertEqual(await line.command("/whoami"), ["OK whoami carol carol"])

    async def test_messages_say_whether_they_come_from_an_account(self) -> None:
        tree = await self.start()
        await self.accounts.register("alice", PASSWORD)
        ws = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        await ws.event("welcome")
        await ws.call("join", room="lobby")
        line = await chat_client(self, port_of(tree, "chat"))
        await line.command("/login alice correct horse")
        await line.command("/join lobby")
        await line.command("/msg lobby from alice")
        anon = await chat_client(self, port_of(tree, "chat"), "bob")
        await anon.command("/join lobby")
        await anon.command("/msg lobby from bob")
        first = await ws.event("message")
        second = await ws.event("message")
        self.assertEqual((first["nick"], first["account"]), ("alice", True))
        self.assertEqual((second["nick"], second["account"]), ("bob", False))
        # and history keeps the flag
        history = await ws.call("history", room="lobby")
        self.assertEqual([(m["nick"], m["account"]) for m in history["messages"]], [("alice", True), ("bob", False)])

    async def test_joins_and_parts_say_whether_the_member_is_logged_in_to_an_account(self) -> None:
        tree = await self.start()
        await self.accounts.register("alice", PASSWORD)
        ws = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        await ws.event("welcome")
        await ws.call("join", room="lobby")
        line = await chat_client(self, port_of(tree, "chat"))
        await line.command("/login alice correct horse")
        await line.command("/join lobby")
        self.assertEqual(await ws.event("presence", nick="alice"),
                         {"type": "presence", "kind": "join", "room": "lobby", "nick": "alice", "account": True})
        anon = await chat_client(self, port_of(tree, "chat"), "bob")
        await anon.command("/join lobby")
        self.assertEqual((await ws.event("presence", nick="bob"))["account"], False)
        # bob logs in while in the room: his PART says he is an account's now
        await self.accounts.register("bob", PASSWORD)
        await anon.command("/login bob correct horse")
        await anon.command("/part lobby")
        part = await ws.event("presence", kind="part")
        self.assertEqual((part["nick"], part["account"]), ("bob", True))
        # the line chat's PART line stays as it was (a registered username is always that account there)
        self.assertEqual((await line.read_until("PART"))[-1], "PART lobby bob")

    async def test_an_account_on_two_front_ends_shares_its_nick_and_logout_gives_a_guest_nick(self) -> None:
        tree = await self.start()
        await self.accounts.register("dave", PASSWORD)
        line = await chat_client(self, port_of(tree, "chat"))
        await line.command("/login dave correct horse")
        ws = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        await ws.event("welcome")
        self.assertEqual((await ws.call("login", username="dave", password=PASSWORD))["nick"], "dave")
        result = await ws.call("logout")
        self.assertRegex(result["nick"], r"^guest\d+$")
        # the line connection still is dave, and the name is still reserved for the account
        self.assertEqual(await line.command("/whoami"), ["OK whoami dave dave"])
        self.assertEqual((await ws.request("nick", nick="dave"))["error"]["code"], "NICK_TAKEN")
        await line.command("/logout")
        self.assertEqual((await ws.request("nick", nick="dave"))["error"]["code"], "NICK_TAKEN")

    async def test_wrong_passwords_fail_alike_on_the_line_chat_and_are_never_logged(self) -> None:
        seen: list[str] = []

        def observe(event: Any) -> None:
            seen.append(repr(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        tree = await self.start()
        await self.accounts.register("erin", PASSWORD)
        line = await chat_client(self, port_of(tree, "chat"))
        for command in ("/login erin wrong-password", "/login nobody correct horse"):
            self.assertEqual(await line.command(command), ["ERR LOGIN_FAILED wrong username or password"])
        self.assertEqual((await line.command("/login onlyone"))[-1].split(" ")[:2], ["ERR", "TOKEN_INVALID"])
        self.assertEqual((await line.command("/login"))[-1].split(" ")[:2], ["ERR", "BAD_ARGUMENTS"])
        self.assertEqual(await line.command("/login erin correct horse"), ["NICK guest1 erin", "OK login erin"])
        self.assertTrue(any("login failed" in e for e in seen))  # the failures are logged, without the password
        self.assertEqual([e for e in seen if "wrong-password" in e or "correct horse" in e], [])

    async def test_read_only_anonymous_users_may_read_but_not_write(self) -> None:
        tree = await self.start(chat='anonymous = "read"', framed='anonymous = "none"')
        await self.accounts.register("fay", PASSWORD)
        line = await chat_client(self, port_of(tree, "chat"))
        self.assertEqual((await line.command("/join lobby"))[-1], "OK join lobby")
        for command in ("/msg lobby hi", "hi", "/nick someone", "/pub news hi"):
            self.assertEqual((await line.command(command))[-1].split(" ")[:2], ["ERR", "UNAUTHENTICATED"], command)
        await line.command("/login fay correct horse")
        self.assertEqual((await line.command("/msg lobby hi"))[-1], "OK msg lobby 1")
        framed = await framed_client(self, port_of(tree, "framed"))
        for command, args in (("hub.join", {"room": "lobby"}), ("hub.subscribe", {"room": "lobby"}),
                              ("hub.history", {"room": "lobby"}), ("hub.who", {"room": "lobby"}), ("hub.rooms", {})):
            self.assertEqual((await framed_error(framed.call(command, **args))).code, "UNAUTHENTICATED")
        await framed.call("login", username="fay", password=PASSWORD)
        self.assertEqual((await framed.call("hub.join", room="lobby"))["room"], "lobby")

    async def test_nick_changes_and_joins_are_rate_limited(self) -> None:
        tree = await self.start(hub="churn_rate = 0.5\nchurn_burst = 3")
        ws = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        await ws.event("welcome")
        for i in range(3):
            await ws.call("nick", nick=f"n{i}")
        error = (await ws.request("nick", nick="n9"))["error"]
        self.assertEqual((error["code"], error["retry"]), ("RATE_LIMITED", True))
        self.assertGreater(error["retry_after"], 0)
        self.assertLessEqual(error["retry_after"], 2)
        self.assertEqual((await ws.request("join", room="lobby"))["error"]["code"], "RATE_LIMITED")


class TokenLoginTests(TestCase):
    """A token from one front end logs in on every other; it expires, and a password change revokes it."""

    timeout = 30

    async def start(self) -> ServiceTree:
        url = f"sqlite:///{os.path.abspath(self.mktemp())}.sqlite3"
        tree = await start_tree(self, load(self, identity_config(url)))
        await tree.listeners["pb"].factory.services.accounts.register("alice", PASSWORD)
        return tree

    async def test_a_token_from_one_front_end_logs_in_on_every_other(self) -> None:
        tree = await self.start()
        framed = await framed_client(self, port_of(tree, "framed"))
        await framed.call("login", username="alice", password=PASSWORD)
        issued = await framed.call("token")
        self.assertGreater(issued["expires_at"], time.time())
        token = issued["token"]
        line = await chat_client(self, port_of(tree, "chat"))
        self.assertEqual((await line.command(f"/login {token}"))[-1], "OK login alice")
        ws = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        await ws.event("welcome")
        self.assertEqual((await ws.call("login", token=token))["username"], "alice")
        pb = await pb_connect(self, port_of(tree, "pb"))
        avatar = await pb.root.callRemote("loginToken", token)
        self.assertEqual((await avatar.callRemote("whoami"))["username"], "alice")
        # and PB hands out tokens too
        pb_token = (await avatar.callRemote("token", rooms=["lobby"]))["token"]
        other = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        await other.event("welcome")
        self.assertEqual((await other.call("login", token=pb_token))["rooms"], ["lobby"])
        # the web page's way: the cookie of POST /api/login, read at the WebSocket handshake
        page = await ws_connect(self, port_of(tree, "websocket"), "/chat", headers={"Cookie": f"myservices_token={token}"})
        welcome = await page.event("welcome")
        self.assertEqual((welcome["username"], welcome["nick"]), ("alice", "alice"))

    async def test_an_expired_or_forged_token_is_refused_everywhere(self) -> None:
        tree = await self.start()
        expired = minted("alice", time.time() - 60)
        forged = str(jwt.encode({"sub": "alice", "exp": time.time() + 60}, "another secret of thirty-two chars!!",
                                algorithm="HS256"))
        for token, code in ((expired, "TOKEN_EXPIRED"), (forged, "TOKEN_INVALID")):
            line = await chat_client(self, port_of(tree, "chat"))
            self.assertEqual((await line.command(f"/login {token}"))[-1].split(" ")[:2], ["ERR", code])
            ws = await ws_connect(self, port_of(tree, "websocket"), "/chat")
            await ws.event("welcome")
            self.assertEqual((await ws.request("login", token=token))["error"]["code"], code)
            framed = await framed_client(self, port_of(tree, "framed"))
            self.assertEqual((await framed_error(framed.call("login", token=token))).code, code)
            pb = await pb_connect(self, port_of(tree, "pb"))
            self.assertEqual(code_of(await failure_of(pb.root.callRemote("loginToken", token))), code)
            page = await ws_connect(self, port_of(tree, "websocket"), "/chat", headers={"Cookie": f"myservices_token={token}"})
            welcome = await page.event("welcome")
            self.assertEqual((welcome["username"], welcome["login_error"]["code"]), (None, code))
        # a backend's own token (no iat) works while it is valid
        line = await chat_client(self, port_of(tree, "chat"))
        self.assertEqual((await line.command(f"/login {minted('alice', time.time() + 60)}"))[-1], "OK login alice")

    async def test_a_password_change_revokes_the_tokens_issued_before(self) -> None:
        tree = await self.start()
        await tree.listeners["pb"].factory.services.accounts.register("bob", "first-password")
        line = await chat_client(self, port_of(tree, "chat"))
        await line.command("/login bob first-password")
        ws = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        await ws.event("welcome")
        await ws.call("login", username="bob", password="first-password")
        old = (await ws.call("token"))["token"]
        # the line chat: OLD is one word, NEW the rest of the line
        self.assertEqual(await line.command("/passwd first-password battery staple horse"), ["OK passwd"])
        framed = await framed_client(self, port_of(tree, "framed"))
        self.assertEqual((await framed_error(framed.call("login", token=old))).code, "TOKEN_INVALID")
        self.assertEqual((await framed_error(framed.call("login", username="bob", password="first-password"))).code,
                         "LOGIN_FAILED")
        await framed.call("login", username="bob", password="battery staple horse")
        new = (await framed.call("token"))["token"]
        self.assertEqual((await ws.call("login", token=new))["username"], "bob")
        # the JSON front ends take both passwords as they are
        await ws.call("passwd", old="battery staple horse", new="a fourth password")
        self.assertEqual((await framed_error(framed.call("login", token=new))).code, "TOKEN_INVALID")

    async def test_a_token_limited_to_rooms_may_use_only_those(self) -> None:
        tree = await self.start()
        ws = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        await ws.event("welcome")
        result = await ws.call("login", token=minted("alice", time.time() + 60, rooms=["#Support"]))
        self.assertEqual(result["rooms"], ["support"])  # named as the hub names rooms
        self.assertEqual((await ws.call("join", room="support"))["room"], "support")
        self.assertEqual((await ws.request("join", room="lobby"))["error"]["code"], "FORBIDDEN")
        self.assertEqual((await ws.request("publish", room="lobby", text="hi"))["error"]["code"], "FORBIDDEN")
        # a token of its own, for another connection, is limited the same way
        line = await chat_client(self, port_of(tree, "chat"))
        await line.command("/login alice correct horse")
        await line.command("/join lobby")
        # a login limited to some rooms mints tokens limited to (some of) them, never more
        framed = await framed_client(self, port_of(tree, "framed"))
        for asked in ({"rooms": ["support", "Lobby"]}, {}):
            issued = await ws.call("token", **asked)
            self.assertEqual((await framed.call("login", token=issued["token"]))["rooms"], ["support"])
        # moderation too stays in the token's rooms
        self.assertEqual((await ws.request("create", room="elsewhere"))["error"]["code"], "FORBIDDEN")



class IdentityChangeTests(TestCase):
    """What a session may do follows its identity: logging out or changing a password takes rights away."""

    timeout = 30

    async def start(self, rules: str = "") -> ServiceTree:
        url = f"sqlite:///{os.path.abspath(self.mktemp())}.sqlite3"
        tree = await start_tree(self, load(self, identity_config(url, services=rules, hub="churn_burst = 6")))
        accounts = tree.listeners["pb"].factory.services.accounts
        for name in ("alice", "bob"):
            await accounts.register(name, PASSWORD)
        return tree

    async def test_logging_out_leaves_the_private_rooms_of_the_account(self) -> None:
        tree = await self.start()
        alice = await framed_client(self, port_of(tree, "framed"))
        await alice.call("login", username="alice", password=PASSWORD)
        await alice.call("hub.create", room="secret")
        await alice.call("hub.join", room="secret")
        await alice.call("hub.invite", room="secret", username="bob")
        bob = await framed_client(self, port_of(tree, "framed"))
        await bob.call("login", username="bob", password=PASSWORD)
        await bob.call("hub.join", room="secret")
        await bob.call("logout")
        kicked = await bob.pushes.next("presence")
        while kicked["kind"] != "kick":
            kicked = await bob.pushes.next("presence")
        self.assertEqual(kicked["room"], "secret")
        self.assertEqual((await alice.call("hub.who", room="secret"))["members"], ["alice"])
        await alice.call("hub.publish", room="secret", text="not for guests")
        self.assertEqual((await framed_error(bob.call("hub.history", room="secret"))).code, "FORBIDDEN")

    async def test_a_password_change_logs_out_the_other_sessions_and_stops_their_tokens(self) -> None:
        tree = await self.start()
        owner = await chat_client(self, port_of(tree, "chat"))
        await owner.command("/login alice correct horse")
        thief = await framed_client(self, port_of(tree, "framed"))
        await thief.call("login", username="alice", password=PASSWORD)
        await thief.call("kv.set", key="k", value=1)
        pb_thief = await (await pb_connect(self, port_of(tree, "pb"))).login("alice", PASSWORD)
        await owner.command("/passwd correct a new password")  # "correct horse": OLD is one word, so it fails
        ws = await ws_connect(self, port_of(tree, "websocket"), "/chat")
        await ws.event("welcome")
        await ws.call("login", username="alice", password=PASSWORD)
        await ws.call("passwd", old=PASSWORD, new="a new password")
        self.assertEqual((await framed_error(thief.call("kv.get", key="k"))).code, "UNAUTHENTICATED")
        self.assertEqual(code_of(await failure_of(pb_thief.callRemote("kv_get", "k"))), "UNAUTHENTICATED")
        self.assertEqual((await framed_error(thief.call("token"))).code, "UNAUTHENTICATED")
        self.assertRegex((await thief.call("whoami"))["nick"], r"^guest\d+$")
        self.assertEqual((await ws.call("whoami"))["username"], "alice")  # the one that changed it stays

    async def test_a_room_that_may_not_be_read_shows_no_history_on_join_nor_in_the_list(self) -> None:
        tree = await self.start(rules='[[rooms.rules]]\npattern = "members-*"\njoin = "anyone"\nread = "accounts"')
        alice = await framed_client(self, port_of(tree, "framed"))
        await alice.call("login", username="alice", password=PASSWORD)
        await alice.call("hub.join", room="members-x")
        await alice.call("hub.publish", room="members-x", text="for accounts")
        guest = await framed_client(self, port_of(tree, "framed"))
        joined = await guest.call("hub.join", room="members-x")
        self.assertEqual((joined["history"], joined["members"]), ([], []))
        self.assertEqual(await guest.call("hub.rooms"), {"rooms": []})
        self.assertEqual([r["name"] for r in (await alice.call("hub.rooms"))["rooms"]], ["members-x"])

    async def test_logins_and_logouts_are_rate_limited_like_nick_changes(self) -> None:
        tree = await self.start()
        line = await chat_client(self, port_of(tree, "chat"))
        finals = []
        for _ in range(5):
            finals.append((await line.command("/login alice correct horse"))[-1])
            finals.append((await line.command("/logout"))[-1])
        self.assertEqual(finals[0], "OK login alice")
        self.assertTrue(any(f.startswith("ERR RATE_LIMITED") for f in finals[6:]), finals)

    async def test_a_public_room_with_history_cannot_be_made_private(self) -> None:
        tree = await self.start()
        line = await chat_client(self, port_of(tree, "chat"), "someone")
        await line.command("/join lobby")
        await line.command("/msg lobby hello")
        await line.command("/part lobby")
        alice = await framed_client(self, port_of(tree, "framed"))
        await alice.call("login", username="alice", password=PASSWORD)
        self.assertEqual((await framed_error(alice.call("hub.create", room="lobby"))).code, "FORBIDDEN")
