"""What the shared commands work on: the daemon's shared services, one connection's state, and the router
every command module registers on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from myservices.errors import UNAUTHENTICATED, RequestError
from myservices.handlers.router import Arg, Router
from myservices.hub import Hub, Session, Subscriber

if TYPE_CHECKING:
    from myservices.accounts import Account, AccountStore
    from myservices.counter import DurableCounter
    from myservices.kv import KeyValueStore
    from myservices.logins import Logins
    from myservices.operator.sampler import Sampler
    from myservices.tokens import TokenService


@dataclass(frozen=True)
class SharedServices:
    """What the commands work on: one of each per daemon, shared with the other front ends."""

    hub: Hub
    accounts: AccountStore
    kv: KeyValueStore
    counter: DurableCounter
    clock: IReactorTime
    tokens: TokenService
    logins: Logins | None = None
    operator: Sampler | None = None  # the operator page's statistics (myservices.handlers.admin_commands)


class CommandState:
    """One connection's state: who is logged in and its hub session (opened on first use).

    C{address} is the client's IP address (login limits count per address);
    C{anonymous} what the service lets a connection do before it logs in
    (see L{Hub.open_session}).
    """

    def __init__(
        self, services: SharedServices, subscriber: Subscriber, address: str | None = None, anonymous: str = "chat"
    ) -> None:
        self.services = services
        self.address = address
        self.anonymous = anonymous
        self._subscriber = subscriber
        self._account: Account | None = None
        self._session: Session | None = None
        self._opening: list[Deferred[Session]] | None = None
        self._closed = False

    @property
    def account(self) -> Account | None:
        """The account logged in, while the hub session is still its (a password change elsewhere logs it out)."""
        account = self._account
        if account is not None and self._session is not None and self._session.account != account.username:
            return None
        return account

    @account.setter
    def account(self, account: Account | None) -> None:
        self._account = account

    async def session(self) -> Session:
        """The connection's hub session, opened by the first caller (later ones wait for it)."""
        if self._session is not None:
            return self._session
        if self._opening is not None:
            d: Deferred[Session] = Deferred()
            self._opening.append(d)
            return await d
        self._opening = []
        try:
            session = await self.services.hub.open_session(self._subscriber, self.anonymous)
        except BaseException as e:
            waiters, self._opening = self._opening, None
            for w in waiters:
                w.errback(e)
            raise
        self._session = session
        waiters, self._opening = self._opening, None
        if self._closed:  # the connection went away while the session opened
            self.services.hub.close_session_later(session)
        for w in waiters:
            w.callback(session)
        return session

    @property
    def nick(self) -> str | None:
        """The session's nick, if it is open."""
        return self._session.nick if self._session is not None else None

    def close(self) -> None:
        """The connection is gone: leave every room and free the nick (in the background)."""
        self._closed = True
        if self._session is not None:
            self.services.hub.close_session_later(self._session)

    @property
    def logins(self) -> Logins:
        assert self.services.logins is not None  # every daemon has them; some unit tests build none
        return self.services.logins

    @property
    def account_id(self) -> int:
        account = self.account
        if account is None:
            # the front ends check login first; a login can end meanwhile (a password change elsewhere)
            raise RequestError(UNAUTHENTICATED, "log in first")
        return account.id


router = Router()

USERNAME = Arg("username", str, max_length=64)


def room_arg(name: str = "room") -> Arg:
    """A room name argument (the hub checks the rules)."""
    return Arg(name, str, max_length=256)
