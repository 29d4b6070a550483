"""The docs stay true: every config key is documented, CI runs the README's test command."""

from __future__ import annotations

import re

from twisted.trial.unittest import TestCase

from myservices.config import DaemonConfig
from myservices.db.config import DatabaseConfig
from myservices.registry import service_kinds
from myservices.validate import describe_settings
from tests.support import REPO


class DocsTests(TestCase):
    def test_every_config_key_is_in_the_reference(self) -> None:
        text = (REPO / "docs" / "configuration.md").read_text()
        sections = {m.group(1): m.end() for m in re.finditer(r"^### \[([^\]]+)\]$", text, re.MULTILINE)}
        from myservices.accounts import AccountsConfig
        from myservices.hub.config import HubConfig
        from myservices.hub.policy_config import RoomsConfig
        from myservices.kv import KeyValueConfig
        from myservices.operator.config import AdminConfig
        from myservices.tokens import TokensConfig
        from myservices.web.api_keys import ApiConfig

        tables = {
            "daemon": DaemonConfig, "database": DatabaseConfig, "hub": HubConfig, "accounts": AccountsConfig,
            "kv": KeyValueConfig, "tokens": TokensConfig, "rooms": RoomsConfig,
            "api": ApiConfig,
            "admin": AdminConfig,
        }
        tables.update({f"services.{name}": kind.config for name, kind in service_kinds().items()})
        for section, cls in tables.items():
            self.assertIn(section, sections, f"docs/configuration.md has no ### [{section}]")
            start = sections[section]
            following = [pos for pos in sections.values() if pos > start]
            body = text[start : min(following, default=len(text))]
            for key, *_ in describe_settings(cls):
                self.assertIn(f"| `{key}` |", body, f"[{section}] {key} is not documented")

    def test_ci_runs_exactly_the_readme_test_command(self) -> None:
        readme = (REPO / "README.md").read_text()
        commands = re.findall(r"```sh\n(.+?)\n```", readme)
        test_command = next(c for c in commands if "pytest" in c)
        ci = (REPO / ".ci" / "run").read_text()
        self.assertIn(test_command, ci.splitlines())

    def test_readme_run_command_uses_the_shipped_default_config(self) -> None:
        readme = (REPO / "README.md").read_text()
        self.assertIn("twistd -n --pidfile= myservices --config config/myservices.toml", readme)
        self.assertTrue((REPO / "config" / "myservices.toml").exists())

    def test_every_error_code_is_documented_with_its_retry_hint(self) -> None:
        from myservices.errors import ERRORS

        text = (REPO / "docs" / "protocols.md").read_text()
        table = text[text.index("## Error codes") :]
        for code, error in ERRORS.items():
            row = next((line for line in table.splitlines() if line.startswith(f"| `{code}` |")), None)
            self.assertIsNotNone(row, f"{code} is not in the error table of docs/protocols.md")
            self.assertEqual(row.rstrip(" |").rsplit("| ", 1)[1].startswith("yes"), error.retry, row)


    def test_every_metric_is_documented(self) -> None:
        from myservices.metrics import Metrics

        text = (REPO / "docs" / "metrics.md").read_text()
        for family in Metrics().registry.collect():
            if family.name.startswith("myservices_"):
                self.assertIn(f"| `{family.name}` |", text, f"{family.name} is not in docs/metrics.md")
