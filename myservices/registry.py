"""What the daemon is made of: every service kind (its config class and builder) and every config section.

This is the wiring: it imports every front end, and hands the kinds and
sections to the loader (L{load_config}) and to the tree
(L{myservices.tree.build_service_tree}). Nothing else imports the front
ends, so no module they use can reach back to them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from twisted.application.service import IService

from myservices import chat, echo, udp
from myservices.accounts import AccountsConfig
from myservices.config import Config, Schema, read_config
from myservices.context import BuildContext
from myservices.framed import server as framed
from myservices.hub.config import HubConfig
from myservices.hub.policy_config import RoomsConfig
from myservices.kv import KeyValueConfig
from myservices.operator.config import AdminConfig
from myservices.pb import server as pb
from myservices.settings import ServiceConfig
from myservices.tokens import TokensConfig, check_tokens
from myservices.web import service as http
from myservices.web.api_keys import ApiConfig, check_api
from myservices.websocket import service as websocket
from myservices.workers.checks import check_workers


@dataclass(frozen=True)
class ServiceKind:
    """How to validate and build one kind of service."""

    name: str
    config: type[ServiceConfig]
    build: Callable[[str, Any, BuildContext], IService]
    # a front end of the hub: with several workers, the hub's engine must be shared between processes
    uses_hub: bool = False


KINDS = (
    ServiceKind("echo", echo.EchoConfig, echo.build),
    ServiceKind("chat", chat.ChatConfig, chat.build, uses_hub=True),
    ServiceKind("udp", udp.UdpConfig, udp.build),
    # before http, which may mount its routes under /ws
    ServiceKind("websocket", websocket.WebSocketConfig, websocket.build, uses_hub=True),
    ServiceKind("http", http.HttpConfig, http.build),
    ServiceKind("framed", framed.FramedConfig, framed.build, uses_hub=True),
    ServiceKind("pb", pb.PBConfig, pb.build, uses_hub=True),
)

# the top-level sections besides [daemon], [database] and [services.NAME]: fields of Config
SECTIONS: Mapping[str, type] = {
    "hub": HubConfig, "accounts": AccountsConfig, "kv": KeyValueConfig, "tokens": TokensConfig, "rooms": RoomsConfig,
    "api": ApiConfig,
    "admin": AdminConfig,
}


def service_kinds() -> dict[str, ServiceKind]:
    """Every kind, in the order services are started."""
    return {kind.name: kind for kind in KINDS}


def config_classes() -> dict[str, type[ServiceConfig]]:
    return {kind.name: kind.config for kind in KINDS}


def schema() -> Schema:
    """What a config file of this daemon may hold."""
    hub_kinds = frozenset(kind.name for kind in KINDS if kind.uses_hub)
    checks = (partial(check_workers, hub_kinds=hub_kinds), check_tokens, check_api)
    return Schema(sections=SECTIONS, kinds=config_classes(), checks=checks)


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file at C{path} (see L{myservices.config.read_config})."""
    return read_config(path, schema(), environ)
