"""The shared commands: thin adapters from JSON arguments to the shared hub, accounts, key-value store and
counter. Each returns the reply's result object. The framed, WebSocket and PB front ends call them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from myservices.errors import BAD_ARGUMENTS, FORBIDDEN, UNAUTHENTICATED, RequestError
from myservices.handlers.pipeline import message_json
from myservices.handlers.router import ANY, Arg, Router
from myservices.hub import Hub, Joined, Session, Subscriber
from myservices.hub.rules import MAX_MESSAGE_ID
if TYPE_CHECKING:
    from myservices.accounts import Account, AccountStore
    from myservices.counter import DurableCounter
    from myservices.hub.moderation import Moderation
    from myservices.kv import KeyValueStore
    from myservices.logins import LoggedIn, Logins
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


def _room(name: str = "room") -> Arg:
    return Arg(name, str, max_length=256)


# the last message id a client saw in a room: rejoining with it returns what it missed (the one rule for
# every front end; the line chat checks its SINCE word with it too)
SINCE = Arg("since", int, required=False, min=0, max=MAX_MESSAGE_ID)


def joined_json(joined: Joined, history: bool = True) -> dict[str, Any]:
    """The reply to a join or subscribe: the history (what was missed, with C{since}), and whether it is all of it.

    C{last_id} is always there, so a client can remember where it is even in a room without history.
    """
    return {
        "room": joined.room,
        "history": [message_json(m) for m in joined.history] if history else [],
        "recovered": joined.recovered,
        "last_id": joined.last_id,
    }


# --- basics -------------------------------------------------------------------


@router.command("ping")
def ping(s: CommandState) -> dict[str, Any]:
    return {"pong": True, "time": s.services.clock.seconds()}


@router.command("echo", Arg("data", ANY))
def echo(s: CommandState, data: Any) -> dict[str, Any]:
    return {"data": data}


# --- accounts -------------------------------------------------------------------

_USERNAME = Arg("username", str, max_length=64)
_PASSWORD = Arg("password", str, max_length=4096)
TOKEN = Arg("token", str, max_length=8192)


def logged_in_json(done: LoggedIn, nick: str) -> dict[str, Any]:
    """The reply to a login, the same on every front end."""
    result: dict[str, Any] = {"username": done.account.username, "nick": nick}
    if done.rooms is not None:
        result["rooms"] = list(done.rooms)
    if done.expires_at is not None:
        result["expires_at"] = done.expires_at
    return result


@router.command("register", _USERNAME, _PASSWORD)
async def register(s: CommandState, username: str, password: str) -> dict[str, Any]:
    account = await s.logins.register(s._session, username, password, s.address)
    return {"username": account.username}


@router.command(
    "login", Arg("username", str, max_length=64, required=False), Arg("password", str, max_length=4096, required=False),
    Arg("token", str, max_length=8192, required=False), barrier=True,
)
async def login(
    s: CommandState, username: str | None = None, password: str | None = None, token: str | None = None
) -> dict[str, Any]:
    """With a username and password, or with a token (not both)."""
    session = await s.session()
    if token is not None and username is None and password is None:
        done = await s.logins.login_token(session, token, s.address)
    elif token is None and username is not None and password is not None:
        done = await s.logins.login(session, username, password, s.address)
    else:
        raise RequestError(BAD_ARGUMENTS, 'login takes "username" and "password", or "token"')
    s.account = done.account
    return logged_in_json(done, session.nick)


@router.command("logout", barrier=True)
async def logout(s: CommandState) -> dict[str, Any]:
    s.account = None
    if s._session is not None:
        await s.logins.logout(s._session)
    return {"nick": s.nick}


@router.command("whoami")
async def whoami(s: CommandState) -> dict[str, Any]:
    session = await s.session()
    return {"username": session.account, "nick": session.nick, "admin": s.services.hub.policy.is_admin(session)}


@router.command("passwd", Arg("old", str, max_length=4096), Arg("new", str, max_length=4096), login=True)
async def passwd(s: CommandState, old: str, new: str) -> dict[str, Any]:
    """Change the password: every token issued before stops working."""
    await s.logins.change_password(await s.session(), old, new, s.address)
    return {"username": s.account.username if s.account else None}


@router.command("token", Arg("rooms", list, required=False), login=True)
async def token(s: CommandState, rooms: list[Any] | None = None) -> dict[str, Any]:
    """A token for the logged-in account (optionally limited to C{rooms}), for another connection or front end."""
    if rooms is not None:
        rooms = [s.services.hub.check_room(r) if isinstance(r, str) else _bad_room() for r in rooms]
    assert s.account is not None
    value, expires_at = await s.logins.issue_token(await s.session(), s.account, rooms)
    return {"token": value, "expires_at": expires_at}


def _bad_room() -> str:
    raise RequestError(BAD_ARGUMENTS, '"rooms" must be an array of room names')


# --- key-value (per account) -------------------------------------------------------


@router.command("kv.get", Arg("key", str), login=True)
async def kv_get(s: CommandState, key: str) -> dict[str, Any]:
    return {"key": key, "value": await s.services.kv.get(s.account_id, key)}


@router.command("kv.set", Arg("key", str), Arg("value", ANY), login=True)
async def kv_set(s: CommandState, key: str, value: Any) -> dict[str, Any]:
    return {"key": key, "created": await s.services.kv.set(s.account_id, key, value)}


@router.command("kv.delete", Arg("key", str), login=True)
async def kv_delete(s: CommandState, key: str) -> dict[str, Any]:
    return {"key": key, "deleted": await s.services.kv.delete(s.account_id, key)}


@router.command("kv.list", Arg("prefix", str, required=False), Arg("limit", int, required=False, min=0), login=True)
async def kv_list(s: CommandState, prefix: str = "", limit: int | None = None) -> dict[str, Any]:
    return {"keys": await s.services.kv.list(s.account_id, prefix, limit)}


# --- the durable counter (the HTTP service's "I am request #N") ------------------------


@router.command("counter.increment")
async def counter_increment(s: CommandState) -> dict[str, Any]:
    return {"value": await s.services.counter.next()}


@router.command("counter.get")
async def counter_get(s: CommandState) -> dict[str, Any]:
    return {"value": await s.services.counter.current()}


# --- the hub -----------------------------------------------------------------


@router.command("hub.nick", Arg("nick", str, max_length=256), barrier=True)
async def hub_nick(s: CommandState, nick: str) -> dict[str, Any]:
    old = await s.services.hub.set_nick(await s.session(), nick)
    return {"nick": nick, "old": old}


@router.command("hub.join", _room(), SINCE, barrier=True)
async def hub_join(s: CommandState, room: str, since: int | None = None) -> dict[str, Any]:
    joined = await s.services.hub.join(await s.session(), room, since)
    return {**joined_json(joined), "members": joined.members}


@router.command("hub.part", _room())
async def hub_part(s: CommandState, room: str) -> dict[str, Any]:
    name = s.services.hub.check_room(room)
    await s.services.hub.part(await s.session(), name)
    return {"room": name}


@router.command("hub.publish", _room(), Arg("text", str))
async def hub_publish(s: CommandState, room: str, text: str) -> dict[str, Any]:
    # topic-style: publishing does not require joining (members and subscribers receive it)
    message = await s.services.hub.publish(await s.session(), room, text, as_member=False)
    return {"room": message.room, "id": message.id}


@router.command("hub.history", _room(), Arg("limit", int, required=False, min=0))
async def hub_history(s: CommandState, room: str, limit: int | None = None) -> dict[str, Any]:
    name = s.services.hub.check_room(room)
    messages = await s.services.hub.history(name, limit, by=await s.session())
    return {"room": name, "messages": [message_json(m) for m in messages]}


@router.command("hub.who", _room())
async def hub_who(s: CommandState, room: str) -> dict[str, Any]:
    name = s.services.hub.check_room(room)
    return {"room": name, "members": await s.services.hub.who(name, by=await s.session())}


@router.command("hub.rooms")
async def hub_rooms(s: CommandState) -> dict[str, Any]:
    rooms = await s.services.hub.rooms(by=await s.session())
    return {"rooms": [{"name": r.name, "members": r.members, "subscribers": r.subscribers} for r in rooms]}


@router.command("hub.subscribe", _room(), SINCE, barrier=True)
async def hub_subscribe(s: CommandState, room: str, since: int | None = None) -> dict[str, Any]:
    # topic-style: history only when asked for (what was missed since an id)
    joined = await s.services.hub.subscribe(await s.session(), room, since)
    return joined_json(joined, history=since is not None)


@router.command("hub.unsubscribe", _room())
async def hub_unsubscribe(s: CommandState, room: str) -> dict[str, Any]:
    name = s.services.hub.check_room(room)
    await s.services.hub.unsubscribe(await s.session(), name)
    return {"room": name}


@router.command("hub.dm", Arg("nick", str, max_length=256), Arg("text", str))
async def hub_dm(s: CommandState, nick: str, text: str) -> dict[str, Any]:
    # to every connection of that nick (ignoring case), on every front end; never kept in history
    event = await s.services.hub.direct(await s.session(), nick, text)
    return {"nick": event.target, "ts": event.ts}


# --- room policy: private rooms (owners), kicks, bans, closing (admins) ----------------------------

def _moderation(s: CommandState) -> Moderation:
    moderation = s.services.hub.moderation
    if moderation is None:
        raise RequestError(FORBIDDEN, "room moderation is not available on this server")
    return moderation


@router.command("hub.create", _room())
async def hub_create(s: CommandState, room: str) -> dict[str, Any]:
    """A private room owned by the logged-in account."""
    return {"room": await _moderation(s).create(await s.session(), room), "private": True}


@router.command("hub.invite", _room(), _USERNAME)
async def hub_invite(s: CommandState, room: str, username: str) -> dict[str, Any]:
    name, user, added = await _moderation(s).invite(await s.session(), room, username)
    return {"room": name, "username": user, "added": added}


@router.command("hub.remove", _room(), _USERNAME)
async def hub_remove(s: CommandState, room: str, username: str) -> dict[str, Any]:
    name, user, removed = await _moderation(s).remove(await s.session(), room, username)
    return {"room": name, "username": user, "removed": removed}


@router.command("hub.delete", _room())
async def hub_delete(s: CommandState, room: str) -> dict[str, Any]:
    return {"room": await _moderation(s).delete(await s.session(), room), "private": False}


@router.command("hub.kick", _room(), Arg("nick", str, max_length=256), Arg("reason", str, required=False, max_length=200))
async def hub_kick(s: CommandState, room: str, nick: str, reason: str = "") -> dict[str, Any]:
    name, who = await _moderation(s).kick(await s.session(), room, nick, reason)
    return {"room": name, "nick": who}


@router.command("hub.ban", _room(), _USERNAME, Arg("seconds", int, min=1, max=10 * 365 * 86400))
async def hub_ban(s: CommandState, room: str, username: str, seconds: int) -> dict[str, Any]:
    name, user, until = await _moderation(s).ban(await s.session(), room, username, seconds)
    return {"room": name, "username": user, "until": until}


@router.command("hub.unban", _room(), _USERNAME)
async def hub_unban(s: CommandState, room: str, username: str) -> dict[str, Any]:
    name, user, lifted = await _moderation(s).unban(await s.session(), room, username)
    return {"room": name, "username": user, "lifted": lifted}


@router.command("hub.close", _room())
async def hub_close(s: CommandState, room: str) -> dict[str, Any]:
    return {"room": await _moderation(s).close(await s.session(), room), "closed": True}


@router.command("hub.reopen", _room())
async def hub_reopen(s: CommandState, room: str) -> dict[str, Any]:
    name, reopened = await _moderation(s).reopen(await s.session(), room)
    return {"room": name, "reopened": reopened}
