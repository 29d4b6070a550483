"""[services.websocket]: the WebSocket listener, its limits and routes."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from twisted.application.service import IService

from myservices.settings import DURATION, SIZE, STRINGS, KiB, MiB, StreamServiceConfig, setting
from myservices.handlers.commands import router
from myservices.listeners import StreamListenerService
from myservices.context import BuildContext
from myservices.websocket.protocol import WebSocketFactory
from myservices.hub.config import AnonymousMode, anonymous_setting
from myservices.websocket.routes import ChatRoute, ChatSettings, EchoRoute


@dataclass(frozen=True, kw_only=True)
class WebSocketConfig(StreamServiceConfig):
    """[services.websocket]"""

    idle_timeout: float = setting(
        0.0, kind=DURATION, min=0, max=86400,
        doc="seconds without a message from the client before it is closed with 4001 "
        "(0: never; pings find dead peers)",
    )
    max_message_size: int = setting(
        64 * KiB, kind=SIZE, min=125, max=64 * MiB,
        doc="largest message a client may send, after decompression; larger close the connection with 1009",
    )
    max_frame_size: int = setting(
        64 * KiB, kind=SIZE, min=125, max=64 * MiB, doc="largest frame a client may send; larger close with 1009"
    )
    max_handshake_size: int = setting(
        16 * KiB, kind=SIZE, min=1 * KiB, max=1 * MiB,
        doc="largest opening handshake (request line and headers); larger get 431",
    )
    handshake_timeout: float = setting(
        10.0, kind=DURATION, min=0.1, max=300, doc="seconds a client has to complete the opening handshake"
    )
    ping_interval: float = setting(
        30.0, kind=DURATION, min=0, max=86400,
        doc="seconds of silence after which the server pings a client (0: no pings)",
    )
    ping_timeout: float = setting(
        15.0, kind=DURATION, min=0.1, max=3600,
        doc="seconds a client has to answer a ping; then the connection is dropped",
    )
    allowed_origins: tuple[str, ...] = setting(
        (), kind=STRINGS,
        doc='browser origins allowed besides pages from the host the client connected to, e.g. '
        '["https://chat.example.com"]; "*" allows any; others get 403',
    )
    compression: bool = setting(
        False,
        doc="accept permessage-deflate; each connection using it holds about 300 KiB of zlib state "
        "(max_message_size bounds what a message may inflate to)",
    )
    request_rate: float = setting(100.0, min=0.01, max=1_000_000, doc="chat requests per second per connection")
    request_burst: int = setting(200, min=1, max=1_000_000, doc="chat requests a connection may send at once")
    anonymous: AnonymousMode = anonymous_setting()
    max_queued: int = setting(
        32, min=1, max=100_000,
        doc="chat requests waiting behind a slow one (a room loading) before the connection is not read",
    )


def make_factory(name: str, cfg: WebSocketConfig, ctx: BuildContext) -> WebSocketFactory:
    """The factory for C{[services.NAME]}: its connections, whether on its own port or mounted in HTTP."""
    services = ctx.shared
    h = ctx.config.hub
    chat = ChatSettings(
        services=services, router=router, request_rate=cfg.request_rate, request_burst=cfg.request_burst,
        max_queued=cfg.max_queued, anonymous=cfg.anonymous,
        limits={
            "max_message_size": cfg.max_message_size, "max_text_length": h.max_text_length,
            "max_nick_length": h.max_nick_length, "max_room_length": h.max_room_length,
            "publish_rate": h.publish_rate, "history_size": h.history_size,
        },
    )
    return WebSocketFactory(
        name,
        {"/echo": EchoRoute, "/chat": partial(ChatRoute, settings=chat)},
        max_connections=cfg.max_connections, max_message_size=cfg.max_message_size,
        max_frame_size=cfg.max_frame_size, max_handshake_size=cfg.max_handshake_size,
        handshake_timeout=cfg.handshake_timeout, ping_interval=cfg.ping_interval, ping_timeout=cfg.ping_timeout,
        idle_timeout=cfg.idle_timeout, allowed_origins=cfg.allowed_origins, compression=cfg.compression,
        max_pending=h.max_pending, metrics=ctx.metrics, clock=ctx.reactor,
    )


class WebSocketService(StreamListenerService):
    """The WebSocket listener; C{factory} also serves the connections the HTTP site hands over from /ws."""

    factory: WebSocketFactory


def build(name: str, cfg: WebSocketConfig, ctx: BuildContext) -> IService:
    """The WebSocket listener for C{[services.NAME]}."""
    factory = make_factory(name, cfg, ctx)
    return WebSocketService(name, cfg.endpoint, factory, ctx.reactor, ctx.config.daemon.shutdown_timeout)
