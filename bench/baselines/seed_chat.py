"""The seeds' minimal LineReceiver chat room (every line to every client), for comparison.

Prints its port on stdout once listening.
"""

import sys

from twisted.internet import endpoints, protocol, reactor
from twisted.protocols import basic


class ChatRoomProtocol(basic.LineReceiver):
    def __init__(self, factory):
        self.factory = factory

    def connectionMade(self):
        self.factory.clients.add(self)

    def connectionLost(self, reason):
        self.factory.clients.remove(self)

    def lineReceived(self, line):
        for c in self.factory.clients:
            source = "<{}> ".format(self.transport.getHost()).encode("ascii")
            c.sendLine(source + line)


class ChatRoomFactory(protocol.Factory):
    def __init__(self):
        self.clients = set()

    def buildProtocol(self, addr):
        return ChatRoomProtocol(self)


def announce(port):
    print(port.getHost().port, flush=True)


endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(ChatRoomFactory()).addCallback(announce)
reactor.run()
sys.exit(0)
