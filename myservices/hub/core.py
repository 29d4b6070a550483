"""The hub: rooms and topics, nicks, presence, publish and history, shared by every front end.

Front ends hand the hub a L{Subscriber} (something that can take an event and
can be closed), never a protocol object, and call the hub's methods with what
their clients asked for. The hub holds all the state and rules.

A room has members (with presence: JOIN/PART events, /who) and subscribers
(topic-style: they receive publications, nobody sees them). Rooms and topics
share one namespace, so a subscriber of "news" receives what members of the
room "news" say.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from myservices.db import DatabaseUnavailable

from myservices.errors import (
    DATABASE_UNAVAILABLE,
    INTERNAL,
    NICK_INVALID,
    NICK_TAKEN,
    NOT_IN_ROOM,
    RATE_LIMITED,
    ROOM_INVALID,
    TEXT_INVALID,
    TOO_MANY_ROOMS,
    RequestError,
)
from myservices.hub.backplane import Backplane, InProcessBackplane
from myservices.hub.config import HubConfig
from myservices.hub.events import Event, Message, NickChange, Presence, UnencodableEvent
from myservices.hub.history import HistoryRejected, HistoryStore
from myservices.hub.rooms import Room, Session, Subscriber
from myservices.metrics import Metrics
from myservices.ratelimit import TokenBucket

_NICK_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_ROOM_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*")


class Hub:
    """Rooms, topics and nicks for every front end of one daemon.

    Message ids increase per room and never repeat: a room loads its recent
    history and its last id from the L{HistoryStore} the first time it is used
    in this process. A published message is committed to the database first
    (in batches, see L{HistoryStore}), then delivered to every member in id
    order, then acknowledged: what anyone saw or was acknowledged survives a
    crash. Without a database the room cannot be used (DATABASE_UNAVAILABLE).
    """

    log = Logger()

    def __init__(
        self,
        config: HubConfig,
        clock: IReactorTime,
        history: HistoryStore | None = None,
        backplane: Backplane | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.history = history
        self.metrics = metrics or Metrics()
        self.backplane = backplane or InProcessBackplane()
        self.backplane.start(self._deliver_message)
        self.sessions: set[Session] = set()
        self.rooms: dict[str, Room] = {}
        self._nicks: dict[str, Session] = {}
        self._guest_numbers = itertools.count(1)
        # counted when scraped, so joins and parts cost nothing extra
        self.metrics.hub_members.set_function(
            lambda: sum(len(r.members) + len(r.subscribers) for r in self.rooms.values())
        )

    # --- sessions and nicks ---------------------------------------------------

    def open_session(self, subscriber: Subscriber) -> Session:
        """Attach a connection; it gets a free guest nick until it picks one."""
        nick = self._free_guest_nick()
        bucket = TokenBucket(self.config.publish_rate, self.config.publish_burst, self.clock)
        session = Session(subscriber, nick, bucket)
        self.sessions.add(session)
        self._nicks[nick.lower()] = session
        self.metrics.hub_sessions.set(len(self.sessions))
        return session

    def close_session(self, session: Session) -> None:
        """Detach a connection: it leaves every room (members see PART) and frees its nick."""
        if session.closed:
            return
        session.closed = True
        for name in list(session.rooms):
            self.part(session, name)
        for name in list(session.topics):
            self.unsubscribe(session, name)
        self.sessions.discard(session)
        if self._nicks.get(session.nick.lower()) is session:
            del self._nicks[session.nick.lower()]
        self.metrics.hub_sessions.set(len(self.sessions))

    def _free_guest_nick(self) -> str:
        while True:
            nick = f"guest{next(self._guest_numbers)}"
            if nick.lower() not in self._nicks:
                return nick

    def check_nick(self, nick: str) -> str:
        if len(nick) > self.config.max_nick_length or not _NICK_RE.fullmatch(nick):
            raise RequestError(
                NICK_INVALID,
                f'nick "{nick}": 1 to {self.config.max_nick_length} letters, digits, _ or -, starting with a letter',
            )
        return nick

    def set_nick(self, session: Session, nick: str) -> str:
        """Take a new nick (unique among connected users, ignoring case); returns the old one."""
        self.check_nick(nick)
        holder = self._nicks.get(nick.lower())
        if holder is not None and holder is not session:
            raise RequestError(NICK_TAKEN, f"nick \"{nick}\" is in use")
        old = session.nick
        if old == nick:
            return old
        del self._nicks[old.lower()]
        self._nicks[nick.lower()] = session
        session.nick = nick
        event = NickChange(old=old, new=nick)
        audience = {session: None}
        for room in session.rooms.values():
            audience.update(room.members)
        self._send(audience, event)
        return old

    # --- rooms ----------------------------------------------------------------

    def check_room(self, name: str) -> str:
        """The canonical room name (lower case, without a leading #), or RequestError."""
        canonical = name[1:] if name.startswith("#") else name
        canonical = canonical.lower()
        if len(canonical) > self.config.max_room_length or not _ROOM_RE.fullmatch(canonical):
            raise RequestError(
                ROOM_INVALID,
                f"room \"{name}\": 1 to {self.config.max_room_length} letters, digits, _, . or -"
                " (case does not matter, a leading # is optional)",
            )
        return canonical

    async def _room(self, name: str) -> Room:
        """The loaded room C{name}, created and loaded from history if needed."""
        while True:
            room = self.rooms.get(name)
            if room is None:
                room = self.rooms[name] = Room(name, self.config.history_size)
                self.metrics.hub_rooms.set(len(self.rooms))
                Deferred.fromCoroutine(self._load(room))
            if room.loaded:
                return room
            if room.failed is not None:
                raise room.failed  # at once, when the database failed without waiting
            d: Deferred[None] = Deferred()
            room._waiters.append(d)
            await d  # fails when the load failed
            # look again: while we waited, everyone else may have left and the room been forgotten

    async def _load(self, room: Room) -> None:
        """Load the room's last id and history, then wake its waiters; never fails (the waiters do)."""
        failure: Exception | None = None
        try:
            if self.history is not None:
                room.last_id, messages = await self.history.load(room.name, self.config.history_size)
                room.recent.extend(messages)
        except DatabaseUnavailable as e:
            # without its last id the room could repeat ids: it stays unusable until the database answers
            self.log.warn("room {room}: cannot load its history: {error}", room=room.name, error=e)
            failure = RequestError(DATABASE_UNAVAILABLE, f'room "{room.name}" cannot be loaded now; try again')
        except Exception:
            self.log.failure("room {room}: loading failed", room=room.name)
            failure = RequestError(INTERNAL)
        waiters, room._waiters = room._waiters, []
        if failure is not None:
            room.failed = failure
            if self.rooms.get(room.name) is room:
                del self.rooms[room.name]  # the next use loads it again
                self.metrics.hub_rooms.set(len(self.rooms))
            for d in waiters:
                d.errback(failure)
            return
        room.loaded = True
        for d in waiters:
            d.callback(None)

    def _forget_if_empty(self, room: Room) -> None:
        if room.empty and room.loaded and self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            self.metrics.hub_rooms.set(len(self.rooms))

    def _check_room_budget(self, session: Session, name: str) -> None:
        if name in session.rooms or name in session.topics:
            return
        if len(session.rooms.keys() | session.topics.keys()) >= self.config.max_rooms_per_session:
            raise RequestError(TOO_MANY_ROOMS, f"at most {self.config.max_rooms_per_session} rooms and topics")

    async def join(self, session: Session, name: str) -> list[Message]:
        """Join room C{name} with presence; returns its recent history (oldest first).

        Every member, the joiner included, gets a JOIN event. The history is a
        snapshot taken at the moment of joining: later messages arrive live.
        """
        name = self.check_room(name)
        self._check_room_budget(session, name)
        room = await self._room(name)
        if session.closed:
            self._forget_if_empty(room)
            return []
        if session not in room.members:
            room.members[session] = None
            session.rooms[name] = room
            self._send(room.members, Presence(kind="join", room=name, nick=session.nick))
        return list(room.recent)

    def part(self, session: Session, name: str) -> None:
        """Leave room C{name}; the remaining members and the leaver get a PART event."""
        name = self.check_room(name)
        room = session.rooms.pop(name, None)
        if room is None:
            raise RequestError(NOT_IN_ROOM, f"not in room \"{name}\"")
        event = Presence(kind="part", room=name, nick=session.nick)
        audience = dict(room.members)
        del room.members[session]
        self._send(audience, event)
        self._forget_if_empty(room)

    async def subscribe(self, session: Session, name: str) -> None:
        """Receive what is published to C{name}, without presence."""
        name = self.check_room(name)
        self._check_room_budget(session, name)
        room = await self._room(name)
        if session.closed:
            self._forget_if_empty(room)
            return
        room.subscribers[session] = None
        session.topics[name] = room

    def unsubscribe(self, session: Session, name: str) -> None:
        name = self.check_room(name)
        room = session.topics.pop(name, None)
        if room is None:
            raise RequestError(NOT_IN_ROOM, f"not subscribed to \"{name}\"")
        del room.subscribers[session]
        self._forget_if_empty(room)

    def room_list(self) -> list[tuple[str, int, int]]:
        """(name, members, subscribers) of every room in use, sorted by name."""
        return sorted((r.name, len(r.members), len(r.subscribers)) for r in self.rooms.values() if not r.empty)

    def who(self, name: str) -> list[str]:
        """Nicks of the members (not subscribers) of C{name}."""
        room = self.rooms.get(self.check_room(name))
        return [s.nick for s in room.members] if room else []

    async def recent(self, name: str, limit: int | None = None) -> list[Message]:
        """The last C{limit} messages of C{name} (oldest first), from memory or the database."""
        name = self.check_room(name)
        limit = self.config.history_size if limit is None else min(limit, self.config.history_size)
        room = self.rooms.get(name)
        if room is not None and room.loaded:
            messages = list(room.recent)
        elif self.history is None:
            messages = []
        else:
            try:
                _, messages = await self.history.load(name, self.config.history_size)
            except DatabaseUnavailable as e:
                raise RequestError(DATABASE_UNAVAILABLE, f"history of \"{name}\" is not available now") from e
        return messages[-limit:] if limit else []

    # --- publishing -------------------------------------------------------------

    def check_text(self, text: str) -> str:
        if not text or not text.strip() or any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in text):
            raise RequestError(TEXT_INVALID, "text must be non-empty, without control characters")
        if len(text) > self.config.max_text_length:
            raise RequestError(TEXT_INVALID, f"text is longer than {self.config.max_text_length} characters")
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                # a lone surrogate (a JSON "\\ud800"): no front end could send it on, no database store it
                raise RequestError(TEXT_INVALID, "text must be valid Unicode (no unpaired surrogates)") from None
        return text

    async def publish(self, session: Session, name: str, text: str, *, as_member: bool = True) -> Message:
        """Publish C{text} to room C{name}.

        With C{as_member} (chat), the sender must have joined the room; without
        (topic-style /pub), anyone may publish. Each connection is rate limited.
        """
        name = self.check_room(name)
        self.check_text(text)
        if as_member and name not in session.rooms:
            raise RequestError(NOT_IN_ROOM, f"join \"{name}\" before sending to it")
        if not session.bucket.allow():
            raise RequestError(RATE_LIMITED, f"at most {self.config.publish_rate:g} messages per second")
        room = await self._room(name)
        room.last_id += 1
        message = Message(room=name, id=room.last_id, ts=self.clock.seconds(), nick=session.nick, text=text)
        if self.history is not None:
            room.pending += 1
            try:
                await self.history.commit(message)
            except DatabaseUnavailable as e:
                raise RequestError(DATABASE_UNAVAILABLE, "the message was not saved nor delivered; send it again") from e
            except HistoryRejected as e:
                raise RequestError(INTERNAL, "the message could not be saved; it was not delivered") from e
            finally:
                room.pending -= 1
                self._forget_if_empty(room)
        self.metrics.hub_publishes.inc()
        self.backplane.publish(message)
        self._forget_if_empty(room)
        return message

    def _deliver_message(self, message: Message) -> None:
        """From the backplane: fan the message out to this hub's audience of its room."""
        room = self.rooms.get(message.room)
        if room is None:
            return
        room.recent.append(message)
        room.last_id = max(room.last_id, message.id)
        self._send(room.audience(), message)

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
                self.close_session(session)
                try:
                    session.subscriber.close(INTERNAL)
                except Exception:
                    self.log.failure("closing {session} failed", session=session)
        self.metrics.hub_deliveries.inc(delivered)


class HubService(Service):
    """Runs the hub in the service tree: on stop, history still queued is written out.

    It sits between the database and the front ends, so it stops after every
    front end (no more messages arrive) and before the database closes.
    """

    name = "hub"

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self.hub.history is not None:
            await self.hub.history.flush()  # every publish still waiting is committed (or answered) first
        self.hub.backplane.stop()
