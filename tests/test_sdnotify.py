"""The systemd notify protocol: READY only once every listener is bound, STOPPING on stop."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

from twisted.trial.unittest import TestCase

from myservices.sdnotify import Notifier
from tests.support import LOCAL_SERVICES, load, start_tree


class NotifierTests(TestCase):
    def listen(self) -> tuple[socket.socket, str]:
        directory = tempfile.mkdtemp(prefix="myservices-")  # AF_UNIX paths are short
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(path)
        sock.setblocking(False)
        return sock, path

    def messages(self, sock: socket.socket) -> list[str]:
        out = []
        while True:
            try:
                out.append(sock.recv(4096).decode())
            except BlockingIOError:
                return out

    def test_without_notify_socket_nothing_is_sent(self) -> None:
        self.assertFalse(Notifier({}).notify(READY="1"))

    def test_abstract_socket_address(self) -> None:
        self.assertEqual(Notifier({"NOTIFY_SOCKET": "@name"}).address, "\0name")

    def test_message_format(self) -> None:
        sock, path = self.listen()
        self.assertTrue(Notifier({"NOTIFY_SOCKET": path}).notify(READY="1", STATUS="ok"))
        self.assertEqual(self.messages(sock), ["READY=1\nSTATUS=ok"])

    def test_unreachable_socket_is_logged_not_raised(self) -> None:
        self.assertFalse(Notifier({"NOTIFY_SOCKET": "/nonexistent/notify"}).notify(READY="1"))
        self.flushLoggedErrors()

    async def test_tree_announces_ready_with_bound_addresses_then_stopping(self) -> None:
        sock, path = self.listen()
        tree = await start_tree(self, load(self, LOCAL_SERVICES), notifier=Notifier({"NOTIFY_SOCKET": path}))
        (ready,) = self.messages(sock)
        echo, udp = tree.address("echo"), tree.address("udp")
        self.assertEqual(ready, f"READY=1\nSTATUS=serving echo=127.0.0.1:{echo.port}, udp=127.0.0.1:{udp.port}")
        await tree.stopService()
        self.assertEqual(self.messages(sock), ["STOPPING=1\nSTATUS=stopping"])
