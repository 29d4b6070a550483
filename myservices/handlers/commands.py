"""The shared commands: thin adapters from JSON arguments to the shared hub, accounts, key-value store and
counter. Each returns the reply's result object. The framed, WebSocket and PB front ends call them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime

from myservices.errors import RequestError
from myservices.handlers.router import ANY, Arg, Router
from myservices.hub import Hub, Message, Session, Subscriber

if TYPE_CHECKING:
    from myservices.accounts import Account, AccountStore
    from myservices.counter import DurableCounter
    from myservices.kv import KeyValueStore


@dataclass(frozen=True)
class SharedServices:
    """What the commands work on: one of each per daemon, shared with the other front ends."""

    hub: Hub
    accounts: AccountStore
    kv: KeyValueStore
    counter: DurableCounter
    clock: IReactorTime


class CommandState:
    """One connection's state: who is logged in and its hub session (opened on first use)."""

    def __init__(self, services: SharedServices, subscriber: Subscriber) -> None:
        self.services = services
        self._subscriber = subscriber
        self.account: Account | None = None
        self._session: Session | None = None

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = self.services.hub.open_session(self._subscriber)
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self.services.hub.close_session(self._session)

    @property
    def account_id(self) -> int:
        assert self.account is not None  # the router checks login first
        return self.account.id


def message_json(m: Message) -> dict[str, Any]:
    return {"room": m.room, "id": m.id, "ts": m.ts, "nick": m.nick, "text": m.text}


router = Router()


def _room(name: str = "room") -> Arg:
    return Arg(name, str, max_length=256)


# --- basics -------------------------------------------------------------------


@router.command("ping")
def ping(s: CommandState) -> dict[str, Any]:
    return {"pong": True, "time": s.services.clock.seconds()}


@router.command("echo", Arg("data", ANY))
def echo(s: CommandState, data: Any) -> dict[str, Any]:
    return {"data": data}


# --- accounts -------------------------------------------------------------------

_credentials = (Arg("username", str, max_length=64), Arg("password", str, max_length=4096))


@router.command("register", *_credentials)
async def register(s: CommandState, username: str, password: str) -> dict[str, Any]:
    account = await s.services.accounts.register(username, password)
    return {"username": account.username}


@router.command("login", *_credentials, barrier=True)
async def login(s: CommandState, username: str, password: str) -> dict[str, Any]:
    s.account = await s.services.accounts.authenticate(username, password)
    try:
        # the username is a valid nick; keep the current one if someone else holds it
        s.services.hub.set_nick(s.session, s.account.username)
    except RequestError:
        pass
    return {"username": s.account.username, "nick": s.session.nick}


@router.command("logout", barrier=True)
def logout(s: CommandState) -> dict[str, Any]:
    s.account = None
    return {}


@router.command("whoami")
def whoami(s: CommandState) -> dict[str, Any]:
    return {"username": s.account.username if s.account else None, "nick": s.session.nick}


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
def hub_nick(s: CommandState, nick: str) -> dict[str, Any]:
    old = s.services.hub.set_nick(s.session, nick)
    return {"nick": nick, "old": old}


@router.command("hub.join", _room(), barrier=True)
async def hub_join(s: CommandState, room: str) -> dict[str, Any]:
    hub = s.services.hub
    name = hub.check_room(room)
    history = await hub.join(s.session, name)
    return {"room": name, "history": [message_json(m) for m in history], "members": hub.who(name)}


@router.command("hub.part", _room())
def hub_part(s: CommandState, room: str) -> dict[str, Any]:
    name = s.services.hub.check_room(room)
    s.services.hub.part(s.session, name)
    return {"room": name}


@router.command("hub.publish", _room(), Arg("text", str))
async def hub_publish(s: CommandState, room: str, text: str) -> dict[str, Any]:
    # topic-style: publishing does not require joining (members and subscribers receive it)
    message = await s.services.hub.publish(s.session, room, text, as_member=False)
    return {"room": message.room, "id": message.id}


@router.command("hub.history", _room(), Arg("limit", int, required=False, min=0))
async def hub_history(s: CommandState, room: str, limit: int | None = None) -> dict[str, Any]:
    name = s.services.hub.check_room(room)
    messages = await s.services.hub.recent(name, limit)
    return {"room": name, "messages": [message_json(m) for m in messages]}


@router.command("hub.who", _room())
def hub_who(s: CommandState, room: str) -> dict[str, Any]:
    name = s.services.hub.check_room(room)
    return {"room": name, "members": s.services.hub.who(name)}


@router.command("hub.rooms")
def hub_rooms(s: CommandState) -> dict[str, Any]:
    rooms = s.services.hub.room_list()
    return {"rooms": [{"name": n, "members": m, "subscribers": sub} for n, m, sub in rooms]}


@router.command("hub.subscribe", _room(), barrier=True)
async def hub_subscribe(s: CommandState, room: str) -> dict[str, Any]:
    name = s.services.hub.check_room(room)
    await s.services.hub.subscribe(s.session, name)
    return {"room": name}


@router.command("hub.unsubscribe", _room())
def hub_unsubscribe(s: CommandState, room: str) -> dict[str, Any]:
    name = s.services.hub.check_room(room)
    s.services.hub.unsubscribe(s.session, name)
    return {"room": name}
