"""``twistd myservices``: command-line options and the service maker."""

from __future__ import annotations

import sys

from twisted.application.service import IService
from twisted.python import usage

from myservices.config import ENV_ALIASES, ENV_PASSWORD, ENV_PASSWORD_FILE, ENV_PREFIX, Config, ConfigError
from myservices.db.config import parse_database_url
from myservices.registry import load_config
from myservices.tree import build_service_tree


class Options(usage.Options):
    synopsis = "--config FILE [--check]"
    longdesc = (
        "Runs the myservices daemon: every service enabled in the TOML config file, "
        "each on its configured endpoint. With --check, validates the config, prints "
        "what would listen where and exits (0: valid, 1: invalid) without binding anything. "
        f"Environment overrides: {', '.join(ENV_ALIASES)}, {ENV_PASSWORD}, {ENV_PASSWORD_FILE}, "
        f"and {ENV_PREFIX}SECTION__KEY for any key (e.g. {ENV_PREFIX}SERVICES__ECHO__ENDPOINT). "
        "See docs/configuration.md."
    )
    optParameters = [["config", "c", None, "Path of the TOML configuration file (required)."]]
    optFlags = [["check", None, "Validate the configuration, print the listeners and exit."]]

    loaded: Config

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")
        try:
            self.loaded = load_config(self["config"])
        except ConfigError as e:
            sys.stderr.write(f"{e}\n")
            sys.stderr.write(f"{e.source}: configuration is invalid ({len(e.problems)} problem(s))\n")
            raise SystemExit(1) from None
        if self["check"]:
            sys.stdout.write(describe(self.loaded))
            raise SystemExit(0)


def describe(config: Config) -> str:
    """What --check prints: the database and each configured service's endpoint."""
    url = parse_database_url(config.database.url, config.daemon.data_dir, config.database.password)
    lines = [f"{config.source}: configuration is valid", f"  data_dir  {config.daemon.data_dir}", f"  database  {url.safe}"]
    for name, cfg in config.services.items():
        endpoint = getattr(cfg, "endpoint", "")
        kind = f"  ({cfg.kind})" if cfg.kind != name else ""
        state = "" if cfg.enabled else "  (disabled)"
        lines.append(f"  {name:<9} {endpoint}{kind}{state}")
    return "\n".join(lines) + "\n"


def makeService(options: Options) -> IService:
    from twisted.internet import reactor  # the plugin wiring is the one place that picks the reactor

    # a real process: SIGHUP reloads the configuration
    return build_service_tree(options.loaded, reactor, handle_sighup=True)


