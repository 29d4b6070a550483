"""The systemd notify protocol: READY only once every listener is bound, STOPPING on stop."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from myservices.sdnotify import Notifier, Watchdog
from tests.support import LOCAL_SERVICES, load, start_tree


class NotifySocketTestCase(TestCase):
    """A test that is the service manager: it listens on its own notify socket."""

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



class NotifierTests(NotifySocketTestCase):
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


class WatchdogTests(NotifySocketTestCase):
    def test_interval_is_half_of_watchdog_usec_for_this_process_only(self) -> None:
        env = {"NOTIFY_SOCKET": "/run/notify", "WATCHDOG_USEC": "30000000"}
        self.assertEqual(Notifier(env).watchdog_interval, 15.0)
        self.assertEqual(Notifier({**env, "WATCHDOG_PID": str(os.getpid())}).watchdog_interval, 15.0)
        self.assertIsNone(Notifier({**env, "WATCHDOG_PID": "1"}).watchdog_interval)
        self.assertIsNone(Notifier({**env, "WATCHDOG_USEC": "nonsense"}).watchdog_interval)
        self.assertIsNone(Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval)

    def test_pings_from_a_reactor_timer(self) -> None:
        sock, path = self.listen()
        clock = Clock()
        watchdog = Watchdog(Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"}), clock)
        watchdog.start()
        self.assertEqual(self.messages(sock), ["WATCHDOG=1"])
        clock.advance(4.9)
        self.assertEqual(self.messages(sock), [])
        clock.advance(0.1)
        clock.advance(5)
        self.assertEqual(self.messages(sock), ["WATCHDOG=1", "WATCHDOG=1"])
        watchdog.stop()
        clock.advance(60)
        self.assertEqual(self.messages(sock), [])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_an_error_in_one_ping_does_not_stop_the_pings(self) -> None:
        sock, path = self.listen()
        clock = Clock()
        notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"})
        real_notify, failures = notifier.notify, []

        def notify(**fields: str) -> bool:
            if not failures:
                failures.append(fields)
                raise RuntimeError("one bad tick")
            return real_notify(**fields)

        notifier.notify = notify  # type: ignore[method-assign]
        watchdog = Watchdog(notifier, clock)
        watchdog.start()  # the first ping fails
        clock.advance(5)
        clock.advance(5)
        self.assertEqual(self.messages(sock), ["WATCHDOG=1", "WATCHDOG=1"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        watchdog.stop()

    def test_without_watchdog_usec_there_is_no_timer(self) -> None:
        sock, path = self.listen()
        clock = Clock()
        Watchdog(Notifier({"NOTIFY_SOCKET": path}), clock).start()
        self.assertEqual(clock.getDelayedCalls(), [])

    async def test_tree_starts_the_watchdog_after_ready_and_stops_it_on_stop(self) -> None:
        sock, path = self.listen()
        notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "60000000"})
        tree = await start_tree(self, load(self, LOCAL_SERVICES), notifier=notifier)
        ready, ping = self.messages(sock)
        self.assertTrue(ready.startswith("READY=1\n"))
        self.assertEqual(ping, "WATCHDOG=1")
        await tree.stopService()
        self.assertFalse(tree.getServiceNamed("watchdog")._loop.running)
