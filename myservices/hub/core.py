"""The hub: rooms and topics, nicks, presence, publish and history, shared by every front end.

Front ends register a L{Subscriber} (two callables: deliver an event, close
with an error) for each connection and call the hub's operations, which are
all coroutines. The hub checks the rules and the per-connection limits and
delivers events to its own connections; what every hub of the daemon (or of
many processes) must agree on lives in the engine (L{HubEngine}).

A room has members (with presence: JOIN/PART events, /who) and subscribers
(topic-style: they receive publications, nobody sees them). Rooms and topics
share one namespace, so a subscriber of "news" receives what members of the
room "news" say.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

import myservices.hub.rules as rules
from myservices.errors import (
    FORBIDDEN,
    INTERNAL,
    NOT_IN_ROOM,
    RATE_LIMITED,
    TOO_MANY_ROOMS,
    RequestError,
)
from myservices.hub.config import HubConfig
from myservices.hub.direct import DirectMessages
from myservices.hub.events import Disconnect, Event, Kick, Logout, Message, NickChange, Presence, UnencodableEvent
from myservices.hub.identities import Identities
from myservices.hub.interfaces import HubEngine, Joined, OpenPolicy, RoomInfo, RoomPolicy, Subscriber
from myservices.hub.rooms import LocalRoom, Session
from myservices.hub.server_side import ServerSide
from myservices.metrics import Metrics
from myservices.ratelimit import TokenBucket

if TYPE_CHECKING:
    from myservices.hub.moderation import Moderation


class Hub(Identities, DirectMessages, ServerSide):
    """The front ends' view of the hub: one per process, attached to an engine as node C{node_id}.

    Message ids increase per room and never repeat; the engine assigns them.
    With the memory engine a published message is committed to the database
    first, then delivered to every member in id order, then acknowledged:
    what anyone saw or was acknowledged survives a crash.
    """

    log = Logger()

    def __init__(
        self,
        config: HubConfig,
        clock: IReactorTime,
        engine: HubEngine,
        metrics: Metrics | None = None,
        node_id: str = "local",
        is_account: Callable[[str], Awaitable[bool]] | None = None,
        policy: RoomPolicy | None = None,
    ) -> None:
        self.config = config
        # whether a nick is a registered username (reserved for its account); None: no accounts
        self.is_account = is_account
        self.clock = clock
        self.engine = engine
        self.metrics = metrics if metrics is not None else Metrics()
        self.node_id = node_id
        self.sessions: dict[str, Session] = {}  # by member id
        self.local: dict[str, LocalRoom] = {}  # this hub's connections per room
        self._member_numbers = itertools.count(1)
        self.policy: RoomPolicy = policy if policy is not None else OpenPolicy()
        self.moderation: Moderation | None = None  # private rooms, kicks, bans (set by the wiring)
        engine.attach(self)

    # --- the rules: checks, not operations --------------------------------------------

    def check_nick(self, nick: str) -> str:
        return rules.check_nick(self.config, nick)

    def check_room(self, name: str) -> str:
        return rules.check_room(self.config, name)

    def check_text(self, text: str) -> str:
        return rules.check_text(self.config, text)

    async def check_allowed(self, session: Session, name: str, action: str) -> None:
        """UNAUTHENTICATED if the service keeps guests out of this, FORBIDDEN unless C{session} may do C{action}
        in room C{name} (token rooms, then the policy)."""
        self._may(session, write=action == "publish")
        if session.token_rooms is not None and name not in session.token_rooms:
            raise RequestError(FORBIDDEN, f'this login is limited to other rooms than "{name}"')
        await self.policy.check(session, name, action)

    # --- sessions and nicks -----------------------------------------------------------

    async def open_session(self, subscriber: Subscriber, anonymous: str = "chat") -> Session:
        """Attach a connection; it gets a free guest nick until it picks one or logs in.

        C{anonymous} is what the connection may do until it logs in: "chat"
        (everything), "read" (join, subscribe and read, but not publish, send
        direct messages or pick a nick) or "none" (nothing but log in).
        """
        member_id = f"{self.node_id}/{next(self._member_numbers)}"
        nick = await self._guest_nick(member_id)
        c = self.config
        session = Session(
            member_id, subscriber, nick, TokenBucket(c.publish_rate, c.publish_burst, self.clock),
            TokenBucket(c.churn_rate, c.churn_burst, self.clock), anonymous,
        )
        self.sessions[member_id] = session
        self.metrics.hub_sessions.set(len(self.sessions))
        return session

    async def close_session(self, session: Session) -> None:
        """Detach a connection: it leaves every room (members see PART) and frees its nick."""
        if session.closed:
            return
        session.closed = True
        for name in list(session.rooms):
            await self._leave(session, name)
        for name in list(session.topics):
            await self._unsubscribe(session, name)
        self.sessions.pop(session.member_id, None)
        self.metrics.hub_sessions.set(len(self.sessions))
        await self._release(session)

    def close_session_later(self, session: Session) -> None:
        """L{close_session} in the background, for a connection that is gone; a failure is logged."""
        Deferred.fromCoroutine(self.close_session(session)).addErrback(
            lambda f: self.log.failure("detaching {session} failed", f, session=session)
        )

    # --- rooms and topics -----------------------------------------------------------------

    def _check_room_budget(self, session: Session, name: str) -> None:
        if name in session.rooms or name in session.topics:
            return
        if len(session.rooms.keys() | session.topics.keys()) >= self.config.max_rooms_per_session:
            raise RequestError(TOO_MANY_ROOMS, f"at most {self.config.max_rooms_per_session} rooms and topics")

    def _local_room(self, name: str) -> LocalRoom:
        room = self.local.get(name)
        if room is None:
            room = self.local[name] = LocalRoom()
        return room

    def _forget_if_empty(self, name: str) -> None:
        room = self.local.get(name)
        if room is not None and room.empty:
            del self.local[name]

    async def join(self, session: Session, name: str, since: int | None = None) -> Joined:
        """Join room C{name} with presence; its recent history and members, as of the moment of joining.

        Every member, the joiner included, gets a JOIN event; later messages
        arrive live, none twice and none missed. With C{since} (the last id
        the client saw), the history is what it missed (see L{Joined}).
        """
        name = self.check_room(name)
        self._may(session, write=False)
        self._check_room_budget(session, name)
        await self.check_allowed(session, name, "join")
        if name not in session.rooms:
            self._churn(session)

        def attach() -> None:
            self._local_room(name).members[session] = None
            session.rooms[name] = None

        joined = await self.engine.join(
            self.node_id, session.member_id, name, session.nick, attach, since, account=session.account is not None
        )
        if session.closed and name in session.rooms:
            await self._leave(session, name)  # closed while the room was loading
        await self._recheck(session, name, "join")
        return await self._readable(session, joined)

    async def part(self, session: Session, name: str) -> None:
        """Leave room C{name}; the remaining members and the leaver get a PART event."""
        name = self.check_room(name)
        if name not in session.rooms:
            raise RequestError(NOT_IN_ROOM, f'not in room "{name}"')
        self._churn(session)
        await self._leave(session, name)

    async def _leave(self, session: Session, name: str) -> None:
        session.rooms.pop(name, None)
        try:
            await self.engine.part(session.member_id, name)  # the leaver is still local: it gets its PART
        finally:
            room = self.local.get(name)
            if room is not None:
                room.members.pop(session, None)
                self._forget_if_empty(name)

    async def subscribe(self, session: Session, name: str, since: int | None = None) -> Joined:
        """Receive what is published to C{name}, without presence; with C{since}, what was missed after it."""
        name = self.check_room(name)
        self._may(session, write=False)
        self._check_room_budget(session, name)
        await self.check_allowed(session, name, "subscribe")

        def attach() -> None:
            self._local_room(name).subscribers[session] = None
            session.topics[name] = None

        joined = await self.engine.subscribe(self.node_id, session.member_id, name, attach, since)
        if session.closed and name in session.topics:
            await self._unsubscribe(session, name)
        await self._recheck(session, name, "subscribe")
        return await self._readable(session, joined)

    async def _readable(self, session: Session, joined: Joined) -> Joined:
        """C{joined} without its history and members if C{session} may join the room but not read it."""
        try:
            await self.check_allowed(session, joined.room, "read")
        except RequestError:
            return dataclasses.replace(joined, history=[], members=[])
        return joined

    async def _recheck(self, session: Session, name: str, action: str) -> None:
        # a ban, removal or close while the room was loading found nobody to kick: ask again now it is attached
        try:
            await self.check_allowed(session, name, action)
        except Exception:
            await self._remove(session, name)
            raise

    async def unsubscribe(self, session: Session, name: str) -> None:
        name = self.check_room(name)
        if name not in session.topics:
            raise RequestError(NOT_IN_ROOM, f'not subscribed to "{name}"')
        await self._unsubscribe(session, name)

    async def _unsubscribe(self, session: Session, name: str) -> None:
        session.topics.pop(name, None)
        room = self.local.get(name)
        if room is not None:
            room.subscribers.pop(session, None)
            self._forget_if_empty(name)
        await self.engine.unsubscribe(session.member_id, name)

    async def rooms(self, by: Session | None = None) -> list[RoomInfo]:
        """Every room or topic in use, sorted by name; with C{by}, only those it may see listed."""
        infos = await self.engine.rooms()
        if by is None:
            return infos
        self._may(by, write=False)
        names = [i.name for i in infos]
        if by.token_rooms is not None:
            names = [n for n in names if n in by.token_rooms]
        visible = await self.policy.listed(by, names)
        return [i for i in infos if i.name in visible]

    async def who(self, name: str, by: Session | None = None) -> list[str]:
        """Nicks of the members (not subscribers) of C{name}, in joining order; C{by} must be allowed to read it."""
        name = self.check_room(name)
        if by is not None:
            await self.check_allowed(by, name, "read")
        return await self.engine.members(name)

    async def history(self, name: str, limit: int | None = None, by: Session | None = None) -> list[Message]:
        """The last C{limit} messages of C{name} (oldest first; at most C{history_size}); C{by} must be allowed to read."""
        name = self.check_room(name)
        if by is not None:
            await self.check_allowed(by, name, "read")
        limit = self.config.history_size if limit is None else min(limit, self.config.history_size)
        return await self.engine.history(name, limit)

    # --- publishing --------------------------------------------------------------------

    async def publish(self, session: Session, name: str, text: str, *, as_member: bool = True) -> Message:
        """Publish C{text} to room C{name}; the message, once stored and delivered.

        With C{as_member} (chat), the sender must have joined the room; without
        (topic-style /pub), anyone may publish. Each connection is rate limited.
        """
        name = self.check_room(name)
        self.check_text(text)
        if as_member and name not in session.rooms:
            raise RequestError(NOT_IN_ROOM, f'join "{name}" before sending to it')
        self._may(session, write=True)
        if not session.bucket.allow():
            raise RequestError(
                RATE_LIMITED, f"at most {self.config.publish_rate:g} messages per second",
                retry_after=session.bucket.wait(),
            )
        await self.check_allowed(session, name, "publish")
        return await self.engine.publish(name, session.nick, text, session.account is not None)

    # --- from the engine: delivery to this hub's connections --------------------------------

    def receive(self, room: str, event: Event) -> None:
        if isinstance(event, Kick):
            self._kicked(event)
            return
        if isinstance(event, Logout):
            self.logged_out(event)
            return
        if isinstance(event, Disconnect):
            self.disconnected(event)
            return
        local = self.local.get(room)
        if local is not None:
            self._send(local.members if isinstance(event, Presence) else local.audience(), event)

    def receive_nick(self, member_id: str, event: NickChange) -> None:
        audience: dict[Session, None] = {}
        session = self.sessions.get(member_id)
        if session is not None:
            audience[session] = None
        for name in event.rooms:
            local = self.local.get(name)
            if local is not None:
                audience.update(local.members)
        self._send(audience, event)

    def _kicked(self, kick: Kick) -> None:
        """Remove the connections C{kick} names from its room; each is told why, then everyone sees its PART."""
        local = self.local.get(kick.room)
        if local is None:
            return
        for session in [*local.members, *(s for s in local.subscribers if s not in local.members)]:
            named = session.nick.lower() in kick.nicks or session.account in kick.accounts
            if not (kick.everyone or named):
                continue
            self._send([session], Presence(kind="kick", room=kick.room, nick=session.nick, reason=kick.reason))
            Deferred.fromCoroutine(self._remove(session, kick.room)).addErrback(self._remove_failed, session, kick.room)

    async def _remove(self, session: Session, name: str) -> None:
        if name in session.rooms:
            await self._leave(session, name)
        if name in session.topics:
            await self._unsubscribe(session, name)

    def _remove_failed(self, failure: Failure, session: Session, room: str) -> None:
        self.log.failure("removing {session} from {room} failed", failure, session=session, room=room)

    def _send(self, sessions: Iterable[Session], event: Event) -> None:
        delivered = 0
        for session in list(sessions):
            try:
                session.subscriber.deliver(event)
                delivered += 1
            except UnencodableEvent as e:
                # the event's fault, not the connection's: it is skipped, the connection stays
                if e.first:
                    self.metrics.hub_undeliverable.inc()
                    self.log.failure("hub: cannot encode {event!r}; not delivered", Failure(e.__cause__), event=event)
            except Exception:
                # one broken connection never stops delivery to the others
                self.log.failure("delivering to {session} failed; closing it", session=session)
                self._drop(session)
        self.metrics.hub_deliveries.inc(delivered)

    def _drop(self, session: Session) -> None:
        self.close_session_later(session)
        try:
            session.subscriber.close(INTERNAL)
        except Exception:
            self.log.failure("closing {session} failed", session=session)



class HubService(MultiService):
    """Runs the hub's engine in the service tree: its stop writes what is still being committed.

    It sits between the database and the front ends, so it stops after every
    front end (no more messages arrive) and before the database closes.
    """

    name = "hub"  # type: ignore[assignment]  # twisted's Service.name is unannotated (inferred as None)

    def __init__(self, hub: Hub, engine: IService) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # twisted's Service is unannotated
        self.hub = hub
        engine.setServiceParent(self)
