"""Hub events as they travel through Redis: one JSON object per event, on a channel and in a room's stream.

A message's JSON is built here without its id ("...,"id":"), and the publish
script appends the id it assigns and the closing brace, so the text stored
and delivered is exactly what Python wrote (its time stamp included). An
event may carry a private marker C{"m"} (the token of the join, part,
subscribe or rename that published it): it is taken off before delivery.
"""

from __future__ import annotations

import json
from typing import Any

from myservices.hub.events import Direct, Disconnect, Event, Kick, Logout, Message, NickChange, Presence


def message_prefix(room: str, ts: float, nick: str, text: str, account: bool = False) -> str:
    """The JSON of a message up to its id; the publish script appends ``ID}``."""
    data: dict[str, Any] = {"t": "msg", "room": room, "ts": ts, "nick": nick, "text": text}
    if account:
        data["a"] = 1
    body = json.dumps(data, ensure_ascii=False)
    return body[:-1] + ', "id": '


def nick_change(event: NickChange, member_id: str, marker: str) -> str:
    return json.dumps(
        {"t": "nick", "old": event.old, "new": event.new, "rooms": list(event.rooms), "member": member_id, "m": marker},
        ensure_ascii=False,
    )


def direct_payload(event: Direct, marker: str) -> str:
    return json.dumps(
        {"t": "dm", "from": event.sender, "to": event.target, "text": event.text, "ts": event.ts,
         "account": event.account, "origin": event.origin, "m": marker},
        ensure_ascii=False,
    )


def logout(event: Logout) -> str:
    """An order to log out an account's connections, on the channel every process listens to."""
    return json.dumps({"t": "logout", "account": event.account, "keep": event.keep}, ensure_ascii=False)


def disconnect(event: Disconnect) -> str:
    """An order to close the connections of a nick, on the channel every process listens to."""
    return json.dumps({"t": "disconnect", "nick": event.nick, "reason": event.reason}, ensure_ascii=False)


def kick(event: Kick) -> str:
    """A kick, published on the channel every process listens to (it names its room)."""
    return json.dumps(
        {"t": "kick", "room": event.room, "nicks": sorted(event.nicks), "accounts": sorted(event.accounts),
         "everyone": event.everyone, "reason": event.reason},
        ensure_ascii=False,
    )


def decode(text: str) -> tuple[Event | None, str | None, str | None]:
    """The event in C{text} (None for a bare marker), its marker, and for a nick change the member's id.

    Raises ValueError if C{text} is not an event (it never comes from a client).
    """
    data: Any = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not an event")
    marker = data.get("m")
    kind = data.get("t")
    event: Event | None
    member: str | None = None
    if kind == "msg":
        event = Message(
            room=str(data["room"]), id=int(data["id"]), ts=float(data["ts"]), nick=str(data["nick"]),
            text=str(data["text"]), account=bool(data.get("a")),
        )
    elif kind in ("join", "part"):
        event = Presence(kind=kind, room=str(data["room"]), nick=str(data["nick"]), account=bool(data.get("a")))
    elif kind == "nick":
        event = NickChange(old=str(data["old"]), new=str(data["new"]), rooms=tuple(str(r) for r in data["rooms"]))
        member = str(data["member"])
    elif kind == "dm":
        event = Direct(
            sender=str(data["from"]), target=str(data["to"]), text=str(data["text"]), ts=float(data["ts"]),
            account=bool(data["account"]), origin=str(data["origin"]),
        )
    elif kind == "kick":
        event = Kick(
            room=str(data["room"]), nicks=frozenset(str(n) for n in data["nicks"]),
            accounts=frozenset(str(a) for a in data["accounts"]), everyone=bool(data["everyone"]),
            reason=str(data["reason"]),
        )
    elif kind == "logout":
        event = Logout(account=str(data["account"]), keep=str(data["keep"]))
    elif kind == "disconnect":
        event = Disconnect(nick=str(data["nick"]), reason=str(data["reason"]))
    elif kind == "mark":
        event = None
    else:
        raise ValueError(f"unknown event type {kind!r}")
    return event, (str(marker) if marker is not None else None), member


def decode_message(text: str) -> Message:
    """A message from a room's stream."""
    event, _, _ = decode(text)
    if not isinstance(event, Message):
        raise ValueError("not a message")
    return event
