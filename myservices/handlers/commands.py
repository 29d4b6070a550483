"""The shared commands: thin adapters from JSON arguments to the shared hub, accounts, key-value store and
counter. Each returns the reply's result object. The framed, WebSocket and PB front ends call them.

The front ends take L{router} from here: importing this module registers every command module on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import myservices.handlers.admin_commands  # noqa: F401  # registers the operator page's admin.* commands
import myservices.handlers.moderation_commands  # noqa: F401  # registers the room-policy commands
from myservices.errors import BAD_ARGUMENTS, RequestError
from myservices.handlers.pipeline import message_json
from myservices.handlers.router import ANY, Arg
from myservices.handlers.state import USERNAME, CommandState, SharedServices, room_arg, router
from myservices.hub import Joined
from myservices.hub.rules import MAX_MESSAGE_ID

if TYPE_CHECKING:
    from myservices.logins import LoggedIn

__all__ = ["SINCE", "CommandState", "SharedServices", "joined_json", "logged_in_json", "router"]


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


@router.command("register", USERNAME, _PASSWORD)
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


@router.command("hub.join", room_arg(), SINCE, barrier=True)
async def hub_join(s: CommandState, room: str, since: int | None = None) -> dict[str, Any]:
    joined = await s.services.hub.join(await s.session(), room, since)
    return {**joined_json(joined), "members": joined.members}


@router.command("hub.part", room_arg())
async def hub_part(s: CommandState, room: str) -> dict[str, Any]:
    name = s.services.hub.check_room(room)
    await s.services.hub.part(await s.session(), name)
    return {"room": name}


@router.command("hub.publish", room_arg(), Arg("text", str))
async def hub_publish(s: CommandState, room: str, text: str) -> dict[str, Any]:
    # topic-style: publishing does not require joining (members and subscribers receive it)
    message = await s.services.hub.publish(await s.session(), room, text, as_member=False)
    return {"room": message.room, "id": message.id}


@router.command("hub.history", room_arg(), Arg("limit", int, required=False, min=0))
async def hub_history(s: CommandState, room: str, limit: int | None = None) -> dict[str, Any]:
    name = s.services.hub.check_room(room)
    messages = await s.services.hub.history(name, limit, by=await s.session())
    return {"room": name, "messages": [message_json(m) for m in messages]}


@router.command("hub.who", room_arg())
async def hub_who(s: CommandState, room: str) -> dict[str, Any]:
    name = s.services.hub.check_room(room)
    return {"room": name, "members": await s.services.hub.who(name, by=await s.session())}


@router.command("hub.rooms")
async def hub_rooms(s: CommandState) -> dict[str, Any]:
    rooms = await s.services.hub.rooms(by=await s.session())
    return {"rooms": [
        {"name": r.name, "members": r.members, "subscribers": r.subscribers, "last_id": r.last_id} for r in rooms
    ]}


@router.command("hub.subscribe", room_arg(), SINCE, barrier=True)
async def hub_subscribe(s: CommandState, room: str, since: int | None = None) -> dict[str, Any]:
    # topic-style: history only when asked for (what was missed since an id)
    joined = await s.services.hub.subscribe(await s.session(), room, since)
    return joined_json(joined, history=since is not None)


@router.command("hub.unsubscribe", room_arg())
async def hub_unsubscribe(s: CommandState, room: str) -> dict[str, Any]:
    name = s.services.hub.check_room(room)
    await s.services.hub.unsubscribe(await s.session(), name)
    return {"room": name}


@router.command("hub.dm", Arg("nick", str, max_length=256), Arg("text", str))
async def hub_dm(s: CommandState, nick: str, text: str) -> dict[str, Any]:
    # to every connection of that nick (ignoring case), on every front end; never kept in history
    event = await s.services.hub.direct(await s.session(), nick, text)
    return {"nick": event.target, "ts": event.ts}
