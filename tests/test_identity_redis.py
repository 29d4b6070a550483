"""Reserved nicks across processes: hubs on their own Redis engines, sharing one Redis and one database."""

from __future__ import annotations

import pytest
from twisted.internet import reactor

from myservices.accounts import AccountsConfig, AccountStore
from myservices.errors import NICK_OFFLINE, NICK_TAKEN, RequestError
from myservices.hub import Hub, Subscriber
from myservices.hub.config import HubConfig
from myservices.logins import Logins
from myservices.passwords import PasswordHasher
from tests.redishubs import RedisHubs, Seen

PASSWORD = "correct horse"


@pytest.mark.redis
class ReservedNicksAcrossProcessesTests(RedisHubs):
    def hub(self, cfg: HubConfig) -> Hub:
        # each "process" checks reservations against the one accounts table, as daemons on one MySQL do
        hub = super().hub(cfg)
        if not hasattr(self, "accounts"):
            hasher = PasswordHasher(reactor, 2**10, concurrency=1)
            hasher.startService()
            self.addCleanup(lambda: hasher.stopService() if hasher.running else None)
            self.accounts = AccountStore(self.db, hasher, AccountsConfig(scrypt_cost=10))
        hub.is_account = self.accounts.exists
        return hub

    async def test_a_name_registered_in_one_process_is_reserved_in_the_other(self) -> None:
        one, two = await self.start()
        await Logins(one, self.accounts).register(None, "alice", PASSWORD, None)
        anonymous, _ = await self.session(two)
        with self.assertRaises(RequestError) as e:
            await two.set_nick(anonymous, "Alice")
        self.assertIs(e.exception.error, NICK_TAKEN)

    async def test_a_nick_in_use_in_another_process_cannot_be_registered(self) -> None:
        one, two = await self.start()
        await self.session(two, "bob")
        with self.assertRaises(RequestError) as e:
            await Logins(one, self.accounts).register(None, "bob", PASSWORD, None)
        self.assertIs(e.exception.error, NICK_TAKEN)
        self.assertFalse(await self.accounts.exists("bob"))

    async def test_an_account_logged_in_on_two_processes_keeps_its_nick_when_one_logs_out(self) -> None:
        one, two = await self.start()
        await self.accounts.register("carol", PASSWORD)
        first, _ = await self.session(one)
        second, _ = await self.session(two)
        await Logins(one, self.accounts).login(first, "carol", PASSWORD, None)
        await Logins(two, self.accounts).login(second, "carol", PASSWORD, None)
        self.assertEqual((first.nick, second.nick), ("carol", "carol"))
        await one.logout(first)
        self.assertRegex(first.nick, r"^guest\d+$")
        # a third connection, anonymous: the name is the account's whoever holds it
        seen = Seen()
        third = await two.open_session(Subscriber(seen.deliver, seen.close))
        with self.assertRaises(RequestError) as e:
            await two.set_nick(third, "carol")
        self.assertIs(e.exception.error, NICK_TAKEN)

    async def test_an_account_stays_online_while_any_process_holds_it(self) -> None:
        one, two = await self.start()
        await self.accounts.register("erin", PASSWORD)
        here, _ = await self.session(one)
        there, there_sees = await self.session(two)
        sender, _ = await self.session(one, "sender")
        await Logins(one, self.accounts).login(here, "erin", PASSWORD, None)
        await Logins(two, self.accounts).login(there, "erin", PASSWORD, None)
        await one.logout(here)  # the last of the account's connections in process one, not in two
        # at once, not only after process two's next refresh: a direct message and a disconnect find it
        await one.direct(sender, "erin", "still there?")
        await self.until(lambda: any(getattr(e, "text", None) == "still there?" for e in there_sees.events), "the DM")
        await two.logout(there)  # the last one anywhere: the nick is free
        with self.assertRaises(RequestError) as e:
            await one.direct(sender, "erin", "gone?")
        self.assertIs(e.exception.error, NICK_OFFLINE)
        self.assertFalse(await one.disconnect("erin"))

    async def test_a_password_change_logs_the_account_out_on_every_process(self) -> None:
        one, two = await self.start()
        await self.accounts.register("dave", PASSWORD)
        changer, _ = await self.session(one)
        elsewhere, seen = await self.session(two)
        logins_one, logins_two = Logins(one, self.accounts), Logins(two, self.accounts)
        await logins_one.login(changer, "dave", PASSWORD, None)
        await logins_two.login(elsewhere, "dave", PASSWORD, None)
        await two.join(elsewhere, "lobby")
        await logins_one.change_password(changer, PASSWORD, "a brand new password", None)
        await self.until(lambda: elsewhere.account is None, "the other process's connection is logged out")
        self.assertRegex(elsewhere.nick, r"^guest\d+$")
        self.assertEqual(changer.account, "dave")  # the connection that changed it stays logged in
