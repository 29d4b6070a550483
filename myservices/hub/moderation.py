"""Owners and admins at work: private rooms (create, invite, remove), kicks, bans, closing and reopening rooms.

Every front end calls these through the shared commands (and the line chat's
``/create``, ``/invite``, ...), so the answers and error codes are the same
everywhere: UNAUTHENTICATED for an anonymous session where an account is
needed, FORBIDDEN for a session that is neither the room's owner nor an admin.

Who may do what:

- any logged-in account (if C{[rooms] private_rooms}): ``create`` a private
  room, when the room is not in use and the rules let it join;
- the owner of a private room, or an admin: ``invite``, ``remove`` (the
  removed account's connections leave the room at once), ``kick``, ``delete``
  (the room becomes public again);
- admins only: ``ban`` (a kick, then joins refused until the ban ends),
  ``unban``, ``close`` (everyone leaves; only admins may use it until it is
  reopened) and ``reopen``.

A kick removes the connections with that nick (members and subscribers); they
may come back unless banned. Bans name accounts: an anonymous user can take
another nick, so only a rule requiring accounts makes a ban stick (a kick
works for anyone).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger

from myservices.accounts import check_username
from myservices.errors import BAD_ARGUMENTS, FORBIDDEN, NOT_FOUND, UNAUTHENTICATED, RequestError
from myservices.hub.events import Kick
from myservices.hub.policy import RoomPolicies
from myservices.hub.policy_store import RoomState
from myservices.hub.rooms import Session

if TYPE_CHECKING:
    from myservices.hub.core import Hub


class Moderation:
    """The hub's owner and admin operations, over the hub and its L{RoomPolicies}."""

    log = Logger()

    def __init__(self, hub: Hub, policies: RoomPolicies) -> None:
        self.hub = hub
        self.policies = policies

    # --- who may ---------------------------------------------------------------------------

    def _account(self, session: Session, what: str) -> str:
        if session.account is None:
            raise RequestError(UNAUTHENTICATED, f"log in with an account to {what}")
        return session.account

    def _admin(self, session: Session, what: str) -> str:
        if not self.policies.is_admin(session):
            raise RequestError(FORBIDDEN, f"only admins may {what}")
        return session.account or session.nick

    async def _owner_or_admin(self, session: Session, room: str, what: str) -> RoomState:
        state = await self.policies.state(room)
        if self.policies.is_admin(session):
            return state
        if not state.private:
            raise RequestError(FORBIDDEN, f'only admins may {what} in room "{room}"')
        if session.account != state.owner:
            raise RequestError(FORBIDDEN, f'only the owner of "{room}" or an admin may {what}')
        return state

    async def _private(self, session: Session, room: str, what: str) -> RoomState:
        self._account(session, what)
        state = await self._owner_or_admin(session, room, what)
        if not state.private:
            raise RequestError(NOT_FOUND, f'room "{room}" is not a private room')
        return state

    def _room(self, session: Session, name: str) -> str:
        """The canonical room name, if the session's login may use that room at all (a token's rooms)."""
        room = self.hub.check_room(name)
        if session.token_rooms is not None and room not in session.token_rooms:
            raise RequestError(FORBIDDEN, f'this login is limited to other rooms than "{room}"')
        return room

    @staticmethod
    def _username(username: str) -> str:
        return check_username(username)

    # --- private rooms ----------------------------------------------------------------------

    async def create(self, session: Session, name: str) -> str:
        """Create the private room C{name}, owned by the session's account; its canonical name."""
        room = self._room(session, name)
        owner = self._account(session, "create a private room")
        if not (self.policies.config.private_rooms or self.policies.is_admin(session)):
            raise RequestError(FORBIDDEN, "private rooms are not enabled on this server")
        await self.hub.check_allowed(session, room, "join")
        if any(info.name == room for info in await self.hub.engine.rooms()):
            raise RequestError(FORBIDDEN, f'room "{room}" is in use; a private room needs a name nobody uses')
        if await self.hub.engine.history(room, 1):
            # a public room with a past (lobby after a restart) is not anyone's to take over
            raise RequestError(FORBIDDEN, f'room "{room}" has history; a private room needs a new name')
        await self.policies.create(room, owner)
        self.log.info("room {room} created private by {owner}", room=room, owner=owner)
        return room

    async def invite(self, session: Session, name: str, username: str) -> tuple[str, str, bool]:
        """Make account C{username} a member of private room C{name}: (room, username, whether it is new)."""
        room = self._room(session, name)
        user = self._username(username)
        state = await self._private(session, room, "invite")
        if user == state.owner:
            return room, user, False
        return room, user, await self.policies.invite(room, user)

    async def remove(self, session: Session, name: str, username: str) -> tuple[str, str, bool]:
        """End C{username}'s membership of private room C{name}; its connections there leave it."""
        room = self._room(session, name)
        user = self._username(username)
        state = await self._private(session, room, "remove members")
        if user == state.owner:
            raise RequestError(FORBIDDEN, "the owner cannot be removed from their room")
        removed = await self.policies.remove(room, user)
        await self.hub.engine.kick(Kick(room=room, accounts=frozenset({user}), reason="removed from the room"))
        return room, user, removed

    async def delete(self, session: Session, name: str) -> str:
        """Make private room C{name} public again (owner or admin)."""
        room = self._room(session, name)
        await self._private(session, room, "delete the room")
        await self.policies.delete(room)
        return room

    # --- kicks, bans, closing --------------------------------------------------------------

    async def kick(self, session: Session, name: str, nick: str, reason: str = "") -> tuple[str, str]:
        """Remove the connections with C{nick} from C{name} (admin, or owner of the private room)."""
        room = self._room(session, name)
        nick = self.hub.check_nick(nick)
        await self._owner_or_admin(session, room, "kick")
        why = f"kicked by {session.nick}" + (f": {reason}" if reason else "")
        await self.hub.engine.kick(Kick(room=room, nicks=frozenset({nick.lower()}), reason=why))
        self.log.info("{by} kicked {nick} from {room}", by=session.nick, nick=nick, room=room)
        return room, nick

    async def disconnect(self, session: Session, nick: str, reason: str = "") -> tuple[str, bool]:
        """Close every connection named C{nick} on every process (admins); (nick, whether anyone had it)."""
        self._admin(session, "disconnect users")
        if session.token_rooms is not None:
            raise RequestError(FORBIDDEN, "a login limited to some rooms may not disconnect users")
        nick = self.hub.check_nick(nick)
        why = f"disconnected by {session.nick}" + (f": {reason}" if reason else "")
        online = await self.hub.disconnect(nick, why)
        self.log.info("{by} disconnected {nick}", by=session.nick, nick=nick)
        return nick, online

    async def ban(self, session: Session, name: str, username: str, seconds: float) -> tuple[str, str, float]:
        """Ban account C{username} from C{name} for C{seconds} (admins): it leaves now; (room, user, until)."""
        room = self._room(session, name)
        user = self._username(username)
        by = self._admin(session, "ban")
        if not 0 < seconds <= self.policies.config.max_ban_duration:
            raise RequestError(BAD_ARGUMENTS, f"a ban lasts 1 to {self.policies.config.max_ban_duration:g} seconds")
        until = await self.policies.ban(room, user, seconds, by)
        reason = f"banned by {session.nick} for {seconds:g} seconds"
        await self.hub.engine.kick(Kick(room=room, accounts=frozenset({user}), reason=reason))
        self.log.info("{by} banned {user} from {room} for {seconds} s", by=by, user=user, room=room, seconds=seconds)
        return room, user, until

    async def unban(self, session: Session, name: str, username: str) -> tuple[str, str, bool]:
        """Lift the ban of C{username} in C{name} (admins)."""
        room = self._room(session, name)
        user = self._username(username)
        self._admin(session, "unban")
        return room, user, await self.policies.unban(room, user)

    async def close(self, session: Session, name: str) -> str:
        """Close C{name} (admins): everyone leaves, and only admins may use it until it is reopened."""
        room = self._room(session, name)
        by = self._admin(session, "close rooms")
        await self.policies.close(room, by)
        await self.hub.engine.kick(Kick(room=room, everyone=True, reason=f"the room was closed by {session.nick}"))
        self.log.info("{by} closed {room}", by=by, room=room)
        return room

    async def reopen(self, session: Session, name: str) -> tuple[str, bool]:
        """Reopen a closed room (admins)."""
        room = self._room(session, name)
        self._admin(session, "reopen rooms")
        return room, await self.policies.reopen(room)
