"""What a client may send as a value, and the one place that turns a failed request into a client error.

JSON as Python's C{json} module reads it is more than JSON: it takes
C{NaN} and C{Infinity}, turns C{1e400} into infinity and C{"\\ud800"} into a
string that cannot be encoded as UTF-8. None of these can be stored, echoed
or sent to another client, so they are refused where they come in, as the
client's error, and never reach a handler.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from myservices.errors import BAD_ARGUMENTS, DATABASE_UNAVAILABLE, DatabaseUnavailable, RequestError

MAX_DEPTH = 64  # nesting of arrays and objects in one value


class InvalidValue(ValueError):
    """A value no front end can carry (NaN, an unpaired surrogate, ...): the client's error, BAD_ARGUMENTS."""


class InvalidJSON(ValueError):
    """Text that is not JSON at all: the client's error, BAD_REQUEST."""


def _no_constant(name: str) -> Any:
    raise InvalidValue(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidValue(f"{text[:32]} is out of range for a number")
    return value


# a \u escape of a surrogate: the only way JSON text that is valid UTF-8 can produce an unencodable string
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


_decode = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite).decode


def loads(text: str | bytes) -> Any:
    """Parse strict JSON: L{InvalidJSON} for text that is not JSON, L{InvalidValue} for values outside it.

    Paired surrogate escapes (an emoji as C{"\\ud83d\\ude00"}) are fine;
    unpaired ones are refused.
    """
    try:
        # one decoder for every request: json.loads with options would build a new one each time
        value = _decode(text) if type(text) is str else json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except InvalidValue:
        raise
    except RecursionError:
        raise InvalidJSON("nested too deeply to read") from None
    except ValueError as e:  # JSONDecodeError, and integers of more than 4300 digits
        raise InvalidJSON(str(e)[:200]) from None
    probe = text if isinstance(text, str) else text.decode("utf-8", "replace")
    if "\\u" in probe and _SURROGATE_ESCAPE.search(probe):
        check_value(value)
    return value


def peek_id(text: str | bytes) -> Any:
    """The "id" member of a request L{loads} refused for its values, so the error can name the request."""
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return body.get("id") if isinstance(body, dict) else None


def dumps(value: Any) -> str:
    """Compact JSON for what L{loads} or L{check_value} accepted."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def check_text(value: str) -> str:
    """C{value}, or L{InvalidValue} if it cannot be encoded as UTF-8 (an unpaired surrogate)."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidValue("a string contains an unpaired surrogate (not valid Unicode)") from None
    return value


def check_value(value: Any, depth: int = 0) -> Any:
    """C{value} if it is plain JSON data (str, int, finite float, bool, None, lists, objects with str keys).

    For values that did not come through L{loads} (PB carries many more types).
    """
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        return check_text(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidValue(f"{value} is not a JSON number")
        return value
    if depth >= MAX_DEPTH:
        raise InvalidValue(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, (list, tuple)):
        for item in value:
            check_value(item, depth + 1)
        return value
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidValue(f"object keys must be strings, not {type(key).__name__}")
            check_text(key)
            check_value(item, depth + 1)
        return value
    raise InvalidValue(f"{type(value).__name__} is not a JSON type")


def client_error(e: BaseException) -> RequestError | None:
    """The error to answer for an exception raised while serving a request, or None for a server bug.

    Every front end calls this, so the same failure gets the same code
    everywhere; on None the caller logs the failure and answers INTERNAL.
    """
    if isinstance(e, RequestError):
        return e
    if isinstance(e, DatabaseUnavailable):
        return RequestError(DATABASE_UNAVAILABLE)
    if isinstance(e, InvalidValue):
        return RequestError(BAD_ARGUMENTS, str(e))
    if isinstance(e, RecursionError):
        return RequestError(BAD_ARGUMENTS, "arguments are nested too deeply")
    return None
