"""The hub's server-side operations (the server API's and the operators'): post, read, disconnect, rooms' last ids.

Memory engine with a Clock here; the Redis engine's (two processes) at the end.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from myservices.errors import DISCONNECTED, NICK_INVALID, ROOM_INVALID, TEXT_INVALID
from myservices.hub import Message, RoomInfo
from tests.redishubs import RedisHubs
from tests.test_hub import HubTestsMixin


class ServerSideTests(HubTestsMixin, TestCase):
    def run_(self, coro):
        return self.successResultOf(Deferred.fromCoroutine(coro))

    def test_post_reaches_members_and_subscribers_without_a_connection_of_its_own(self) -> None:
        hub = self.make_hub(publish_rate=1, publish_burst=1)
        alice, a = self.session(hub, "alice")
        reader, r = self.session(hub, "reader")
        self.run_(hub.join(alice, "lobby"))
        self.run_(hub.subscribe(reader, "lobby"))
        a.events.clear()
        for text in ("order shipped", "and another", "no rate limit of a connection applies"):
            message = self.run_(hub.post("lobby", text, "shop"))
        self.assertEqual((message.room, message.id, message.nick, message.account), ("lobby", 3, "shop", False))
        self.assertEqual(a.texts(), ["order shipped", "and another", "no rate limit of a connection applies"])
        self.assertEqual(r.texts(), a.texts())
        self.assertEqual([m.text for m in self.run_(hub.history("lobby"))], a.texts())

    def test_post_keeps_the_rules_of_names_and_text(self) -> None:
        hub = self.make_hub()
        self.assertRequestError(ROOM_INVALID, hub.post, "no spaces", "x", "shop")
        self.assertRequestError(TEXT_INVALID, hub.post, "lobby", "", "shop")
        self.assertRequestError(TEXT_INVALID, hub.post, "lobby", "a\x00b", "shop")
        self.assertRequestError(NICK_INVALID, hub.post, "lobby", "x", "not a nick")
        self.assertEqual(self.run_(hub.history("lobby")), [])

    def test_read_pages_forward_from_an_id_and_says_when_older_ones_are_gone(self) -> None:
        hub = self.make_hub(history_size=5)
        keeper, _ = self.session(hub, "keeper")
        self.run_(hub.subscribe(keeper, "lobby"))  # without a database, a room nobody uses keeps nothing
        for i in range(1, 8):
            self.run_(hub.post("lobby", f"m{i}", "shop"))
        page = self.run_(hub.read("lobby"))
        self.assertEqual(([m.id for m in page.messages], page.complete, page.last_id), ([3, 4, 5, 6, 7], True, 7))
        self.assertEqual([m.id for m in self.run_(hub.read("lobby", limit=2)).messages], [6, 7])
        page = self.run_(hub.read("lobby", since=4, limit=2))
        self.assertEqual(([m.id for m in page.messages], page.complete), ([5, 6], True))
        page = self.run_(hub.read("lobby", since=6, limit=2))
        self.assertEqual(([m.id for m in page.messages], page.complete), ([7], True))
        page = self.run_(hub.read("lobby", since=7))
        self.assertEqual((page.messages, page.complete), ([], True))
        # 1 and 2 are no longer kept: a reader at 0 gets what is left and learns of the gap
        page = self.run_(hub.read("lobby", since=0, limit=10))
        self.assertEqual(([m.id for m in page.messages], page.complete), ([3, 4, 5, 6, 7], False))
        # a reader ahead of the room knows ids it never gave
        self.assertFalse(self.run_(hub.read("lobby", since=99)).complete)
        self.assertEqual(self.run_(hub.read("lobby", limit=0)).messages, [])
        self.assertRequestError(ROOM_INVALID, hub.read, "bad room")

    def test_disconnect_closes_every_connection_of_the_nick_and_says_whether_there_was_one(self) -> None:
        hub = self.make_hub()
        bob, b = self.session(hub, "bob")
        bob2, b2 = self.session(hub)
        bob2.nick = "Bob"  # with accounts, connections share a nick
        alice, a = self.session(hub, "alice")
        for s in (bob, alice):
            self.run_(hub.join(s, "lobby"))
        a.events.clear()
        self.assertTrue(self.run_(hub.disconnect("BOB", "spamming")))
        for sub in (b, b2):
            self.assertEqual((sub.closed_with.code, sub.closed_with.message), (DISCONNECTED.code, "spamming"))
        self.assertIsNone(a.closed_with)
        self.assertNotIn(bob.member_id, hub.sessions)
        self.assertEqual(self.run_(hub.who("lobby")), ["alice"])  # the others saw it leave
        self.assertEqual([(e.kind, e.nick) for e in a.events], [("part", "bob")])
        self.assertFalse(self.run_(hub.disconnect("bob")))  # nobody has the nick now
        self.assertEqual(a.closed_with, None)
        self.assertRequestError(NICK_INVALID, hub.disconnect, "not a nick")
        self.assertRequestError(TEXT_INVALID, hub.disconnect, "alice", "a\nb")

    def test_rooms_carry_their_last_id(self) -> None:
        hub = self.make_hub()
        alice, _ = self.session(hub, "alice")
        self.run_(hub.join(alice, "lobby"))
        self.assertEqual(self.run_(hub.rooms()), [RoomInfo("lobby", 1, 0, 0)])
        for _ in range(3):
            self.run_(hub.publish(alice, "lobby", "hi"))
        self.assertEqual(self.run_(hub.rooms()), [RoomInfo("lobby", 1, 0, 3)])


@pytest.mark.redis
class RedisServerSideTests(RedisHubs):
    async def test_disconnect_reaches_every_process_and_rooms_carry_the_shared_last_id(self) -> None:
        a, b = await self.start()
        carol, carol_sees = await self.session(b, "carol")
        alice, alice_sees = await self.session(a, "alice")
        await b.join(carol, "lobby")
        await a.join(alice, "lobby")
        posted: Message = await a.post("lobby", "from the backend", "shop")
        await self.until(lambda: any(isinstance(e, Message) for e in carol_sees.events), "the post, in process b")
        await b.publish(carol, "lobby", "hello")
        infos = await a.rooms()
        self.assertEqual(infos, [RoomInfo("lobby", 2, 0, posted.id + 1)])

        self.assertTrue(await a.disconnect("Carol", "bye"))  # asked in a, carol is in b
        await self.until(lambda: carol_sees.closed_with is not None, "carol's connection closed")
        self.assertEqual((carol_sees.closed_with.code, carol_sees.closed_with.message), ("DISCONNECTED", "bye"))
        self.assertIsNone(alice_sees.closed_with)
        await self.until(lambda: carol.member_id not in b.sessions, "carol's session ended")
        self.assertEqual(await a.who("lobby"), ["alice"])
        self.assertFalse(await a.disconnect("nobody"))

    async def test_read_pages_the_shared_history(self) -> None:
        a, b = await self.start()
        for i in range(1, 5):
            await (a if i % 2 else b).post("news", f"m{i}", "shop")
        page = await b.read("news", since=1, limit=2)
        self.assertEqual(([m.text for m in page.messages], page.complete, page.last_id), (["m2", "m3"], True, 4))
