"""systemd's notify protocol (sd_notify), standard library only.

A unit with ``Type=notify`` waits for READY=1; STATUS= lines show in
``systemctl status``. Outside systemd (no NOTIFY_SOCKET) every call is a no-op,
so the daemon and tests can use the same code path.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from twisted.logger import Logger


class Notifier:
    """Sends notify messages to C{$NOTIFY_SOCKET}; a leading ``@`` means an abstract socket."""

    log = Logger()

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, **fields: str) -> bool:
        """Send C{KEY=value} lines, e.g. C{notify(READY="1", STATUS="serving")}; True if sent."""
        if not self.address:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)  # a datagram to a local socket; never wait on the reactor thread
                sock.sendto(message, self.address)
        except OSError as e:
            self.log.warn("cannot notify the service manager at {address}: {error}", address=self.address, error=e)
            return False
        return True
