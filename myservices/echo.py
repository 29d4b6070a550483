"""TCP echo: every byte back to its sender, with backpressure and an idle timeout."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application.service import IService
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from myservices.context import BuildContext
from myservices.halfclose import HalfCloseableProtocol
from myservices.listeners import ConnectionTrackingFactory, StreamListenerService
from myservices.metrics import ServiceMetrics
from myservices.outbound import release_if_closing
from myservices.settings import StreamServiceConfig


@dataclass(frozen=True, kw_only=True)
class EchoConfig(StreamServiceConfig):
    """[services.echo]: the stream listener keys only."""


@implementer(IPushProducer)
class _ReadThrottle:
    """Registered as the producer of a connection's own writes: a full write
    buffer pauses reading from that connection, a drained one resumes it."""

    # the connection's transport: a push producer (pause, resume) and a consumer (release_if_closing)
    def __init__(self, transport: Any, metrics: ServiceMetrics) -> None:
        self._transport = transport
        self._metrics = metrics
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True
        self._metrics.backpressure_pauses.inc()
        self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        if not release_if_closing(self._transport):
            self._transport.resumeProducing()

    def stopProducing(self) -> None:
        self._transport.loseConnection()


class EchoProtocol(HalfCloseableProtocol, TimeoutMixin):
    """Writes back what it reads.

    When the peer does not read, the write buffer fills, Twisted pauses the
    L{_ReadThrottle} and the server stops reading from that peer: memory stays
    bounded by the transport's buffer, and the peer's writes block in its own
    kernel buffers. A peer that closes its side gets everything echoed, then
    the server closes.
    """

    factory: EchoFactory
    throttle: _ReadThrottle

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:  # noqa: N802 (TimeoutMixin's)
        """TimeoutMixin schedules through this: on the factory's clock."""
        return self.factory.clock.callLater(period, func)

    def connectionMade(self) -> None:
        super().connectionMade()
        self.throttle = _ReadThrottle(self.transport, self.factory.metrics)
        self.transport.registerProducer(self.throttle, True)
        self.setTimeout(self.factory.idle_timeout or None)

    def dataReceived(self, data: bytes) -> None:
        if self.closing_gracefully:
            return  # what TLS still delivers while the close waits for the peer's close_notify
        self.resetTimeout()
        n = len(data)
        self.factory.metrics.bytes_in.inc(n)
        self.factory.metrics.bytes_out.inc(n)
        self.transport.write(data)

    def stop_timers(self) -> None:
        self.setTimeout(None)

    def lose_connection(self) -> None:
        if not self.throttle.paused:
            self.transport.unregisterProducer()  # as an Outbound does (see Outbound.release): TLS waits for it
        super().lose_connection()

    def timeoutConnection(self) -> None:
        self.factory.metrics.closed("idle_timeout")
        # abort: a peer that stopped reading would keep a graceful close waiting forever
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.setTimeout(None)
        super().connectionLost(reason)


class EchoFactory(ConnectionTrackingFactory):
    """Per-listener configuration and bookkeeping for L{EchoProtocol}."""

    protocol = EchoProtocol
    idle_timeout: float  # live settings: set by configure()
    live_settings = ("max_connections", "idle_timeout")

    def __init__(
        self, service_name: str, cfg: EchoConfig, metrics: ServiceMetrics, clock: IReactorTime
    ) -> None:
        super().__init__(service_name, cfg.max_connections, metrics, clock)
        self.configure(cfg)


def build(name: str, cfg: EchoConfig, ctx: BuildContext) -> IService:
    """The echo listener service for C{[services.NAME]}."""
    factory = EchoFactory(name, cfg, ctx.metrics.for_service(name), ctx.reactor)
    return StreamListenerService(name, cfg.endpoint, factory, ctx.reactor, ctx.config.daemon.shutdown_timeout)
