"""Who a hub session is: guest nicks, chosen nicks, logging in to an account, and the reservation of account names.

A mixin of L{myservices.hub.Hub}. A registered username is reserved: only
its account's connections hold it, as their nick, on every front end and in
every process (anonymous nick changes are checked against the accounts, and
the engine holds an account's nick for all its connections at once).
Anonymous users hold their nicks one connection each.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from myservices.errors import DISCONNECTED, FORBIDDEN, NICK_TAKEN, RATE_LIMITED, UNAUTHENTICATED, USERNAME_TAKEN, RequestError
from myservices.hub.events import Event, Logout, Presence
from myservices.hub.rooms import Session

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime
    from twisted.logger import Logger

    from myservices.hub.config import HubConfig
    from myservices.hub.interfaces import HubEngine


class Identities:
    """Nicks and logins of a hub's sessions (see the module docstring)."""

    if TYPE_CHECKING:  # the hub's
        config: HubConfig
        engine: HubEngine
        node_id: str
        sessions: dict[str, Session]
        log: Logger
        is_account: Callable[[str], Awaitable[bool]] | None

        clock: IReactorTime

        def check_nick(self, nick: str) -> str: ...
        async def check_allowed(self, session: Session, name: str, action: str) -> None: ...
        async def _remove(self, session: Session, name: str) -> None: ...
        def _send(self, sessions: Iterable[Session], event: Event) -> None: ...

    async def _guest_nick(self, owner: str) -> str:
        while True:
            nick = f"guest{await self.engine.guest_number()}"
            if await self.engine.claim_nick(nick, owner):
                return nick

    @staticmethod
    def _owner(session: Session) -> str:
        """Who holds the session's nick in the engine: the account (all its connections share the nick) or the member."""
        return f"@{session.account}" if session.account is not None else session.member_id

    async def _release(self, session: Session, nick: str | None = None, owner: str | None = None) -> None:
        """Free the nick C{session} held (as C{owner}), unless another connection of its account here still uses it.

        Another process's connections of the account hold it again at their next refresh.
        """
        nick = session.nick if nick is None else nick
        owner = self._owner(session) if owner is None else owner
        if owner.startswith("@") and any(
            s is not session and not s.closed and s.account == owner[1:] for s in self.sessions.values()
        ):
            return
        await self.engine.release_nick(nick, owner)

    def _may(self, session: Session, write: bool) -> None:
        """UNAUTHENTICATED if this service does not let an anonymous connection do this (DISCONNECTED once it is
        closed: a connection that is going away does nothing more)."""
        if session.closed:
            raise RequestError(DISCONNECTED, "this connection is closed")
        if session.account is not None or session.anonymous == "chat":
            return
        if session.anonymous == "none":
            raise RequestError(UNAUTHENTICATED, "this service is for logged-in users: log in first")
        if write:
            raise RequestError(UNAUTHENTICATED, "anonymous users may only read here: log in to write")

    def _churn(self, session: Session) -> None:
        if not session.churn.allow():
            raise RequestError(
                RATE_LIMITED, f"at most {self.config.churn_rate:g} nick changes, joins and parts per second",
                retry_after=session.churn.wait(),
            )

    async def set_nick(self, session: Session, nick: str) -> str:
        """Take a new nick (unique among all connected users, ignoring case); returns the old one.

        A registered username is reserved for its account; a logged-in
        connection's nick is its username, so it cannot pick another.
        """
        self.check_nick(nick)
        old = session.nick
        if old == nick or session.closed:
            return old  # a session that is gone takes no nick: nothing would ever release it
        if session.account is not None:
            raise RequestError(FORBIDDEN, f"logged in as {session.account}: an account's nick is its username")
        self._may(session, write=True)
        self._churn(session)
        if old.lower() != nick.lower():
            if self.is_account is not None and await self.is_account(nick.lower()):
                raise RequestError(NICK_TAKEN, f'nick "{nick}" belongs to an account: log in to use it')
            if not await self.engine.claim_nick(nick, session.member_id):
                raise RequestError(NICK_TAKEN, f'nick "{nick}" is in use')
        if session.closed:  # closed while the nick was being claimed: its close released the old one
            await self.engine.release_nick(nick, session.member_id)
            return old
        await self._rename(session, old, nick)
        return old

    async def _rename(self, session: Session, old: str, new: str, old_owner: str | None = None) -> None:
        session.nick = new
        if old.lower() != new.lower():
            await self._release(session, old, old_owner)
        await self.engine.rename(
            self.node_id, session.member_id, old, new, list(session.rooms), account=session.account is not None
        )

    async def login(self, session: Session, username: str, token_rooms: Iterable[str] | None = None) -> None:
        """Make C{session} the account C{username}'s (authenticated by the caller): its nick becomes the username.

        Every connection of an account shares its nick. C{token_rooms}: the
        rooms a token limits the session to (None: no limit).
        """
        username = username.lower()
        if session.closed:
            return
        if session.account != username:
            self._churn(session)  # a rename everyone in its rooms is told of, like /nick
        session.token_rooms = frozenset(token_rooms) if token_rooms is not None else None
        session.logged_in_at = self.clock.seconds()
        if session.account == username:
            await self._leave_refused(session)  # a token for other rooms
            return
        old, old_owner = session.nick, self._owner(session)
        session.account = username
        if not await self.engine.claim_nick(username, self._owner(session)):
            if old.lower() == username:  # its own claim from before it logged in: hand it to the account
                await self.engine.release_nick(old, old_owner)
                await self.engine.claim_nick(username, self._owner(session))
            else:
                # an anonymous connection took the name before it was registered: it gives it up
                await self._evict(username)
                await self.engine.claim_nick(username, self._owner(session))
        if session.closed:
            await self._release(session, username)
            return
        if old != username:
            await self._rename(session, old, username, old_owner)
        elif session.rooms:  # it held the name already (it registered it under that nick): its rooms' presence
            # learns it is an account's (nobody is told of a nick change)
            await self.engine.rename(self.node_id, session.member_id, old, old, list(session.rooms), account=True)
        await self._leave_refused(session)

    async def _leave_refused(self, session: Session) -> None:
        """After its identity changed: the session leaves each room and topic it may no longer be in, told why.

        So logging out (or in as another account, or with a token for other
        rooms) never keeps what a removal, ban, rule or private room refuses.
        """
        for names, action in ((list(session.rooms), "join"), (list(session.topics), "subscribe")):
            for name in names:
                try:
                    await self.check_allowed(session, name, action)
                except RequestError as e:
                    self._send([session], Presence(kind="kick", room=name, nick=session.nick, reason=e.detail))
                    await self._remove(session, name)

    async def logout_account(self, username: str, keep: Session | None = None) -> None:
        """Log out every connection of account C{username} but C{keep}, on every hub of every process.

        After a password change: whoever logged in with the old one is a
        guest again. If the engine cannot carry the order (Redis away), this
        hub's connections are logged out at least, and the rest is logged.
        """
        order = Logout(account=username, keep=keep.member_id if keep is not None else "")
        try:
            await self.engine.logout(order)
        except RequestError:
            self.log.warn("hub: the other processes' connections of {account} stay logged in (the engine is away)",
                          account=username)
            self.logged_out(order)

    def logged_out(self, order: Logout) -> None:
        """From the engine: log out this hub's connections that C{order} names (in the background)."""
        for other in list(self.sessions.values()):
            if other.account == order.account and other.member_id != order.keep:
                Deferred.fromCoroutine(self.logout(other)).addErrback(self._logout_failed, other)

    def _logout_failed(self, failure: Failure, session: Session) -> None:
        self.log.failure("logging out {session} failed", failure, session=session)

    async def _evict(self, nick: str) -> None:
        for other in list(self.sessions.values()):
            if other.account is None and other.nick.lower() == nick and not other.closed:
                guest = await self._guest_nick(other.member_id)
                await self._rename(other, other.nick, guest)
                return
        self.log.warn("hub: nick {nick} of an account is held by an anonymous connection of another process",
                      nick=nick)

    async def logout(self, session: Session) -> None:
        """The session is anonymous again, with a new guest nick (the username stays reserved)."""
        if session.account is None or session.closed:
            return
        self._churn(session)
        old, old_owner = session.nick, self._owner(session)
        session.account, session.token_rooms, session.logged_in_at = None, None, None
        await self._rename(session, old, await self._guest_nick(session.member_id), old_owner)
        await self._leave_refused(session)

    async def reserve_for_registration(self, username: str, session: Session | None) -> str | None:
        """Hold C{username} while it is registered, so no anonymous connection takes it meanwhile.

        Returns the owner to pass to L{end_registration}, or raises NICK_TAKEN
        if another connection uses it as its nick now (the registering
        connection itself may).
        """
        owner = f"@{username}"
        if self.is_account is not None and await self.is_account(username):
            # registered already: its claim (maybe another process's) is not this registration's to take
            raise RequestError(USERNAME_TAKEN, f'username "{username}" is taken')
        if await self.engine.claim_nick(username, owner):
            return owner
        if session is not None and session.nick.lower() == username:
            return None
        if any(s.account == username for s in self.sessions.values()):
            return None  # held by its own account already
        raise RequestError(NICK_TAKEN, f'"{username}" is in use as a nick now; pick another username')

    async def end_registration(self, username: str, owner: str | None) -> None:
        if owner is not None and not any(s.account == username for s in self.sessions.values()):
            await self.engine.release_nick(username, owner)
