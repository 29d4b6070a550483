"""The seeds' minimal Twisted echo server (dataReceived -> transport.write), for comparison.

Prints its port on stdout once listening.
"""

import sys

from twisted.internet import endpoints, protocol, reactor


class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class EchoFactory(protocol.Factory):
    def buildProtocol(self, addr):
        return Echo()


def announce(port):
    print(port.getHost().port, flush=True)


endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(EchoFactory()).addCallback(announce)
reactor.run()
sys.exit(0)
