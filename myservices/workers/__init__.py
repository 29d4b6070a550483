"""Worker processes: a supervisor runs ``[daemon] workers`` copies of the daemon sharing every listening socket.

- L{myservices.workers.checks}: the config checks and how many workers ``workers = N`` means.
- L{myservices.workers.sockets}: the sockets the supervisor binds and each worker adopts.
- L{myservices.workers.link}: the control connection between the supervisor and a worker.
- L{myservices.workers.supervisor}: the supervisor (what ``twistd myservices`` runs with workers);
  L{myservices.workers.process}: one worker slot of it.
- L{myservices.workers.worker}: what a worker adds to its service tree.
- ``python -m myservices.workers``: how the supervisor starts a worker (twistd, told by the environment).
"""
