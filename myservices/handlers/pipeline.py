"""The one request pipeline of the request/reply front ends (framed JSON, WebSocket, PB).

Each front end parses its wire format into a command and its arguments, then
calls L{invoke} and renders what comes back: the result, or the
L{RequestError} that L{classify} makes of any failure. So adding a command or a
hub operation touches the hub, one handler and the docs, and every front end
answers it, counts it and reports its errors the same way. L{event_body} is the
one JSON form of each hub event that every front end sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from myservices.errors import INTERNAL, RequestError
from myservices.handlers.router import Command
from myservices.handlers.values import client_error
from myservices.hub import Direct, Event, Message, NickChange, Presence, Stats

log = Logger()


def invoke(command: Command, target: Any, kwargs: Mapping[str, Any]) -> Deferred[Any]:
    """C{command}'s handler on C{target}: always a Deferred, whether the handler returns a value,
    a coroutine or a Deferred, or raises."""
    try:
        result = command.handler(target, **kwargs)
    except Exception:
        return fail()
    if command.is_async:
        return Deferred.fromCoroutine(result)
    if isinstance(result, Deferred):
        return result
    return succeed(result)


def call(command: Command, target: Any, kwargs: Mapping[str, Any]) -> Any:
    """Like L{invoke}, but a synchronous handler's plain result comes back as it is, not in a Deferred.

    The result is a Deferred (which may have fired already) for coroutines,
    handlers that return one, and handlers that raise; anything else is the
    result itself. For the hot paths (C{echo}, C{ping}): a fired Deferred
    costs more than the rest of such a request.
    """
    if command.is_async:
        return invoke(command, target, kwargs)
    try:
        return command.handler(target, **kwargs)
    except Exception:
        return fail()


def classify(failure: Failure, service: str, command: str) -> RequestError:
    """The error the client is answered for C{failure}.

    The client's errors and the database's unavailability keep their codes;
    anything else is a server bug: logged here, once, with its traceback, and
    answered C{INTERNAL} (the traceback never reaches the client).
    """
    error = client_error(failure.value)
    if error is None:
        log.failure("{service}: {command} failed", failure, service=service, command=command, code=INTERNAL.code)
        error = RequestError(INTERNAL)
    return error


def message_json(m: Message) -> dict[str, Any]:
    return {"room": m.room, "id": m.id, "ts": m.ts, "nick": m.nick, "text": m.text, "account": m.account}


def event_body(event: Event) -> tuple[str, dict[str, Any]]:
    """The kind ("message", "presence", "nick", "dm", "stats") and JSON body of a hub event, the same on every front end."""
    if isinstance(event, Message):
        return "message", message_json(event)
    if isinstance(event, Presence):
        body: dict[str, Any] = {"kind": event.kind, "room": event.room, "nick": event.nick}
        if event.reason:  # a kick: why this connection was removed from the room
            body["reason"] = event.reason
        if event.kind != "kick":  # a JOIN or PART: whether the member was logged in to an account
            body["account"] = event.account
        return "presence", body
    if isinstance(event, NickChange):
        return "nick", {"old": event.old, "new": event.new}
    if isinstance(event, Direct):
        return "dm", direct_json(event)
    if isinstance(event, Stats):  # to the admins watching (admin.watch)
        return "stats", event.data
    raise TypeError(f"no JSON form for {event!r}")


def direct_json(event: Direct) -> dict[str, Any]:
    """A direct message as every JSON front end sends it (C{account}: the sender was logged in)."""
    return {"from": event.sender, "to": event.target, "text": event.text, "ts": event.ts, "account": event.account}
