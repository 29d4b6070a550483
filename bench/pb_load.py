"""PB load for bench/run.py: CONNS connections each keep WINDOW echo calls in flight.

    pb_load.py PORT CONNS WINDOW SECONDS MAX_OPS anonymous|root

"anonymous": myservices (loginAnonymous, then the avatar's echo); "root": a
server whose root object has remote_echo. Prints "ready" once logged in,
waits for a line on stdin, runs, prints {"ops": N, "seconds": T}.
"""

from __future__ import annotations

import json
import sys
import time

from twisted.internet import defer, reactor, threads
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.spread import pb

PORT, CONNS, WINDOW, SECONDS, MAX_OPS, MODE = (
    int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6],
)
DATA = "x" * 40


async def target() -> pb.RemoteReference:
    factory = pb.PBClientFactory()
    await TCP4ClientEndpoint(reactor, "127.0.0.1", PORT).connect(factory)
    root = await factory.getRootObject()
    return await root.callRemote("loginAnonymous") if MODE == "anonymous" else root


async def main() -> None:
    targets = [await target() for _ in range(CONNS)]
    print("ready", flush=True)
    await threads.deferToThread(sys.stdin.readline)
    state = {"ops": 0}
    start = time.monotonic()
    deadline = start + SECONDS
    finished: defer.Deferred[None] = defer.Deferred()
    running = [0]

    def call(t: pb.RemoteReference) -> None:
        if state["ops"] >= MAX_OPS or time.monotonic() >= deadline:
            running[0] -= 1
            if not running[0] and not finished.called:
                finished.callback(None)
            return
        t.callRemote("echo", DATA).addCallbacks(lambda _: done(t), lambda f: finished.called or finished.errback(f))

    def done(t: pb.RemoteReference) -> None:
        state["ops"] += 1
        call(t)

    for t in targets:
        for _ in range(WINDOW):
            running[0] += 1
            call(t)
    await finished
    print(json.dumps({"ops": state["ops"], "seconds": time.monotonic() - start}), flush=True)


def run(reactor_: object) -> defer.Deferred[None]:
    return defer.ensureDeferred(main())


from twisted.internet.task import react  # noqa: E402

react(run)
