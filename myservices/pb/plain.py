"""Answers of plain data (what the shared commands return) in jelly's wire form, without a jelly pass.

C{broker.serialize} builds a jellier per answer and looks up the type name
of every object against the security options; for results made of str,
int, float, bool, None, lists, tuples and dicts (every shared command's,
except C{join}'s room object) this module writes the same s-expressions
directly. Shared references are written out again instead of as references
(the client gets equal data); anything else goes through C{broker.serialize}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.spread import pb


class _NotPlain(Exception):
    pass


def jelly_plain(value: Any) -> Any:
    """The s-expression jelly makes of C{value} (made of plain data only), or L{_NotPlain}."""
    t = type(value)
    if t is str:
        return [b"unicode", value.encode("utf-8")]
    if t is int or t is float or t is bytes:
        return value
    if value is None:
        return [b"None"]
    if t is bool:
        return [b"boolean", b"true" if value else b"false"]
    if t is dict:
        sexp: list[Any] = [b"dictionary"]
        for key, item in value.items():
            sexp.append([jelly_plain(key), jelly_plain(item)])
        return sexp
    if t is list:
        return [b"list", *[jelly_plain(item) for item in value]]
    if t is tuple:
        return [b"tuple", *[jelly_plain(item) for item in value]]
    raise _NotPlain()


def serialize(broker: pb.Broker, result: Any, perspective: Any = None) -> Any:
    """What a C{remoteMessageReceived} returns for C{result}: C{broker.serialize}, faster for plain data."""
    if not isinstance(result, Deferred):
        try:
            return jelly_plain(result)
        except (_NotPlain, RecursionError, UnicodeEncodeError):
            pass  # jelly decides (and raises what it raises)
    return broker.serialize(result, perspective)
