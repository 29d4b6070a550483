"""Faults of the Redis engine found in review, each against a real redis-server (tests/redishubs.py)."""

from __future__ import annotations

import pytest

from myservices.errors import DATABASE_UNAVAILABLE, RequestError
from tests.redishubs import RedisHubs


@pytest.mark.redis
class RedisReviewTests(RedisHubs):
    async def test_publishing_works_again_once_the_database_is_back_after_a_failed_commit(self) -> None:
        # a real outage of the database: its commit fails after delivery, the history writer notes it failing
        a, = await self.start(1)
        alice, _ = await self.session(a, "alice")
        await a.join(alice, "lobby")
        await a.publish(alice, "lobby", "first")
        await self.db.stopService()
        kept = await a.publish(alice, "lobby", "kept")  # delivered, acknowledged, kept to be written late
        with self.assertRaises(RequestError) as caught:
            await a.publish(alice, "lobby", "refused")
        self.assertEqual(caught.exception.error, DATABASE_UNAVAILABLE)
        self.db.startService()
        await self.db.when_ready()
        await self.engine(a)._periodic()  # the late save: the database answers again
        self.assertEqual(await self.stored(), [(1, "first"), (kept.id, "kept")])
        after = await a.publish(alice, "lobby", "after")  # was refused for good: nothing cleared the failure
        self.assertEqual(after.id, kept.id + 1)
