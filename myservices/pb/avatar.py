"""The logged-in side of PB: avatars whose methods are the shared commands, and the room objects ``join`` returns.

An avatar's ``perspective_*`` methods are not written out one by one: each
name maps to a command of L{myservices.handlers.commands} (the ones the
framed and WebSocket services call), so checks, results and errors are the
same on every front end. ``join`` takes a client-side listener
(a L{pb.Referenceable} with ``remote_message``) and returns a L{RoomHandle}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.spread import pb

from myservices.errors import NOT_IN_ROOM, UNAUTHENTICATED, ErrorCode, RequestError
from myservices.handlers import commands as shared
from myservices.handlers.commands import CommandState
from myservices.handlers.pipeline import direct_json, event_body
from myservices.handlers.router import Arg, Command, Router
from myservices.hub import Direct, Event, NickChange, Presence, Subscriber
from myservices.pb.listener import BoundedListener, DirectListener, listener_commands
from myservices.pb.plain import serialize

if TYPE_CHECKING:
    from myservices.accounts import Account
    from myservices.pb.server import PBConnection

_log = Logger()

# PB-only commands: their handlers take the avatar or the room object instead of the shared state
pb_commands = Router()

_LISTENER = Arg("listener", pb.RemoteReference, type_name="a pb.Referenceable (your listener object)")


@pb_commands.command(
    "pb.join", Arg("room", str, max_length=256), _LISTENER, Arg("presence", bool, required=False), shared.SINCE,
    barrier=True,
)
async def join(
    avatar: Avatar, room: str, listener: pb.RemoteReference, presence: bool = False, since: int | None = None
) -> dict[str, Any]:
    """Join C{room}; C{listener} receives its messages (and joins, parts, nick changes with C{presence}).

    With C{since} (the last message id the client saw) the history is what it missed; the result says
    whether that is all of it (C{recovered}) and the room's C{last_id}, as on every front end.
    """
    state = avatar.state
    name = state.services.hub.check_room(room)
    previous = avatar.rooms.get(name)
    handle = RoomHandle(avatar, name, listener, presence)
    # registered before joining, so the events of the join itself reach it
    avatar.rooms[name] = handle
    try:
        result = await shared.hub_join(state, name, since)
    except BaseException:
        if avatar.rooms.get(name) is handle:
            if previous is not None:
                avatar.rooms[name] = previous
            else:
                del avatar.rooms[name]
        raise
    if previous is not None:
        previous.deactivate("replaced by a later join of the same room")
    result["object"] = handle
    return result


@pb_commands.command("room.publish", Arg("text", str))
async def room_publish(handle: RoomHandle, text: str) -> dict[str, Any]:
    handle.check_active()
    return await shared.hub_publish(handle.avatar.state, handle.room, text)


@pb_commands.command("room.who")
async def room_who(handle: RoomHandle) -> dict[str, Any]:
    handle.check_active()
    return await shared.hub_who(handle.avatar.state, handle.room)


@pb_commands.command("room.history", Arg("limit", int, required=False, min=0))
async def room_history(handle: RoomHandle, limit: int | None = None) -> dict[str, Any]:
    handle.check_active()
    return await shared.hub_history(handle.avatar.state, handle.room, limit)


@pb_commands.command("room.part", barrier=True)
async def room_part(handle: RoomHandle) -> dict[str, Any]:
    handle.check_active()
    result = await shared.hub_part(handle.avatar.state, handle.room)  # the listener gets its own part, as a last event
    handle.deactivate("parted")
    return result


def _shared(name: str) -> tuple[Command, bool]:
    command = shared.router.get(name)
    assert command is not None, name
    return command, True


# PB method name -> (command, whether its handler takes the shared CommandState rather than the avatar)
READ_ONLY_METHODS: Mapping[str, tuple[Command, bool]] = {
    "ping": _shared("ping"),
    "echo": _shared("echo"),
    "whoami": _shared("whoami"),
    "counter_get": _shared("counter.get"),
    "history": _shared("hub.history"),
    "who": _shared("hub.who"),
    "rooms": _shared("hub.rooms"),
}
USER_METHODS: Mapping[str, tuple[Command, bool]] = {
    **READ_ONLY_METHODS,
    "nick": _shared("hub.nick"),
    "counter_increment": _shared("counter.increment"),
    "kv_get": _shared("kv.get"),
    "kv_set": _shared("kv.set"),
    "kv_delete": _shared("kv.delete"),
    "kv_list": _shared("kv.list"),
    "publish": _shared("hub.publish"),
    "join": (pb_commands.commands["pb.join"], False),
    "dm": _shared("hub.dm"),
    "passwd": _shared("passwd"),
    "token": _shared("token"),
    "listen": (listener_commands.commands["pb.listen"], False),
    "disconnect": _shared("hub.disconnect"),
    "admin_stats": _shared("admin.stats"),  # the operator page's statistics, once (admins)
    # room policy: private rooms (owners), kicks, bans, closing (admins)
    **{f"room_{name}": _shared(f"hub.{name}") for name in ("create", "invite", "remove", "delete", "kick", "ban", "unban",
                                                 "close", "reopen")},
}
ROOM_METHODS: Mapping[str, Command] = {
    "publish": pb_commands.commands["room.publish"],
    "who": pb_commands.commands["room.who"],
    "history": pb_commands.commands["room.history"],
    "part": pb_commands.commands["room.part"],
}


def _method_name(message: Any) -> str:
    return message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)


class Avatar(pb.Avatar):
    """One login's perspective: routes calls to the shared commands and is the hub subscriber of its rooms."""

    methods: Mapping[str, tuple[Command, bool]] = USER_METHODS

    def __init__(self, account: Account | None, token_rooms: tuple[str, ...] | None = None) -> None:
        self.account = account
        self.token_rooms = token_rooms  # a token login's "rooms" claim
        self.connection: PBConnection | None = None
        self.rooms: dict[str, RoomHandle] = {}
        self._state: CommandState | None = None
        self.direct_listener: DirectListener | None = None  # given with listen (see myservices.pb.listener)

    @property
    def state(self) -> CommandState:
        assert self._state is not None, "attach() first"
        return self._state

    async def attach(self, connection: PBConnection) -> None:
        """Bind to the connection that logged in; logged-in users take their username as nick."""
        self.connection = connection
        self._state = CommandState(connection.factory.services, Subscriber(self.deliver, self.close), connection.address)
        self._state.account = self.account
        session = await self._state.session()
        if self.account is not None:
            await self._state.services.hub.login(session, self.account.username, self.token_rooms)

    def logout(self) -> None:
        """The connection closed: every membership ends (other members see PART)."""
        for handle in list(self.rooms.values()):
            handle.deactivate("the connection closed")
        if self._state is not None:
            self._state.close()

    def perspectiveMessageReceived(self, broker: pb.Broker, message: Any, args: Any, kw: Any) -> Any:
        conn = self.connection
        assert conn is not None
        name = _method_name(message)
        entry = self.methods.get(name)
        if entry is None:
            if name in USER_METHODS:
                error = RequestError(UNAUTHENTICATED, f"{name} needs a login with an account (this session is anonymous)")
                return broker.serialize(conn.refuse(USER_METHODS[name][0].name, error), self)
            return broker.serialize(conn.unknown(name, self.methods), self)
        command, takes_state = entry
        return serialize(broker, conn.call(name, command, self.state if takes_state else self, args, kw), self)

    # --- the hub's Subscriber interface ---------------------------------------------------

    def deliver(self, event: Event) -> None:
        if isinstance(event, Direct):
            if self.direct_listener is not None:
                self.direct_listener.send("dm", direct_json(event))
            return
        kind, body = event_body(event)
        if isinstance(event, Presence) and event.kind == "kick":  # removed from the room: told, then the handle ends
            handle = self.rooms.get(event.room)
            if handle is not None:
                handle.send(kind, body)
                handle.deactivate(event.reason)
            return
        if isinstance(event, NickChange):
            handles = [h for h in self.rooms.values() if h.presence and h.room in event.rooms]
        else:
            handle = self.rooms.get(body["room"])
            handles = [handle] if handle is not None and (kind == "message" or handle.presence) else []
        for handle in handles:
            handle.send(kind, body)

    def close(self, error: ErrorCode) -> None:
        if self.connection is not None:
            self.connection.close(error)


class UserAvatar(Avatar):
    """The perspective of a login with an account: every method."""


class AnonymousAvatar(Avatar):
    """The perspective of an anonymous login: read-only methods, no account, no rooms."""

    methods = READ_ONLY_METHODS

    def __init__(self) -> None:
        super().__init__(None)


class RoomHandle(pb.Referenceable, BoundedListener):
    """What ``join`` returns: the membership of one room, with ``publish``, ``who``, ``history`` and ``part``.

    Sends the room's events to the client's listener with
    ``listener.callRemote("message", {...})``. A listener that raises, or
    leaves more than C{max_unanswered} events unanswered, is dropped: the
    membership ends as if it had parted, and the room object answers
    NOT_IN_ROOM from then on. Other members and rooms are not affected.
    """

    def __init__(self, avatar: Avatar, room: str, listener: pb.RemoteReference, presence: bool) -> None:
        assert avatar.connection is not None
        BoundedListener.__init__(self, avatar.connection, listener)
        self.avatar = avatar
        self.room = room
        self.presence = presence
        self.ended = ""

    def remoteMessageReceived(self, broker: pb.Broker, message: Any, args: Any, kw: Any) -> Any:
        conn = self.connection
        name = _method_name(message)
        command = ROOM_METHODS.get(name)
        if command is None:
            return broker.serialize(conn.unknown(name, ROOM_METHODS))
        return serialize(broker, conn.call(name, command, self, args, kw))

    def check_active(self) -> None:
        if not self.active:
            raise RequestError(NOT_IN_ROOM, f'not in room "{self.room}" any more: {self.ended}')

    def deactivate(self, why: str) -> None:
        """This object no longer stands for a membership (the hub is told by the caller, if needed)."""
        self.active = False
        self.ended = why
        if self.avatar.rooms.get(self.room) is self:
            del self.avatar.rooms[self.room]

    def dropped(self, detail: str) -> None:
        """The listener was dropped: leave the room; the client learns it on its next call."""
        self.deactivate(f"the listener was dropped: {detail}")
        _log.info(
            "pb: dropped the listener of {peer} in {room}: {detail}", peer=self.connection.peer, room=self.room,
            detail=detail,
        )
        Deferred.fromCoroutine(self._part()).addErrback(
            lambda f: _log.failure("pb: leaving {room} after dropping its listener failed", f, room=self.room)
        )

    async def _part(self) -> None:
        state = self.avatar.state
        try:
            await state.services.hub.part(await state.session(), self.room)
        except RequestError:
            pass  # already out (the join was replaced, or the session closed)
