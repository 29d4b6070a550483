"""Several listeners of one kind: a [services.NAME] section whose name is not a kind says its kind."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from typing import Any

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import TestCase

from myservices.config import ConfigError
from myservices.echo import EchoConfig
from myservices.registry import load_config
from myservices.sdnotify import Notifier
from myservices.tap import describe
from tests.support import connect, load, port_of, start_tree, write_config

TWO_ECHOES = """
    [daemon]
    shutdown_timeout = 2
    [database]
    url = "sqlite:///:memory:"
    [services.echo]
    endpoint = "tcp:0:interface=127.0.0.1"
    [services.echo_alt]
    kind = "echo"
    endpoint = "tcp:0:interface=127.0.0.1"
    max_connections = 1
"""


class KindConfigTests(TestCase):
    def problems(self, text: str) -> list[str]:
        with self.assertRaises(ConfigError) as caught:
            load(self, text)
        return caught.exception.problems

    def test_a_section_names_its_kind(self) -> None:
        config = load(self, TWO_ECHOES)
        self.assertEqual(list(config.services), ["echo", "echo_alt"])
        echo, alt = config.services["echo"], config.services["echo_alt"]
        self.assertIsInstance(alt, EchoConfig)
        self.assertEqual((echo.kind, alt.kind), ("echo", "echo"))
        self.assertEqual((echo.max_connections, alt.max_connections), (1000, 1))

    def test_services_start_in_kind_order_then_file_order(self) -> None:
        config = load(
            self,
            """
            [services.http]
            endpoint = "tcp:3"
            [services.echo_b]
            kind = "echo"
            endpoint = "tcp:2"
            [services.udp]
            endpoint = "udp:4"
            [services.echo_a]
            kind = "echo"
            endpoint = "tcp:1"
            """,
        )
        self.assertEqual(list(config.services), ["echo_b", "echo_a", "udp", "http"])

    def test_environment_overrides_reach_a_named_section(self) -> None:
        config = load(self, TWO_ECHOES, {"MYSERVICES__SERVICES__ECHO_ALT__MAX_CONNECTIONS": "7"})
        self.assertEqual(config.services["echo_alt"].max_connections, 7)

    def test_a_name_that_is_not_a_kind_needs_a_kind(self) -> None:
        (problem,) = self.problems('[services.echo2]\nendpoint = "tcp:1"\n')
        self.assertTrue(
            problem.startswith("services.echo2: unknown service (expected one of chat, echo, framed, http, pb, udp, websocket"),
            problem,
        )
        self.assertIn('kind = "echo"', problem)

    def test_an_unknown_kind_is_named_with_its_path(self) -> None:
        (problem,) = self.problems('[services.echo2]\nkind = "ecoh"\nendpoint = "tcp:1"\n')
        self.assertEqual(
            problem,
            "services.echo2.kind: unknown kind 'ecoh' (expected one of chat, echo, framed, http, pb, udp, websocket)",
        )
        (problem,) = self.problems('[services.echo2]\nkind = 3\nendpoint = "tcp:1"\n')
        self.assertTrue(problem.startswith("services.echo2.kind: unknown kind 3"), problem)

    def test_a_section_named_after_a_kind_is_of_that_kind(self) -> None:
        (problem,) = self.problems('[services.chat]\nkind = "echo"\nendpoint = "tcp:1"\n')
        self.assertTrue(problem.startswith("services.chat.kind: expected 'chat'"), problem)
        config = load(self, '[services.chat]\nkind = "chat"\nendpoint = "tcp:1"\n')
        self.assertEqual(config.services["chat"].kind, "chat")

    def test_keys_of_the_kind_are_checked_with_the_sections_path(self) -> None:
        problems = self.problems('[services.udp_alt]\nkind = "udp"\nendpoint = "tcp:1"\nmax_conections = 3\n')
        self.assertIn("services.udp_alt.endpoint: expected a UDP endpoint", "\n".join(problems))
        self.assertTrue(any(p.startswith("services.udp_alt.max_conections: unknown key") for p in problems), problems)

    def test_check_shows_the_kind_of_a_named_section(self) -> None:
        text = describe(load(self, TWO_ECHOES))
        self.assertIn("  echo      tcp:0:interface=127.0.0.1\n", text)
        self.assertIn("  echo_alt  tcp:0:interface=127.0.0.1  (echo)\n", text)


class TwoEchoListenersTests(TestCase):
    timeout = 30

    def notify_socket(self) -> tuple[socket.socket, str]:
        directory = tempfile.mkdtemp(prefix="myservices-")  # AF_UNIX paths are short
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(path)
        sock.setblocking(False)
        return sock, path

    async def test_both_listen_and_each_is_a_service_of_its_own(self) -> None:
        sock, path = self.notify_socket()
        tree = await start_tree(self, load(self, TWO_ECHOES), notifier=Notifier({"NOTIFY_SOCKET": path}))
        self.assertEqual(list(tree.listeners), ["echo", "echo_alt"])
        echo, alt = port_of(tree, "echo"), port_of(tree, "echo_alt")
        self.assertNotEqual(echo, alt)
        first = await connect(self, echo)
        second = await connect(self, alt)
        first.transport.write(b"to the first")
        second.transport.write(b"to the second")
        self.assertEqual(await first.receive(12), b"to the first")
        self.assertEqual(await second.receive(13), b"to the second")

        # metrics are labelled by the service name
        def received(service: str) -> float | None:
            return tree.metrics.registry.get_sample_value("myservices_received_bytes_total", {"service": service})

        self.assertEqual((received("echo"), received("echo_alt")), (12.0, 13.0))
        # limits are per section: echo_alt serves one connection at a time
        refused = await connect(self, alt)
        await refused.closed
        self.assertEqual(refused.data, b"BUSY too many connections, try again later\r\n")
        # READY names both in the STATUS line
        ready = sock.recv(4096).decode()
        self.assertEqual(ready, f"READY=1\nSTATUS=serving echo=127.0.0.1:{echo}, echo_alt=127.0.0.1:{alt}")

    async def test_reload_applies_a_change_to_one_of_them(self) -> None:
        path = write_config(self, TWO_ECHOES)
        tree = await start_tree(self, load_config(path, environ={}))
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        path.write_text(path.read_text().replace("max_connections = 1", "max_connections = 5"))
        self.assertTrue(tree.getServiceNamed("reload").reload(environ={}))
        self.assertEqual(tree.listeners["echo_alt"].factory.max_connections, 5)
        self.assertEqual(tree.listeners["echo"].factory.max_connections, 1000)
        applied = [e["key"] for e in events if e.get("log_format") == "reload: {key} = {value}"]
        self.assertEqual(applied, ["services.echo_alt.max_connections"])
        self.assertEqual([e for e in events if e.get("log_level") == LogLevel.warn], [])

    async def test_a_change_of_kind_needs_a_restart(self) -> None:
        path = write_config(self, TWO_ECHOES)
        tree = await start_tree(self, load_config(path, environ={}))
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        path.write_text(path.read_text().replace('kind = "echo"', 'kind = "chat"'))
        self.assertTrue(tree.getServiceNamed("reload").reload(environ={}))
        warnings = [e["key"] for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(warnings, ["services.echo_alt"])
        self.assertEqual(tree.listeners["echo_alt"].factory.max_connections, 1)
