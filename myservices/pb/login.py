"""PB login: a twisted.cred portal over the accounts table, and the root object clients log in through.

PB's own login (``PBClientFactory.login``) is a challenge-response over MD5
that needs the server to keep every password in plain text or as an unsalted
MD5. Accounts here keep only a slow salted hash, so the root object takes the
password itself (use a ``ssl:`` endpoint where the network is not trusted, as
for the framed service) and checks it through the same portal, checker and
realm machinery:

    root = await factory.getRootObject()
    avatar = await root.callRemote("login", "alice", "secret")

``loginAnonymous`` has the same signature as Twisted's, so
``factory.login(credentials.Anonymous())`` works when the server allows it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from twisted.cred.checkers import ANONYMOUS, AllowAnonymousAccess, ICredentialsChecker
from twisted.cred.credentials import Anonymous, IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.spread import pb
from zope.interface import Attribute, Interface, implementer

from myservices.errors import BAD_ARGUMENTS, BAD_REQUEST, LOGIN_FAILED, UNAUTHENTICATED, RequestError
from myservices.handlers.router import Arg, Router
from myservices.logins import LoggedIn, Logins
from myservices.pb.avatar import AnonymousAvatar, Avatar, UserAvatar

if TYPE_CHECKING:
    from myservices.accounts import AccountStore
    from myservices.pb.server import PBConnection


class AddressedCredentials(UsernamePassword):
    """A username and password, and the client's IP address for the login limits (None: not known)."""

    def __init__(self, username: bytes, password: bytes, address: str | None) -> None:
        super().__init__(username, password)
        self.address = address


@implementer(ICredentialsChecker)
class AccountChecker:
    """Checks a username and password against the accounts table (the slow hash runs off the reactor thread).

    The avatar id is a L{LoggedIn} holding the L{Account}, so the realm needs no second query.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, accounts: AccountStore) -> None:
        self.accounts = accounts

    # the avatar id is a LoggedIn, not the bytes or ANONYMOUS that twisted.cred's annotation names
    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[LoggedIn]:  # type: ignore[override]
        return Deferred.fromCoroutine(self._check(credentials))

    async def _check(self, credentials: IUsernamePassword) -> LoggedIn:
        # IUsernamePassword carries bytes: the UTF-8 of what the client sent (see login below)
        try:
            username = credentials.username.decode("utf-8")
            password = credentials.password.decode("utf-8")
        except UnicodeDecodeError:
            raise UnauthorizedLogin("the username or password is not UTF-8") from None
        try:
            address = getattr(credentials, "address", None)
            return LoggedIn(await self.accounts.authenticate(username, password, address=address))
        except RequestError as e:
            if e.error is LOGIN_FAILED:
                raise UnauthorizedLogin(e.detail) from None
            raise


class ITokenCredentials(Interface):
    """A login token (see myservices.tokens) and the address it came from."""

    token = Attribute("the token, as the client sent it")
    address = Attribute("the client's IP address, or None")


@implementer(ITokenCredentials)
class TokenCredentials:
    def __init__(self, token: str, address: str | None) -> None:
        self.token = token
        self.address = address


@implementer(ICredentialsChecker)
class TokenChecker:
    """Checks a login token; the avatar id is the L{LoggedIn} it names (with its rooms claim)."""

    credentialInterfaces = (ITokenCredentials,)

    def __init__(self, logins: Logins) -> None:
        self.logins = logins

    def requestAvatarId(self, credentials: TokenCredentials) -> Deferred[LoggedIn]:  # type: ignore[override]
        return Deferred.fromCoroutine(self.logins.check_token(credentials.token))


@implementer(IRealm)
class Realm:
    """Hands out a L{UserAvatar} per account login and an L{AnonymousAvatar} per anonymous one."""

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> tuple[Any, pb.Avatar, Any]:
        if pb.IPerspective not in interfaces:
            raise NotImplementedError("PB perspectives only")
        avatar = AnonymousAvatar() if avatarId is ANONYMOUS else UserAvatar(avatarId.account, avatarId.rooms)
        return pb.IPerspective, avatar, avatar.logout


def make_portal(accounts: AccountStore, allow_anonymous: bool, logins: Logins | None = None) -> Portal:
    checkers: list[Any] = [AccountChecker(accounts)]
    if logins is not None:
        checkers.append(TokenChecker(logins))
    if allow_anonymous:
        checkers.append(AllowAnonymousAccess())
    return Portal(Realm(), checkers)


# the root object's methods, routed and checked like every other call
gateway_commands = Router()


@gateway_commands.command(
    "login",
    # bytes only so that Twisted's own login, which sends just the username as bytes, gets the explanation below
    Arg("username", (str, bytes), max_length=64, type_name="a string"),
    Arg("password", str, max_length=4096, required=False),
    Arg("mind", object, required=False),
)
async def login(gateway: Gateway, username: str | bytes, password: str | None = None, mind: Any = None) -> Any:
    if password is None:
        raise RequestError(
            BAD_ARGUMENTS,
            'login takes (username, password): PB\'s challenge-response login (PBClientFactory.login) needs '
            "plain-text passwords on the server, which this server does not keep; see docs/protocols.md",
        )
    if isinstance(username, bytes):
        raise RequestError(BAD_ARGUMENTS, '"username" must be a string')
    # the router's checks let no unpaired surrogate through, so both encode
    return await gateway.login(
        AddressedCredentials(username.encode("utf-8"), password.encode("utf-8"), gateway.connection.address)
    )


@gateway_commands.command("loginToken", Arg("token", str, max_length=8192), Arg("mind", object, required=False))
async def login_token(gateway: Gateway, token: str, mind: Any = None) -> Any:
    """Log in with a token (POST /api/login, or the token command of any front end)."""
    return await gateway.login(TokenCredentials(token, gateway.connection.address))


@gateway_commands.command("loginAnonymous", Arg("mind", object, required=False))
async def login_anonymous(gateway: Gateway, mind: Any = None) -> Any:
    if not gateway.connection.factory.allow_anonymous:
        raise RequestError(UNAUTHENTICATED, "anonymous login is disabled on this server; log in with an account")
    return await gateway.login(Anonymous())


@implementer(pb.IPBRoot)
class GatewayRoot:
    """Gives each connection its own L{Gateway}."""

    def rootObject(self, broker: PBConnection) -> Gateway:
        return Gateway(broker)


class Gateway(pb.Referenceable):
    """The root object of one connection: ``login(username, password)`` and ``loginAnonymous()``.

    Returns the avatar (a remote reference to its perspective). One login per
    connection; the avatar logs out when the connection closes.
    """

    def __init__(self, connection: PBConnection) -> None:
        self.connection = connection
        self._logging_in = False

    def remoteMessageReceived(self, broker: pb.Broker, message: Any, args: Any, kw: Any) -> Any:
        name = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
        command = gateway_commands.get(name)
        if command is None:
            return broker.serialize(self.connection.unknown(name, gateway_commands.commands))
        return broker.serialize(self.connection.call(name, command, self, args, kw))

    async def login(self, credentials: Any) -> Any:
        conn = self.connection
        if conn.logged_in or self._logging_in:
            raise RequestError(BAD_REQUEST, "this connection is already logged in (one login per connection)")
        self._logging_in = True
        try:
            _, avatar, logout = await conn.factory.portal.login(credentials, None, pb.IPerspective)
        except (UnauthorizedLogin, UnhandledCredentials):
            raise RequestError(LOGIN_FAILED) from None
        finally:
            self._logging_in = False
        if conn.closing:
            logout()
            raise RequestError(LOGIN_FAILED, "the connection closed during login")
        await cast(Avatar, avatar).attach(conn)  # what Realm.requestAvatar made
        conn.login_done()
        conn.notifyOnDisconnect(logout)
        return pb.AsReferenceable(avatar, "perspective")

