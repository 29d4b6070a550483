"""Baseline: a minimal length-prefixed JSON echo on Twisted's Int32StringReceiver. Prints its port.

Each message is a 4-byte big-endian length and a JSON object; the reply is the
object sent back (parsed and serialized again, as a JSON service would). It
checks nothing.
"""

import json

from twisted.internet import protocol, reactor
from twisted.protocols.basic import Int32StringReceiver


class JsonEcho(Int32StringReceiver):
    MAX_LENGTH = 1 << 20

    def stringReceived(self, data):
        self.sendString(json.dumps(json.loads(data)).encode())


factory = protocol.Factory.forProtocol(JsonEcho)
port = reactor.listenTCP(0, factory, interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
