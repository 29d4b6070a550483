"""Service kinds: each ``[services.NAME]`` section names a kind, which has a config class and a builder."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService

if TYPE_CHECKING:
    from myservices.accounts import AccountStore
    from myservices.config import Config, ServiceConfig
    from myservices.counter import DurableCounter
    from myservices.db import Database
    from myservices.health import Readiness
    from myservices.hub import Hub
    from myservices.kv import KeyValueStore
    from myservices.metrics import Metrics


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
    readiness: Readiness
    services: Mapping[str, IService]  # those built so far, by name (built in the order of service_kinds)


@dataclass(frozen=True)
class ServiceKind:
    """How to validate and build one kind of service."""

    name: str
    config: type[ServiceConfig]
    build: Callable[[str, Any, BuildContext], IService]


def service_kinds() -> dict[str, ServiceKind]:
    """Every kind, in the order services are started."""
    from myservices import chat, echo, udp
    from myservices.framed import server as framed
    from myservices.pb import server as pb
    from myservices.web import service as http
    from myservices.websocket import service as websocket

    kinds = [
        ServiceKind("echo", echo.EchoConfig, echo.build),
        ServiceKind("chat", chat.ChatConfig, chat.build),
        ServiceKind("udp", udp.UdpConfig, udp.build),
        # before http, which may mount its routes under /ws
        ServiceKind("websocket", websocket.WebSocketConfig, websocket.build),
        ServiceKind("http", http.HttpConfig, http.build),
        ServiceKind("framed", framed.FramedConfig, framed.build),
        ServiceKind("pb", pb.PBConfig, pb.build),
    ]
    return {k.name: k for k in kinds}


def config_classes() -> dict[str, type[ServiceConfig]]:
    return {name: kind.config for name, kind in service_kinds().items()}
