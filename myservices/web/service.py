"""The HTTP service: the durable request counter, health, readiness, metrics and login on one twisted.web Site."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from twisted.application.service import IService

from myservices.context import BuildContext
from myservices.listeners import StreamListenerService
from myservices.settings import DURATION, SIZE, KiB, MiB, ServiceConfig, StreamServiceConfig, setting
from myservices.web.api import Api, mount_api
from myservices.web.api_keys import ApiKeys
from myservices.web.auth import LoginApi, LogoutApi
from myservices.web.channel import HttpLimits
from myservices.web.pages import static_directory
from myservices.web.resources import CounterApi, CounterPage, HttpErrors, Healthz, JsonRoot, MetricsPage, Readyz
from myservices.web.site import HttpSite
from myservices.web.upgrade import WebSocketMount

@dataclass(frozen=True, kw_only=True)
class HttpConfig(StreamServiceConfig):
    """[services.http]: the stream listener keys and the HTTP limits."""

    idle_timeout: float = setting(
        60.0, kind=DURATION, min=0, max=86400,
        doc="seconds a keep-alive connection may sit idle between requests (0: never closed)",
    )
    request_timeout: float = setting(
        30.0, kind=DURATION, min=0, max=3600,
        doc="seconds from a request's first byte to its last; slower requests get 408 (0: no limit)",
    )
    max_body_size: int = setting(
        1 * MiB, kind=SIZE, min=0, max=1024 * MiB, doc="largest request body; larger ones get 413"
    )
    max_header_size: int = setting(
        16 * KiB, kind=SIZE, min=256, max=1 * MiB,
        doc="largest request line plus headers; larger get 431 (414 for the request line alone)",
    )
    max_headers: int = setting(100, min=1, max=10_000, doc="most header lines in a request; more get 431")
    max_pending_output: int = setting(
        64 * KiB, kind=SIZE, min=0, max=64 * MiB,
        doc="response bytes queued for a client that does not read them (beyond the socket's buffers); "
        "past it the connection is not read and no pipelined request is answered until the client reads",
    )
    max_read_ahead: int = setting(
        64 * KiB, kind=SIZE, min=0, max=64 * MiB,
        doc="bytes of pipelined requests read while an earlier one is answered; past it the connection is not read",
    )
    access_log: bool = setting(
        False, doc="log every request (structured: peer, method, uri, status, size, duration); costs CPU"
    )
    metrics: bool = setting(True, doc="serve /metrics (Prometheus text format)")
    ready_timeout: float = setting(
        2.0, kind=DURATION, min=0.01, max=60, doc="seconds the database has to answer a /readyz probe"
    )
    retry_after: int = setting(
        5, min=1, max=3600, doc="seconds in the Retry-After header of 503 answers when the database is down"
    )
    websocket: bool = setting(
        False,
        doc="mount the [services.websocket] routes under /ws (ws://HOST:PORT/ws/chat) and serve the web chat "
        "at /chat/, so pages from this site reach them on their own origin",
    )

    def check_with(self, name: str, services: Mapping[str, ServiceConfig]) -> list[str]:
        ws = services.get("websocket")
        if self.websocket and (ws is None or not ws.enabled):
            return [f"services.{name}.websocket: true needs an enabled [services.websocket] section"]
        return []


def build(name: str, cfg: HttpConfig, ctx: BuildContext) -> IService:
    """The HTTP listener service for C{[services.NAME]}."""
    counter = ctx.counter
    errors = HttpErrors(cfg.retry_after)
    root = JsonRoot()
    root.putChild(b"", CounterPage(counter, errors))
    root.putChild(b"healthz", Healthz(ctx.worker))
    root.putChild(b"readyz", Readyz(ctx.readiness, cfg.ready_timeout))
    if cfg.metrics:
        root.putChild(b"metrics", MetricsPage(ctx.metrics, ctx.reactor))
    api = JsonRoot()
    api.putChild(b"counter", CounterApi(counter, errors))
    api.putChild(b"login", LoginApi(ctx.accounts, ctx.tokens, errors))
    api.putChild(b"logout", LogoutApi())
    keys = ApiKeys(ctx.config.api.keys, ctx.config.api.rate, ctx.config.api.burst, ctx.reactor)
    mount_api(api, Api(ctx.hub, keys, ctx.config.api, errors))
    root.putChild(b"api", api)
    limits = HttpLimits(
        max_body_size=cfg.max_body_size,
        max_header_size=cfg.max_header_size,
        max_headers=cfg.max_headers,
        request_timeout=cfg.request_timeout,
        max_pending_output=cfg.max_pending_output,
        max_read_ahead=cfg.max_read_ahead,
    )
    site = HttpSite(
        name, root, limits=limits, max_connections=cfg.max_connections, idle_timeout=cfg.idle_timeout,
        access_log=cfg.access_log, metrics=ctx.metrics, clock=ctx.reactor,
    )
    if cfg.websocket:
        websocket = ctx.services["websocket"]
        root.putChild(b"ws", WebSocketMount(websocket.factory, site))  # type: ignore[attr-defined]
        root.putChild(b"chat", static_directory("chat"))
        root.putChild(b"admin", static_directory("admin"))
    return StreamListenerService(name, cfg.endpoint, site, ctx.reactor, ctx.config.daemon.shutdown_timeout)
