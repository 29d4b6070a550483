"""Command and push ids of the framed JSON protocol: the numbers on the wire, shared by server and client.

Ids never change meaning once released; new commands take new ids.
docs/protocols.md documents each one's arguments, result and errors.
"""

from __future__ import annotations

COMMANDS: dict[str, int] = {
    "ping": 1,
    "echo": 2,
    "register": 10,
    "login": 11,
    "logout": 12,
    "whoami": 13,
    "passwd": 14,
    "token": 15,
    "kv.get": 20,
    "kv.set": 21,
    "kv.delete": 22,
    "kv.list": 23,
    "counter.increment": 30,
    "counter.get": 31,
    "hub.nick": 40,
    "hub.join": 41,
    "hub.part": 42,
    "hub.publish": 43,
    "hub.history": 44,
    "hub.who": 45,
    "hub.rooms": 46,
    "hub.subscribe": 47,
    "hub.unsubscribe": 48,
    "hub.dm": 49,
    # room policy (private rooms, moderation)
    "hub.create": 60,
    "hub.invite": 61,
    "hub.remove": 62,
    "hub.delete": 63,
    "hub.kick": 64,
    "hub.ban": 65,
    "hub.unban": 66,
    "hub.close": 67,
    "hub.reopen": 68,
    "hub.disconnect": 69,
    # the operator page's statistics (admins)
    "admin.stats": 80,
    "admin.watch": 81,
    "admin.unwatch": 82,
}

# server pushes: body {"id": 0, "push": NAME, "data": {...}}
PUSHES: dict[str, int] = {
    "message": 100,
    "presence": 101,
    "nick": 102,
    "dm": 103,
    "stats": 120,  # to the admins watching (admin.watch)
    "closing": 110,
    "shutdown": 111,
}

COMMAND_NAMES: dict[int, str] = {v: k for k, v in COMMANDS.items()}
PUSH_NAMES: dict[int, str] = {v: k for k, v in PUSHES.items()}
