"""Kicks across processes with the Redis engine: the order reaches the process holding the member."""

from __future__ import annotations

import pytest

from myservices.hub import Kick, Presence
from tests.redishubs import RedisHubs

pytestmark = pytest.mark.redis


class RedisKickTests(RedisHubs):
    async def test_a_kick_from_one_process_removes_the_member_on_another(self) -> None:
        a, b = await self.start()
        alice, alice_sees = await self.session(a, "alice")
        bob, bob_sees = await self.session(b, "bob")
        carol, carol_sees = await self.session(b, "carol")
        await a.join(alice, "lobby")
        await b.join(bob, "lobby")
        await b.subscribe(carol, "lobby")
        bob.account = "bobby"
        await a.engine.kick(Kick(room="lobby", nicks=frozenset({"bob"}), reason="kicked by alice"))
        await self.until(lambda: "lobby" not in bob.rooms, "bob to leave lobby")
        kicks = [e for e in bob_sees.events if isinstance(e, Presence) and e.kind == "kick"]
        self.assertEqual([(k.room, k.nick, k.reason) for k in kicks], [("lobby", "bob", "kicked by alice")])
        await self.until(lambda: alice_sees.presence()[-1:] == [("part", "bob")], "bob's PART on the other process")
        self.assertEqual(await a.who("lobby"), ["alice"])
        # by account and everyone: a subscriber too
        await b.join(bob, "lobby")
        await a.engine.kick(Kick(room="lobby", accounts=frozenset({"bobby"}), reason="banned"))
        await self.until(lambda: "lobby" not in bob.rooms, "bob to leave lobby again")
        await a.engine.kick(Kick(room="lobby", everyone=True, reason="closed"))
        await self.until(lambda: not carol.topics and not alice.rooms, "everyone to leave")
        self.assertEqual([e.reason for e in carol_sees.events if isinstance(e, Presence) and e.kind == "kick"],
                         ["closed"])
