"""Defects found by review16: each test does what an attacker or an unlucky client did, over loopback."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.support import chat_client, port_of
from tests.test_bad_input import FrontEndsMixin


class LineChatDigitsTests(FrontEndsMixin, TestCase):
    async def test_history_limit_in_other_digits_is_not_internal(self) -> None:
        # chat.py do_history: str.isdigit() is true for "²", "⑴", "₁", but int() refuses them:
        # ValueError -> ERR INTERNAL and a logged traceback, for input the client controls
        tree = await self.start()
        line = await chat_client(self, port_of(tree, "chat"), "digits")
        await line.command("/join lobby")
        for limit in ("\u00b2", "\u2474", "\u2081"):
            reply = (await line.command(f"/history lobby {limit}"))[-1]
            self.assertFalse(reply.startswith("ERR INTERNAL"), (limit, reply))
        self.assertEqual(self.error_count("chat", "INTERNAL"), 0)
        self.assertEqual(self.alarms.events, [])
