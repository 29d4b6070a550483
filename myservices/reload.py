"""Reloading the configuration of a running daemon (SIGHUP): apply what can change live, log the rest.

Live: limits of each service (the keys a factory lists in C{live_settings}),
the WebSocket service's allowed_origins, the hub's publish rate and size
limits, and ``[daemon]`` shutdown_timeout, close_timeout and log_level.
Anything else (endpoints, the database, accounts, enabling a service, the
log format) is logged as needing a restart. An invalid file changes nothing.
Connections stay open either way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from myservices.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from myservices.tree import ServiceTree

log = Logger()

HUB_LIVE = ("publish_rate", "publish_burst", "max_text_length", "max_nick_length", "max_room_length", "max_rooms_per_session")


def changed_keys(old: Any, new: Any) -> list[str]:
    """The fields of two config sections that differ."""
    return [f.name for f in dataclasses.fields(old) if getattr(old, f.name) != getattr(new, f.name)]


def _shown(section: Any, key: str) -> str:
    field = next(f for f in dataclasses.fields(section) if f.name == key)
    return "(secret)" if field.metadata.get("secret") else repr(getattr(section, key))


def reload_config(tree: ServiceTree, path: str, environ: Mapping[str, str] | None = None) -> bool:
    """Read C{path} again and apply it to C{tree}; False (and nothing changed) if it is invalid."""
    try:
        new = load_config(path, environ=environ)
    except ConfigError as e:
        log.error(
            "reload: {path} is invalid; still running on the previous configuration:\n{problems}",
            path=path, problems="\n".join(e.problems),
        )
        return False
    applied: list[str] = []
    restart: list[str] = []
    _reload_daemon(tree, new, applied, restart)
    _reload_hub(tree, new, applied, restart)
    _reload_services(tree, new, applied, restart)
    for section in ("database", "accounts", "kv"):
        restart += [f"{section}.{key}" for key in changed_keys(getattr(tree.applied_config, section), getattr(new, section))]
    tree.applied_config = new
    for key in applied:
        log.info("reload: {key} = {value}", key=key, value=_value_of(new, key))
    for key in restart:
        log.warn("reload: {key} changed; restart the daemon to apply it", key=key)
    log.info(
        "reload: {path}: {applied} change(s) applied, {restart} waiting for a restart",
        path=path, applied=len(applied), restart=len(restart),
    )
    return True


def _value_of(config: Config, key: str) -> str:
    parts = key.split(".")  # daemon.KEY, hub.KEY or services.NAME.KEY
    section = config.services[parts[1]] if parts[0] == "services" else getattr(config, parts[0])
    return _shown(section, parts[-1])


def _reload_daemon(tree: ServiceTree, new: Config, applied: list[str], restart: list[str]) -> None:
    for key in changed_keys(tree.applied_config.daemon, new.daemon):
        value = getattr(new.daemon, key)
        if key == "shutdown_timeout":
            for service in tree.listeners.values():
                if hasattr(service, "shutdown_timeout"):
                    service.shutdown_timeout = value
        elif key == "close_timeout":
            # closes that start from now on
            for service in tree.listeners.values():
                if hasattr(service, "factory"):
                    service.factory.close_timeout = value
        elif key == "log_level" and tree.log_output is not None:
            tree.log_output.set_level(value)
        else:
            restart.append(f"daemon.{key}")
            continue
        applied.append(f"daemon.{key}")


def _reload_hub(tree: ServiceTree, new: Config, applied: list[str], restart: list[str]) -> None:
    hub = tree.hub
    live = {}
    for key in changed_keys(tree.applied_config.hub, new.hub):
        if key in HUB_LIVE and hub is not None:
            live[key] = getattr(new.hub, key)
            applied.append(f"hub.{key}")
        else:
            restart.append(f"hub.{key}")
    if live and hub is not None:
        hub.config = dataclasses.replace(hub.config, **live)


def _reload_services(tree: ServiceTree, new: Config, applied: list[str], restart: list[str]) -> None:
    old_services = tree.applied_config.services
    for name in sorted(old_services.keys() | new.services.keys()):
        old, cfg = old_services.get(name), new.services.get(name)
        if old is None or cfg is None or type(old) is not type(cfg):
            restart.append(f"services.{name}")
            continue
        changed = changed_keys(old, cfg)
        if not changed:
            continue
        service = tree.listeners.get(name)
        if service is None or "enabled" in changed:
            restart += [f"services.{name}.{key}" for key in changed]
            continue
        later = service.reconfigure(cfg, changed)
        restart += [f"services.{name}.{key}" for key in later]
        applied += [f"services.{name}.{key}" for key in changed if key not in later]
