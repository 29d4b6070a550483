"""Baseline: a minimal Perspective Broker server, the seeds' pb.Root with one remote method. Prints its port."""

from twisted.internet import reactor
from twisted.spread import pb


class Root(pb.Root):
    def remote_echo(self, data):
        return data


port = reactor.listenTCP(0, pb.PBServerFactory(Root()), interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
