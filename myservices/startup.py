"""The error that stops the daemon at start-up for a reason the operator can fix.

Raised where the reason is known (a port in use, a directory that cannot be
created), after logging it as one critical line; ``twistd myservices`` then
exits with status 1 and no traceback (L{myservices.tap}). This module imports
nothing of the project, so any layer can raise it.
"""

from __future__ import annotations


class StartupError(Exception):
    """The daemon cannot start; the message is the one line that says why."""
