"""The line chat's server lines: hub events, history, the gap after a rejoin with SINCE, and the /help text.

One line per event or reply, ``KEYWORD fields...`` with free text last (see
docs/protocols.md); L{myservices.chat} writes them.
"""

from __future__ import annotations

import time

from myservices.hub import Direct, Event, Joined, Message, NickChange, Presence


def stamp(ts: float) -> str:
    """UTC, to the second: C{2026-11-22T06:30:11Z}."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def encode_event(event: Event) -> bytes:
    """The line for a hub event; cached per event, so a room costs one encoding."""
    if isinstance(event, Message):
        line = f"MSG {event.room} {event.id} {event.nick} {event.text}"
    elif isinstance(event, Presence):
        line = f"{event.kind.upper()} {event.room} {event.nick}" + (f" {event.reason}" if event.reason else "")
    elif isinstance(event, NickChange):
        line = f"NICK {event.old} {event.new}"
    elif isinstance(event, Direct):
        line = f"DM {event.sender} {event.target} {event.text}"
    else:
        raise TypeError(f"no line format for {event!r}")
    return line.encode("utf-8") + b"\r\n"


def gap_line(joined: Joined, since: int) -> str:
    """The line that tells a client rejoining with SINCE that not everything it missed is kept."""
    first = joined.history[0].id if joined.history else joined.last_id + 1
    if since > joined.last_id:
        why = f"#{since} is past this room's last message #{joined.last_id}"
    else:
        why = f"messages #{since + 1} to #{first - 1} are no longer kept"
    return f"GAP {joined.room} {first} {why}"


def history_line(room: str, m: Message) -> str:
    """A past message: C{HISTORY ROOM ID TIME NICK text}."""
    return f"HISTORY {room} {m.id} {stamp(m.ts)} {m.nick} {m.text}"


HELP = [
    "/nick NAME           take a nick (letters, digits, _ or -, starting with a letter; not an account's)",
    "/register NAME PASS  create an account (its name becomes a nick only it can use)",
    "/login NAME PASS     log in (or /login TOKEN); your nick becomes your account name",
    "/logout              log out (you get a guest nick)",
    "/passwd OLD NEW      change your password (tokens issued before stop working)",
    "/whoami              show your nick and account",
    "/join ROOM [SINCE]   join a room (it becomes your current room) and see its recent history,",
    "                     or with SINCE (the last message id you saw) what you missed since",
    "/part [ROOM]         leave a room (default: the current room)",
    "/msg ROOM TEXT       say TEXT in ROOM; plain text goes to the current room",
    "/dm NICK TEXT        send TEXT to NICK alone (every connection of that nick; not kept in history)",
    "/rooms               list rooms and topics in use",
    "/who [ROOM]          list the members of a room",
    "/history [ROOM] [N]  show the last N messages of a room",
    "/sub TOPIC [SINCE]   receive what is published to TOPIC, without joining (SINCE: as for /join)",
    "/unsub TOPIC         stop receiving TOPIC",
    "/pub TOPIC TEXT      publish TEXT to TOPIC (no need to subscribe)",
    "/create ROOM         create a private room (logged in): only its members may join, read or publish",
    "/invite ROOM USER    make account USER a member of your private room (/remove ROOM USER undoes it)",
    "/delete ROOM         make your private room public again",
    "/kick ROOM NICK [WHY]  remove NICK from ROOM (admins; owners in their private room)",
    "/disconnect NICK [WHY]  close every connection of NICK, on every server (admins)",
    "/ban ROOM USER SECS  keep account USER out of ROOM for SECS seconds (admins; /unban ROOM USER)",
    "/close ROOM          remove everyone; only admins may use ROOM until /reopen ROOM (admins)",
    "/quit                disconnect",
    "start a line with // to send text that begins with /",
]
