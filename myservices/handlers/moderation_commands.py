"""The shared room-policy commands: private rooms (owners); kicks, bans, closing and disconnecting (admins)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from myservices.errors import FORBIDDEN, RequestError
from myservices.handlers.router import Arg
from myservices.handlers.state import USERNAME, CommandState, room_arg, router

if TYPE_CHECKING:
    from myservices.hub.moderation import Moderation


def _moderation(s: CommandState) -> Moderation:
    moderation = s.services.hub.moderation
    if moderation is None:
        raise RequestError(FORBIDDEN, "room moderation is not available on this server")
    return moderation


@router.command("hub.create", room_arg())
async def hub_create(s: CommandState, room: str) -> dict[str, Any]:
    """A private room owned by the logged-in account."""
    return {"room": await _moderation(s).create(await s.session(), room), "private": True}


@router.command("hub.invite", room_arg(), USERNAME)
async def hub_invite(s: CommandState, room: str, username: str) -> dict[str, Any]:
    name, user, added = await _moderation(s).invite(await s.session(), room, username)
    return {"room": name, "username": user, "added": added}


@router.command("hub.remove", room_arg(), USERNAME)
async def hub_remove(s: CommandState, room: str, username: str) -> dict[str, Any]:
    name, user, removed = await _moderation(s).remove(await s.session(), room, username)
    return {"room": name, "username": user, "removed": removed}


@router.command("hub.delete", room_arg())
async def hub_delete(s: CommandState, room: str) -> dict[str, Any]:
    return {"room": await _moderation(s).delete(await s.session(), room), "private": False}


@router.command("hub.kick", room_arg(), Arg("nick", str, max_length=256), Arg("reason", str, required=False, max_length=200))
async def hub_kick(s: CommandState, room: str, nick: str, reason: str = "") -> dict[str, Any]:
    name, who = await _moderation(s).kick(await s.session(), room, nick, reason)
    return {"room": name, "nick": who}


@router.command("hub.ban", room_arg(), USERNAME, Arg("seconds", int, min=1, max=10 * 365 * 86400))
async def hub_ban(s: CommandState, room: str, username: str, seconds: int) -> dict[str, Any]:
    name, user, until = await _moderation(s).ban(await s.session(), room, username, seconds)
    return {"room": name, "username": user, "until": until}


@router.command("hub.unban", room_arg(), USERNAME)
async def hub_unban(s: CommandState, room: str, username: str) -> dict[str, Any]:
    name, user, lifted = await _moderation(s).unban(await s.session(), room, username)
    return {"room": name, "username": user, "lifted": lifted}


@router.command("hub.close", room_arg())
async def hub_close(s: CommandState, room: str) -> dict[str, Any]:
    return {"room": await _moderation(s).close(await s.session(), room), "closed": True}


@router.command("hub.reopen", room_arg())
async def hub_reopen(s: CommandState, room: str) -> dict[str, Any]:
    name, reopened = await _moderation(s).reopen(await s.session(), room)
    return {"room": name, "reopened": reopened}


@router.command("hub.disconnect", Arg("nick", str, max_length=256), Arg("reason", str, required=False, max_length=200))
async def hub_disconnect(s: CommandState, nick: str, reason: str = "") -> dict[str, Any]:
    """Close every connection named C{nick}, on every front end and process (admins)."""
    name, online = await _moderation(s).disconnect(await s.session(), nick, reason)
    return {"nick": name, "disconnected": online}
