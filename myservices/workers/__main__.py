"""``python -m myservices.workers --config FILE``: how the supervisor starts a worker.

The worker is twistd running the myservices plugin in the foreground, as
the supervisor itself is; the supervisor's environment (L{WORKER_ENV}) tells
the plugin that it is a worker and what it inherits.
"""

from __future__ import annotations

import sys

from twisted.scripts.twistd import run


def main(argv: list[str]) -> None:
    # the log goes to standard output, which the worker shares with the supervisor
    sys.argv = ["twistd", "--nodaemon", "--pidfile=", "myservices", *argv]
    run()


if __name__ == "__main__":
    main(sys.argv[1:])
