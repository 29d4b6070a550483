"""UDP echo: each datagram back to its sender; datagrams over the size limit are dropped and counted."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.application.service import IService
from twisted.internet.interfaces import IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from myservices.context import BuildContext
from myservices.endpoints import parse_udp_endpoint
from myservices.listeners import UdpListenerService
from myservices.metrics import ServiceMetrics
from myservices.settings import KiB, SIZE, UDP_ENDPOINT, ServiceConfig, setting


@dataclass(frozen=True, kw_only=True)
class UdpConfig(ServiceConfig):
    """[services.udp]"""

    endpoint: str = setting(kind=UDP_ENDPOINT, doc='"udp:PORT" or "udp:PORT:interface=ADDRESS"')
    max_datagram: int = setting(
        8 * KiB, kind=SIZE, min=1, max=65507, doc="largest datagram echoed; larger ones are dropped and counted"
    )


class UdpEchoProtocol(DatagramProtocol):
    """Echoes datagrams. Twisted reads at most C{max_datagram + 1} bytes, so a longer one is detectable."""

    log = Logger()
    noisy = False
    transport: IUDPTransport  # set before datagrams arrive

    def __init__(self, max_datagram: int, metrics: ServiceMetrics) -> None:
        self.max_datagram = max_datagram
        self.metrics = metrics

    def datagramReceived(self, datagram: bytes, addr: tuple) -> None:
        self.metrics.messages_in.inc()
        self.metrics.bytes_in.inc(len(datagram))
        if len(datagram) > self.max_datagram:
            self.metrics.dropped("oversize")
            return
        try:
            self.transport.write(datagram, addr)
        except OSError as e:
            # e.g. the socket buffer is full: UDP may drop, the service must not fail
            self.metrics.dropped("send_error")
            self.log.debug("udp send to {peer} failed: {error}", peer=addr, error=e)
            return
        self.metrics.messages_out.inc()
        self.metrics.bytes_out.inc(len(datagram))


def build(name: str, cfg: UdpConfig, ctx: BuildContext) -> IService:
    endpoint = parse_udp_endpoint(cfg.endpoint)
    proto = UdpEchoProtocol(cfg.max_datagram, ctx.metrics.for_service(name))
    return UdpListenerService(
        name, cfg.endpoint, endpoint.port, endpoint.interface, proto, cfg.max_datagram + 1, ctx.reactor
    )
