"""The operator page's commands, for admin accounts only: the daemon's statistics, once or pushed while watching.

Registered on the shared router (L{myservices.handlers.state.router}) when
L{myservices.handlers.commands} is imported, so every request/reply front end answers them. Anyone
else is answered FORBIDDEN, and UNAUTHENTICATED before logging in. The
statistics themselves come from L{myservices.operator.sampler.Sampler}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from myservices.errors import FORBIDDEN, RequestError
from myservices.handlers.state import CommandState, router

if TYPE_CHECKING:
    from myservices.operator.sampler import Sampler
    from myservices.hub import Session


async def _admin(s: CommandState) -> tuple[Sampler, Session]:
    session = await s.session()
    if not s.services.hub.policy.is_admin(session):
        raise RequestError(FORBIDDEN, "the statistics are for admin accounts only")
    sampler = s.services.operator
    if sampler is None:
        raise RequestError(FORBIDDEN, "the statistics are not available on this server")
    return sampler, session


@router.command("admin.stats", login=True)
async def admin_stats(s: CommandState) -> dict[str, Any]:
    """One snapshot (see L{Sampler.sample}) as the reply."""
    sampler, _ = await _admin(s)
    return await sampler.snapshot()


@router.command("admin.watch", login=True)
async def admin_watch(s: CommandState) -> dict[str, Any]:
    """Receive a snapshot every C{[admin] interval} seconds as a "stats" event, the first at once."""
    sampler, session = await _admin(s)
    sampler.watch(session)
    return {"watching": True, "interval": sampler.config.interval}


@router.command("admin.unwatch", login=True)
async def admin_unwatch(s: CommandState) -> dict[str, Any]:
    """No more snapshots; not an error if none were sent."""
    sampler, session = await _admin(s)
    return {"watching": False, "was_watching": sampler.unwatch(session)}
