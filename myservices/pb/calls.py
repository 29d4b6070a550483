"""A PB call's arguments: what jelly may carry, and their mapping onto a shared command's arguments."""

from __future__ import annotations

from typing import Any

from twisted.spread.jelly import SecurityOptions

from myservices.errors import BAD_ARGUMENTS, RequestError
from myservices.handlers import values
from myservices.handlers.router import Command


def jelly_security() -> SecurityOptions:
    """What a client's calls may carry: plain data and PB's references."""
    # plain data and PB's references only: no client-chosen class is ever instantiated here;
    # failures are let in so a listener's error can be reported
    options = SecurityOptions()
    options.allowBasicTypes()
    options.allowTypes("remote", "local", "twisted.spread.pb.CopyableFailure")
    return options


def check_json(name: str, value: Any) -> None:
    """PB carries more types than JSON; values the shared handlers store or echo must be JSON."""
    try:
        values.check_value(value)
    except values.InvalidValue as e:
        raise RequestError(BAD_ARGUMENTS, f'"{name}" must be a JSON value (str, int, finite float, bool, None, '
                           f"lists and dicts with str keys): {e}") from None


def bind_call(command: Command, label: str, args: Any, kw: Any) -> dict[str, Any]:
    """Map a PB call's positional and keyword arguments onto C{command}'s arguments and check them."""
    if not isinstance(args, (list, tuple)) or not isinstance(kw, dict):
        raise RequestError(BAD_ARGUMENTS, f"{label}: malformed arguments")
    names = command.arg_names
    if len(args) > len(names):
        raise RequestError(
            BAD_ARGUMENTS, f"{label} takes at most {len(names)} arguments ({', '.join(names) or 'none'}), got {len(args)}"
        )
    given = dict(zip(names, args))
    for key, value in kw.items():
        key = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        if key in given:
            raise RequestError(BAD_ARGUMENTS, f'{label}: argument "{key}" given twice')
        given[key] = value
    kwargs = command.bind(given, label=label)
    for name in command.any_args:
        if name in kwargs:
            check_json(name, kwargs[name])
    return kwargs
