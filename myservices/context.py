"""What a service kind's builder is given: the shared objects of one service tree."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService

if TYPE_CHECKING:
    from myservices.accounts import AccountStore
    from myservices.config import Config
    from myservices.counter import DurableCounter
    from myservices.db import Database
    from myservices.health import Readiness
    from myservices.hub import Hub
    from myservices.handlers.commands import SharedServices
    from myservices.kv import KeyValueStore
    from myservices.logins import Logins
    from myservices.metrics import Metrics
    from myservices.tokens import TokenService


@dataclass(frozen=True)
class BuildContext:
    """What a builder may use: shared objects are passed in, never imported as globals."""

    reactor: Any
    config: Config
    database: Database
    metrics: Metrics
    hub: Hub
    counter: DurableCounter
    accounts: AccountStore
    kv: KeyValueStore
    logins: Logins
    shared: SharedServices  # what the request/reply front ends' commands work on
    tokens: TokenService
    readiness: Readiness
    services: Mapping[str, IService]  # those built so far, by name (built in the order of the kinds)
    worker: int | None = None  # with [daemon] workers: which worker process this tree is
