"""The service tree and the twistd plugin: building, --check, startup failures, stop order."""

from __future__ import annotations

import io
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from twisted.application.service import IService
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import _parse  # Twisted's own reading of an endpoint string
from twisted.logger import globalLogPublisher
from twisted.plugin import getPlugins
from twisted.trial.unittest import TestCase

from myservices import tap
from myservices.config import RESERVED_SERVICE_NAMES, ConfigError
from myservices.endpoints import resolve_endpoint_paths, split_description
from myservices.listeners import ListenError, format_address
from myservices.registry import load_config
from myservices.tree import OrderedMultiService, build_service_tree
from tests.support import LOCAL_SERVICES, REPO, load, start_tree, write_config


class PluginTests(TestCase):
    def test_twistd_finds_the_plugin(self) -> None:
        from twisted.plugins import myservices_plugin  # noqa: F401 (installed into twisted/plugins/)
        from twisted.application.service import IServiceMaker

        names = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("myservices", names)
        self.assertEqual(names["myservices"].module, "myservices.tap")


class OptionsTests(TestCase):
    def run_options(self, *argv: str) -> tuple[int | None, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        code = None
        try:
            tap.Options().parseOptions(list(argv))
        except SystemExit as e:
            code = e.code
        return code, out.getvalue(), err.getvalue()

    def test_check_valid_config_exits_zero_and_lists_listeners(self) -> None:
        code, out, err = self.run_options("--check", "--config", str(REPO / "config" / "myservices.toml"))
        self.assertEqual(code, 0, err)
        self.assertIn("configuration is valid", out)
        self.assertIn("echo      tcp:1234:interface=127.0.0.1", out)
        self.assertIn("udp       udp:10004:interface=127.0.0.1", out)

    def test_check_misspelt_key_exits_one_and_names_it(self) -> None:
        path = write_config(self, '[services.echo]\nendpiont = "tcp:1234"\n')
        code, out, err = self.run_options("--check", "--config", str(path))
        self.assertEqual(code, 1)
        self.assertIn(f"{path}: services.echo.endpiont: unknown key", err)
        self.assertIn("configuration is invalid", err)

    def test_invalid_config_without_check_also_exits_one(self) -> None:
        path = write_config(self, '[services.echo]\nendpoint = "tcp:nope"\n')
        code, _, err = self.run_options("--config", str(path))
        self.assertEqual(code, 1)
        self.assertIn("services.echo.endpoint: expected a Twisted endpoint string", err)

    def test_config_is_required(self) -> None:
        from twisted.python.usage import UsageError

        with self.assertRaises(UsageError):
            tap.Options().parseOptions([])

    def test_check_does_not_print_the_password(self) -> None:
        path = write_config(self, '[database]\nurl = "mysql://u:hunter2@db:3306/x"\n')
        code, out, err = self.run_options("--check", "--config", str(path))
        self.assertEqual(code, 0, err)
        self.assertIn("mysql://u:***@db:3306/x", out)
        self.assertNotIn("hunter2", out + err)

    def test_make_service_builds_the_tree_without_starting_it(self) -> None:
        options = tap.Options()
        options.parseOptions(["--config", str(REPO / "config" / "myservices.toml")])
        root = tap.makeService(options)
        self.assertTrue(IService.providedBy(root))
        self.assertEqual([s.name for s in root], ["watchdog", "database", "reactor-lag", "hub-lease", "hub", "password-hasher", "counter", "operator", "echo", "chat", "udp", "websocket", "http", "framed", "pb", "notify", "reload"])
        self.assertFalse(root.running)
        self.assertIsNone(root.database.pool)
        # the daemon's own services take names no [services.NAME] may have
        self.assertLessEqual({s.name for s in root} - {"echo", "chat", "udp", "websocket", "http", "framed", "pb"},
                             RESERVED_SERVICE_NAMES)


class TreeTests(TestCase):
    def test_port_in_use_aborts_startup_naming_the_service(self) -> None:
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        config = load(self, f'[services.echo]\nendpoint = "tcp:{port}:interface=127.0.0.1"\n')
        tree = build_service_tree(config, reactor)
        with self.assertRaises(ListenError) as caught:
            tree.privilegedStartService()
        message = str(caught.exception)
        self.assertIn(f"services.echo: cannot listen on tcp:{port}:interface=127.0.0.1", message)
        self.assertIn("in use", message)

    def test_udp_port_in_use_aborts_startup(self) -> None:
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(blocker.close)
        blocker.bind(("127.0.0.1", 0))
        port = blocker.getsockname()[1]
        config = load(self, f'[services.udp]\nendpoint = "udp:{port}:interface=127.0.0.1"\n')
        tree = build_service_tree(config, reactor)
        with self.assertRaises(ListenError) as caught:
            tree.privilegedStartService()
        self.assertIn(f"services.udp: cannot listen on udp:{port}:interface=127.0.0.1", str(caught.exception))

    def test_systemd_endpoint_without_an_inherited_socket_aborts_startup(self) -> None:
        config = load(self, '[services.echo]\nendpoint = "systemd:domain=INET:index=0"\n')
        tree = build_service_tree(config, reactor)
        with self.assertRaises(ListenError) as caught:
            tree.privilegedStartService()
        self.assertIn("services.echo: cannot listen on systemd:domain=INET:index=0: no inherited socket", str(caught.exception))

    async def test_startup_logs_each_service_with_its_bound_address(self) -> None:
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        tree = await start_tree(self, load(self, LOCAL_SERVICES))
        listening = {e["service"]: e for e in events if e.get("log_format", "").endswith("(bound to {address})")}
        self.assertEqual(set(listening), {"echo", "udp"})
        self.assertEqual(listening["echo"]["endpoint"], "tcp:0:interface=127.0.0.1")
        self.assertEqual(listening["echo"]["address"], f"127.0.0.1:{tree.address('echo').port}")
        self.assertNotEqual(tree.address("echo").port, 0)

    async def test_unix_socket_endpoint(self) -> None:
        directory = tempfile.mkdtemp(prefix="ms-")  # AF_UNIX paths are short
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "echo.sock")
        tree = await start_tree(self, load(self, f'[services.echo]\nendpoint = "unix:{path}"\n'))
        from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
        from tests.support import Collector

        client = Collector()
        await connectProtocol(UNIXClientEndpoint(reactor, path), client)
        client.transport.write(b"over unix")
        self.assertEqual(await client.receive(9), b"over unix")
        client.transport.loseConnection()
        await client.closed
        self.assertEqual(format_address(tree.address("echo")), path)


def write_self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway key and certificate for 127.0.0.1, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


class TlsTests(TestCase):
    async def test_ssl_endpoint_serves_echo_over_tls(self) -> None:
        from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        from tests.support import Collector

        key, cert = write_self_signed_certificate(Path(self.mktemp()).resolve())
        endpoint = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        tree = await start_tree(self, load(self, f'[services.echo]\nendpoint = "{endpoint}"\n'))
        trust = Certificate.loadPEM(cert.read_bytes())
        client = Collector()
        options = optionsForClientTLS("127.0.0.1", trustRoot=trust)
        await connectProtocol(SSL4ClientEndpoint(reactor, "127.0.0.1", tree.address("echo").port, options), client)
        client.transport.write(b"secret" * 10000)
        self.assertEqual(await client.receive(60000), b"secret" * 10000)
        client.transport.loseConnection()
        await client.closed


class RelativeEndpointPathTests(TestCase):
    """Paths inside endpoint strings are relative to the config file, whatever the working directory."""

    def test_an_abstract_unix_socket_is_not_a_path(self) -> None:
        self.assertEqual(resolve_endpoint_paths("unix:\0myservices", Path("/etc/x")), "unix:\0myservices")

    def test_a_directory_with_an_equals_sign_stays_one_path(self) -> None:
        resolved = resolve_endpoint_paths("unix:run/chat.sock", Path("/etc/my=services"))
        self.assertEqual(split_description(resolved), (["unix", "/etc/my=services/run/chat.sock"], {}))
        self.assertEqual(_parse(resolved), (["unix", "/etc/my=services/run/chat.sock"], {}))

    def elsewhere(self) -> None:
        cwd = Path(self.mktemp()).resolve()
        cwd.mkdir(parents=True)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(cwd)

    async def test_ssl_files_relative_to_the_config_file(self) -> None:
        from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        from tests.support import Collector

        config_dir = Path(self.mktemp()).resolve()
        key, cert = write_self_signed_certificate(config_dir / "tls")
        path = config_dir / "myservices.toml"
        path.write_text(
            '[database]\nurl = "sqlite:///:memory:"\n'
            '[services.echo]\nendpoint = "ssl:0:interface=127.0.0.1:privateKey=tls/key.pem:certKey=tls/cert.pem"\n'
        )
        self.elsewhere()  # no tls/ here: the daemon must not look in the working directory
        config = load_config(path, environ={})
        self.assertEqual(
            config.services["echo"].endpoint, f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        )
        tree = await start_tree(self, config)
        client = Collector()
        options = optionsForClientTLS("127.0.0.1", trustRoot=Certificate.loadPEM(cert.read_bytes()))
        await connectProtocol(SSL4ClientEndpoint(reactor, "127.0.0.1", tree.address("echo").port, options), client)
        client.transport.write(b"over tls")
        self.assertEqual(await client.receive(8), b"over tls")
        client.transport.loseConnection()
        await client.closed

    async def test_a_unix_socket_relative_to_the_config_file(self) -> None:
        config_dir = Path(tempfile.mkdtemp(prefix="ms-"))  # AF_UNIX paths are short
        self.addCleanup(shutil.rmtree, config_dir, True)
        path = config_dir / "myservices.toml"
        path.write_text('[database]\nurl = "sqlite:///:memory:"\n[services.echo]\nendpoint = "unix:echo.sock:mode=600"\n')
        self.elsewhere()
        tree = await start_tree(self, load_config(path, environ={}))
        self.assertEqual(format_address(tree.address("echo")), str(config_dir / "echo.sock"))
        self.assertTrue((config_dir / "echo.sock").exists())

    def test_a_missing_relative_key_is_reported_at_its_resolved_path(self) -> None:
        path = write_config(self, '[services.echo]\nendpoint = "ssl:1234:privateKey=tls/key.pem"\n').resolve()
        self.elsewhere()
        with self.assertRaises(ConfigError) as caught:
            load_config(path, environ={})
        self.assertIn(f"cannot read {path.parent / 'tls' / 'key.pem'}: No such file", caught.exception.problems[0])


class OrderedStopTests(TestCase):
    def test_children_stop_one_at_a_time_last_added_first(self) -> None:
        from twisted.application.service import Service

        order: list[str] = []
        gates: dict[str, Deferred[None]] = {}

        class Recorder(Service):
            def stopService(self) -> Deferred[None]:
                super().stopService()
                order.append(self.name)
                gates[self.name] = Deferred()
                return gates[self.name]

        root = OrderedMultiService()
        for name in ("database", "echo", "udp"):
            child = Recorder()
            child.setName(name)
            child.setServiceParent(root)
        root.startService()
        done = root.stopService()
        self.assertEqual(order, ["udp"])
        gates["udp"].callback(None)
        self.assertEqual(order, ["udp", "echo"])
        gates["echo"].callback(None)
        self.assertEqual(order, ["udp", "echo", "database"])
        self.assertNoResult(done)
        gates["database"].callback(None)
        self.successResultOf(done)

    def test_parallel_children_stop_together_in_their_place(self) -> None:
        from twisted.application.service import Service

        order: list[str] = []
        gates: dict[str, Deferred[None]] = {}

        class Recorder(Service):
            def stopService(self) -> Deferred[None]:
                super().stopService()
                order.append(self.name)
                gates[self.name] = Deferred()
                return gates[self.name]

        root = OrderedMultiService()
        root.parallel_stop = {"echo", "udp"}
        for name in ("watchdog", "database", "echo", "udp", "notify"):
            child = Recorder()
            child.setName(name)
            child.setServiceParent(root)
        root.startService()
        done = root.stopService()
        self.assertEqual(order, ["notify"])  # added after the listeners: stops before them
        gates["notify"].callback(None)
        self.assertEqual(order, ["notify", "udp", "echo"])  # the listeners together
        gates["udp"].callback(None)
        self.assertEqual(order, ["notify", "udp", "echo"])
        gates["echo"].callback(None)
        self.assertEqual(order, ["notify", "udp", "echo", "database"])
        gates["database"].callback(None)
        self.assertEqual(order, ["notify", "udp", "echo", "database", "watchdog"])
        gates["watchdog"].callback(None)
        self.successResultOf(done)
