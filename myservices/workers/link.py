"""The control connection between the supervisor and one worker: a socketpair, one JSON object per line.

A worker sends what a daemon tells systemd (``READY``, ``STATUS``,
``WATCHDOG``, ``STOPPING``; the same fields as sd_notify) and ``RELOADED``
after a SIGHUP; the supervisor sends which workers are ready (``WORKERS``,
``READY_WORKERS``), for the workers' ``/readyz``. When either end goes away
the other learns it at once: a worker whose supervisor was killed stops.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

Message = dict[str, Any]


class LinkProtocol(LineOnlyReceiver):
    """One end of the control connection: C{on_message} for each object read, C{on_lost} once it ends."""

    log = Logger()
    delimiter = b"\n"
    MAX_LENGTH = 64 * 1024  # a STATUS line names every listener; nothing legitimate comes near it

    def __init__(self, on_message: Callable[[Message], None], on_lost: Callable[[], None]) -> None:
        self.on_message = on_message
        self.on_lost = on_lost
        self.connected_ = False

    def connectionMade(self) -> None:
        self.connected_ = True

    def send(self, message: Message) -> bool:
        """Send C{message}; False when the connection is gone."""
        if not self.connected_:
            return False
        self.sendLine(json.dumps(message).encode())
        return True

    def lineReceived(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            self.log.error("control connection: not a JSON object: {line!r}", line=line[:200])
            return
        try:
            self.on_message(message)
        except Exception:
            self.log.failure("control connection: handling {control!r} failed", control=message)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.log.error("control connection: a line over {limit} bytes; closing it", limit=self.MAX_LENGTH)
        self.transport.abortConnection()  # type: ignore[union-attr]  # connected: set before data arrives

    def close(self) -> None:
        """Close once what was sent is written (the peer is our own process's parent or child, and reads)."""
        if self.connected_:
            self.transport.loseConnection()  # type: ignore[union-attr]  # connected: set before data arrives

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.connected_ = False
        self.on_lost()


class _One(Factory[Protocol]):
    def __init__(self, protocol: LinkProtocol) -> None:
        self.protocol_instance = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.protocol_instance


def adopt_link(reactor: Any, sock: socket.socket, protocol: LinkProtocol) -> None:
    """Run C{protocol} over the connected unix socket C{sock} (which is closed: the transport holds a copy)."""
    try:
        reactor.adoptStreamConnection(sock.fileno(), socket.AF_UNIX, _One(protocol))
    finally:
        sock.close()
