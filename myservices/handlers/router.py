"""The command router: command name -> handler, with argument checking before the handler runs."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from myservices.errors import BAD_ARGUMENTS, RequestError
from myservices.handlers.values import InvalidValue, check_text

ANY = object()  # any JSON value


@dataclass(frozen=True)
class Arg:
    """One named argument: its JSON type, whether it is required, and a length limit for strings."""

    name: str
    type: Any  # str, int, bool, list, dict or ANY
    required: bool = True
    max_length: int | None = None  # characters, for strings
    min: int | None = None  # for integers
    max: int | None = None  # for integers
    type_name: str | None = None  # for other types: what the error message calls it
    takes_anything: bool = field(init=False, repr=False, compare=False)  # any JSON value, no limit: nothing to check

    def __post_init__(self) -> None:
        anything = self.type is ANY and self.max_length is None and self.min is None and self.max is None
        object.__setattr__(self, "takes_anything", anything)

    def check(self, value: Any) -> Any:
        t = self.type
        if t is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif t is ANY:
            ok = True
        else:
            ok = isinstance(value, t)
        if not ok:
            raise RequestError(BAD_ARGUMENTS, f'"{self.name}" must be {self.type_name or _TYPE_NAMES[t]}')
        if self.max_length is not None and len(value) > self.max_length:
            raise RequestError(BAD_ARGUMENTS, f'"{self.name}" is longer than {self.max_length} characters')
        if t is str:
            try:
                check_text(value)
            except InvalidValue as e:
                raise RequestError(BAD_ARGUMENTS, f'"{self.name}": {e}') from None
        if self.min is not None and value < self.min:
            raise RequestError(BAD_ARGUMENTS, f'"{self.name}" must be at least {self.min}')
        if self.max is not None and value > self.max:
            raise RequestError(BAD_ARGUMENTS, f'"{self.name}" must be at most {self.max}')
        return value


_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "an array", dict: "an object", ANY: "a JSON value"}

Handler = Callable[..., Any]


@dataclass(frozen=True)
class Command:
    """A routable command.

    C{login}: only for logged-in connections. C{barrier}: requests after it on
    the same connection wait until it is answered, because they may depend on
    what it changes (login state, membership).
    """

    name: str
    handler: Handler
    args: tuple[Arg, ...]
    login: bool = False
    barrier: bool = False
    is_async: bool = field(init=False)
    arg_names: tuple[str, ...] = field(init=False, repr=False, compare=False)  # in order
    any_args: tuple[str, ...] = field(init=False, repr=False, compare=False)  # those taking any JSON value
    _known: dict[str, Arg] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # decided once here, not per request
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.handler))
        object.__setattr__(self, "arg_names", tuple(a.name for a in self.args))
        object.__setattr__(self, "any_args", tuple(a.name for a in self.args if a.type is ANY))
        object.__setattr__(self, "_known", {a.name: a for a in self.args})

    def bind(self, args: Mapping[str, Any], label: str | None = None) -> dict[str, Any]:
        """Checked keyword arguments for the handler, or RequestError(BAD_ARGUMENTS).

        C{label} names the command in error messages as the client called it (default: its name).
        """
        if not args and not self.args:
            return {}
        known = self._known
        for name in args:
            if name not in known:
                expected = ", ".join(known) or "none"
                raise RequestError(BAD_ARGUMENTS, f'{label or self.name}: unknown argument "{name}" (expected {expected})')
        kwargs = {}
        for a in self.args:
            if a.name in args:
                value = args[a.name]
                kwargs[a.name] = value if a.takes_anything else a.check(value)
            elif a.required:
                raise RequestError(BAD_ARGUMENTS, f'{label or self.name}: missing argument "{a.name}"')
        return kwargs


class Router:
    """Command names to handlers. Front ends map their wire format onto the names
    (the framed protocol numbers them in L{myservices.framed.catalog})."""

    def __init__(self) -> None:
        self.commands: dict[str, Command] = {}

    def command(
        self, name: str, *args: Arg, login: bool = False, barrier: bool = False
    ) -> Callable[[Handler], Handler]:
        """Register the decorated function as command C{name}: C{handler(state, **args)}.

        The handler returns the result (a JSON value), or is a coroutine function, or returns a Deferred,
        and raises RequestError for errors the client should see.
        """

        def register(handler: Handler) -> Handler:
            if name in self.commands:
                raise ValueError(f"command {name} is registered twice")
            self.commands[name] = Command(name, handler, args, login, barrier)
            return handler

        return register

    def get(self, name: str) -> Command | None:
        return self.commands.get(name)
