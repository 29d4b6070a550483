"""Reloading the configuration of a running daemon (SIGHUP): apply what can change live, log the rest.

Live: limits of each service (the keys a factory lists in C{live_settings}),
the WebSocket service's allowed_origins, the hub's publish rate and size
limits, every key of ``[rooms]`` (admins, rules, private-room limits), and
``[daemon]`` shutdown_timeout, close_timeout and log_level.
Anything else (endpoints, the database, accounts, enabling a service, the
log format) is logged as needing a restart. An invalid file changes nothing.
Connections stay open either way.

L{ReloadService} knows nothing of the tree: it is handed the listeners (each
with C{reconfigure(cfg, changed)}) and one L{Reconfigure} callable per
top-level section that has live settings (L{daemon_settings},
L{hub_settings}).
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.logger import Logger

from myservices.config import Config, ConfigError

if TYPE_CHECKING:
    from myservices.config import DaemonConfig
    from myservices.hub import Hub
    from myservices.hub.config import HubConfig
    from myservices.hub.policy import RoomPolicies
    from myservices.hub.policy_config import RoomsConfig
    from myservices.logs import LogOutput

log = Logger()

# applies the new values of the keys C{changed} of one section; returns the keys that need a restart
Reconfigure = Callable[[Any, Sequence[str]], Sequence[str]]
# reads and validates the config file at a path, as load_config does
Load = Callable[..., Config]

HUB_LIVE = ("publish_rate", "publish_burst", "max_text_length", "max_nick_length", "max_room_length", "max_rooms_per_session")


def changed_keys(old: Any, new: Any) -> list[str]:
    """The fields of two config sections that differ."""
    return [f.name for f in dataclasses.fields(old) if getattr(old, f.name) != getattr(new, f.name)]


def _shown(section: Any, key: str) -> str:
    field = next(f for f in dataclasses.fields(section) if f.name == key)
    return "(secret)" if field.metadata.get("secret") else repr(getattr(section, key))


class ReloadService(Service):
    """Rereads the config file on SIGHUP (with C{handle_sighup}) or when L{reload} is called.

    C{sections} maps a top-level section (``daemon``, ``hub``) to the
    L{Reconfigure} that applies its live keys; every change to another
    section needs a restart. C{reloaded(ok)} is told how each reload went.
    Added to the tree after the listeners, it stops before them, putting
    the previous SIGHUP handler back before the drain.
    """

    name = "reload"  # type: ignore[assignment]  # twisted's Service.name is unannotated (inferred as None)

    def __init__(
        self,
        path: str,
        load: Load,
        config: Config,
        listeners: Mapping[str, Any],
        sections: Mapping[str, Reconfigure],
        reactor: Any,
        *,
        handle_sighup: bool = False,
        reloaded: Callable[[bool], None] | None = None,
    ) -> None:
        self.path = path
        self._load = load
        # what reloads compare with: the configuration in effect (the file as last applied, except the keys
        # that wait for a restart, at the values the daemon runs with)
        self.applied_config = config
        self.waiting: list[str] = []  # keys (or whole services) changed in the file that wait for a restart
        self.listeners = listeners
        self.sections = sections
        self._reactor = reactor
        self.handle_sighup = handle_sighup
        self._reloaded = reloaded
        self._previous_sighup: Any = None

    def startService(self) -> None:
        super().startService()
        if self.handle_sighup:
            self._previous_sighup = signal.signal(signal.SIGHUP, self._on_sighup)

    def stopService(self) -> None:
        super().stopService()
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        # a signal handler may run in the middle of reactor code: hand the work to the reactor
        self._reactor.callFromThread(self.reload)

    def reload(self, environ: Mapping[str, str] | None = None) -> bool:
        """Read the config file again and apply it; False (and nothing changed) if it is invalid."""
        ok = self._apply(environ)
        if self._reloaded is not None:
            self._reloaded(ok)
        return ok

    def _apply(self, environ: Mapping[str, str] | None) -> bool:
        path = self.path
        try:
            new = self._load(path, environ=environ)
        except ConfigError as e:
            log.error(
                "reload: {path} is invalid; still running on the previous configuration:\n{problems}",
                path=path, problems="\n".join(e.problems),
            )
            return False
        old = self.applied_config
        applied: list[str] = []
        restart: list[str] = []
        for section, reconfigure in self.sections.items():
            changed = changed_keys(getattr(old, section), getattr(new, section))
            later = reconfigure(getattr(new, section), changed) if changed else []
            restart += [f"{section}.{key}" for key in later]
            applied += [f"{section}.{key}" for key in changed if key not in later]
        self._reload_services(old, new, applied, restart)
        for f in dataclasses.fields(new):
            if f.name not in self.sections and f.name not in ("source", "services"):
                restart += [f"{f.name}.{key}" for key in changed_keys(getattr(old, f.name), getattr(new, f.name))]
        back = [key for key in self.waiting if not _covered(key, restart)]
        self.applied_config = in_effect(old, new, restart)
        self.waiting = restart
        for key in applied:
            log.info("reload: {key} = {value}", key=key, value=_value_of(new, key))
        for key in back:
            log.info("reload: {key} is back to the value the daemon runs with; no restart needed for it", key=key)
        for key in restart:
            log.warn("reload: {key} changed; restart the daemon to apply it", key=key)
        log.info(
            "reload: {path}: {applied} change(s) applied, {restart} waiting for a restart",
            path=path, applied=len(applied), restart=len(restart),
        )
        return True

    def _reload_services(self, old_config: Config, new: Config, applied: list[str], restart: list[str]) -> None:
        old_services = old_config.services
        for name in sorted(old_services.keys() | new.services.keys()):
            old, cfg = old_services.get(name), new.services.get(name)
            if old is None or cfg is None or type(old) is not type(cfg) or old.kind != cfg.kind:
                restart.append(f"services.{name}")
                continue
            changed = changed_keys(old, cfg)
            if not changed:
                continue
            service = self.listeners.get(name)
            if service is None or "enabled" in changed:
                restart += [f"services.{name}.{key}" for key in changed]
                continue
            later = service.reconfigure(cfg, changed)
            restart += [f"services.{name}.{key}" for key in later]
            applied += [f"services.{name}.{key}" for key in changed if key not in later]


def _covered(key: str, restart: Sequence[str]) -> bool:
    """Whether C{key} (``section.key`` or ``services.NAME[.key]``) is among C{restart}, or inside one of them."""
    return any(key == r or key.startswith(r + ".") or r.startswith(key + ".") for r in restart)


def in_effect(old: Config, new: Config, restart: Sequence[str]) -> Config:
    """C{new}, with each key of C{restart} at its value in C{old}: the configuration the daemon runs with.

    C{restart} holds ``section.key``, ``services.NAME.key`` and, for a
    service added, removed or of another kind, ``services.NAME``.
    """
    kept: dict[str, list[str]] = {}
    whole: set[str] = set()
    for key in restart:
        parts = key.split(".")
        if parts[0] == "services" and len(parts) == 2:
            whole.add(parts[1])
        else:
            kept.setdefault(".".join(parts[:-1]), []).append(parts[-1])

    def merged(where: str, old_section: Any, new_section: Any) -> Any:
        keys = kept.get(where)
        return dataclasses.replace(new_section, **{k: getattr(old_section, k) for k in keys}) if keys else new_section

    sections = {
        f.name: merged(f.name, getattr(old, f.name), getattr(new, f.name))
        for f in dataclasses.fields(new) if f.name not in ("source", "services")
    }
    services: dict[str, Any] = {}
    for name in [*new.services, *(n for n in old.services if n not in new.services)]:
        if name in whole:
            if name in old.services:  # still running; one added in the file is not
                services[name] = old.services[name]
        else:
            services[name] = merged(f"services.{name}", old.services.get(name), new.services[name])
    return dataclasses.replace(new, services=services, **sections)


def _value_of(config: Config, key: str) -> str:
    parts = key.split(".")  # daemon.KEY, hub.KEY or services.NAME.KEY
    section = config.services[parts[1]] if parts[0] == "services" else getattr(config, parts[0])
    return _shown(section, parts[-1])


def daemon_settings(listeners: Mapping[str, Any], log_output: LogOutput | None) -> Reconfigure:
    """The live keys of ``[daemon]``: shutdown_timeout and close_timeout (every listener's), log_level (when the daemon logs itself)."""

    def reconfigure(cfg: DaemonConfig, changed: Sequence[str]) -> list[str]:
        later = []
        for key in changed:
            if key == "shutdown_timeout":
                for service in listeners.values():
                    if hasattr(service, "shutdown_timeout"):
                        service.shutdown_timeout = cfg.shutdown_timeout
            elif key == "close_timeout":
                # closes that start from now on
                for service in listeners.values():
                    if hasattr(service, "factory"):
                        service.factory.close_timeout = cfg.close_timeout
            elif key == "log_level" and log_output is not None:
                log_output.set_level(cfg.log_level)
            else:
                later.append(key)
        return later

    return reconfigure


def hub_settings(hub: Hub) -> Reconfigure:
    """The live keys of ``[hub]`` (L{HUB_LIVE}): the hub reads its config at each use."""

    def reconfigure(cfg: HubConfig, changed: Sequence[str]) -> list[str]:
        live = {key: getattr(cfg, key) for key in changed if key in HUB_LIVE}
        if live:
            hub.config = dataclasses.replace(hub.config, **live)
        return [key for key in changed if key not in HUB_LIVE]

    return reconfigure


def rooms_settings(policies: RoomPolicies) -> Reconfigure:
    """Every key of ``[rooms]`` is live: the policy reads its config at each check (rules, admins, limits)."""

    def reconfigure(cfg: RoomsConfig, changed: Sequence[str]) -> list[str]:
        policies.config = cfg
        return []

    return reconfigure
