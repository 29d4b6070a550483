"""Direct messages in the hub (memory engine, Clock): who gets them, the checks, the rate limit, no history."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from myservices.errors import NICK_INVALID, NICK_OFFLINE, RATE_LIMITED, TEXT_INVALID
from myservices.hub import Direct, Hub, HubConfig, MemoryEngine, Message
from tests.test_hub import FakeSubscriber, HubTestsMixin


def directs(sub: FakeSubscriber) -> list[tuple[str, str, str]]:
    return [(e.sender, e.target, e.text) for e in sub.events if isinstance(e, Direct)]


class DirectTests(HubTestsMixin, TestCase):
    def run_(self, coro):
        return self.successResultOf(Deferred.fromCoroutine(coro))

    def test_a_direct_message_reaches_the_target_only_and_the_sender_is_answered(self) -> None:
        hub = self.make_hub()
        alice, a = self.session(hub, "alice")
        bob, b = self.session(hub, "bob")
        carol, c = self.session(hub, "carol")
        self.clock.advance(1234.5)
        event = self.run_(hub.direct(alice, "BOB", "hi bob"))  # nicks ignore case
        self.assertEqual((event.sender, event.target, event.text, event.ts, event.account),
                         ("alice", "BOB", "hi bob", 1234.5, False))
        self.assertEqual(directs(b), [("alice", "BOB", "hi bob")])
        self.assertEqual(a.events, [])  # answered, no copy to the sending connection
        self.assertEqual(c.events, [])
        self.assertEqual(hub.metrics.hub_directs._value.get(), 1)

    def test_a_direct_message_is_never_history_nor_a_room_event(self) -> None:
        hub = self.make_hub()
        alice, _ = self.session(hub, "alice")
        bob, b = self.session(hub, "bob")
        for s in (alice, bob):
            self.run_(hub.join(s, "lobby"))
        b.events.clear()
        self.run_(hub.direct(alice, "bob", "secret"))
        self.assertEqual(self.run_(hub.history("lobby")), [])
        self.assertEqual([r.name for r in self.run_(hub.rooms())], ["lobby"])
        self.assertEqual(len(b.events), 1)
        self.assertNotIsInstance(b.events[0], Message)

    def test_nobody_with_that_nick_is_offline(self) -> None:
        hub = self.make_hub()
        alice, a = self.session(hub, "alice")
        bob, _ = self.session(hub, "bob")
        e = self.assertRequestError(NICK_OFFLINE, hub.direct, alice, "dave", "hello?")
        self.assertEqual(e.detail, 'no user "dave" is connected')
        self.run_(hub.close_session(bob))
        self.assertRequestError(NICK_OFFLINE, hub.direct, alice, "bob", "gone?")
        self.assertEqual(hub.metrics.hub_directs._value.get(), 0)

    def test_the_nick_and_the_text_are_checked(self) -> None:
        hub = self.make_hub()
        alice, _ = self.session(hub, "alice")
        self.session(hub, "bob")
        self.assertRequestError(NICK_INVALID, hub.direct, alice, "not a nick", "x")
        self.assertRequestError(NICK_INVALID, hub.direct, alice, "", "x")
        self.assertRequestError(TEXT_INVALID, hub.direct, alice, "bob", "")
        self.assertRequestError(TEXT_INVALID, hub.direct, alice, "bob", "a\x00b")

    def test_direct_messages_share_the_publishing_rate_limit(self) -> None:
        hub = self.make_hub(publish_rate=2, publish_burst=3)
        alice, _ = self.session(hub, "alice")
        bob, b = self.session(hub, "bob")
        self.run_(hub.join(alice, "lobby"))
        self.run_(hub.publish(alice, "lobby", "one"))
        self.run_(hub.direct(alice, "bob", "two"))
        self.run_(hub.direct(alice, "bob", "three"))
        self.assertRequestError(RATE_LIMITED, hub.direct, alice, "bob", "too fast")
        self.assertRequestError(RATE_LIMITED, hub.publish, alice, "lobby", "too fast")
        self.clock.advance(0.5)
        self.run_(hub.direct(alice, "bob", "again"))
        self.assertEqual([t for _, _, t in directs(b)], ["two", "three", "again"])

    def test_writing_to_yourself_is_delivered_to_you(self) -> None:
        hub = self.make_hub()
        alice, a = self.session(hub, "alice")
        self.run_(hub.direct(alice, "Alice", "note to self"))
        self.assertEqual(directs(a), [("alice", "Alice", "note to self")])

    def test_every_connection_with_the_nick_gets_it_and_the_senders_others_get_a_copy(self) -> None:
        # with accounts, one user's connections share a nick: here two sessions are given one by hand
        hub = self.make_hub()
        alice, a = self.session(hub, "alice")
        alice2, a2 = self.session(hub)
        alice2.nick = "Alice"
        bob, b = self.session(hub, "bob")
        bob2, b2 = self.session(hub)
        bob2.nick = "bob"
        self.run_(hub.direct(alice, "bob", "to both of you"))
        for seen in (b, b2, a2):
            self.assertEqual(directs(seen), [("alice", "bob", "to both of you")])
        self.assertEqual(a.events, [])

    def test_the_account_flag_follows_the_session(self) -> None:
        hub = self.make_hub()
        alice, _ = self.session(hub, "alice")
        self.session(hub, "bob")
        alice.account = "alice"  # what a login sets
        self.assertTrue(self.run_(hub.direct(alice, "bob", "it is me")).account)


class TwoHubDirectTests(HubTestsMixin, TestCase):
    def run_(self, coro):
        return self.successResultOf(Deferred.fromCoroutine(coro))

    def test_a_direct_message_crosses_hubs_and_offline_is_known_to_both(self) -> None:
        self.clock = Clock()
        cfg = HubConfig()
        engine = MemoryEngine(cfg, self.clock)
        a, b = Hub(cfg, self.clock, engine, node_id="a"), Hub(cfg, self.clock, engine, node_id="b")
        alice, alice_sees = self.session(a, "alice")
        bob, bob_sees = self.session(b, "bob")
        self.run_(a.direct(alice, "bob", "over there"))
        self.run_(b.direct(bob, "alice", "and back"))
        self.assertEqual(directs(bob_sees), [("alice", "bob", "over there")])
        self.assertEqual(directs(alice_sees), [("bob", "alice", "and back")])
        self.run_(b.close_session(bob))
        self.assertRequestError(NICK_OFFLINE, a.direct, alice, "bob", "still there?")
