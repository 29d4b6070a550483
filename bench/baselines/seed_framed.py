"""Baseline: the seeds' framed protocol (12-byte header + JSON body) as a minimal echo server.

The seed's MyProtocol with its two bugs fixed so it can serve the same wire
format (network byte order, UTF-8 byte length): parse the header, json.loads
the body, answer with json.dumps. No limits, no router, no metrics.
Prints its port.
"""

import json
import struct

from twisted.internet import protocol, reactor

HEADER = struct.Struct("!III")


class Seed(protocol.Protocol):
    def connectionMade(self):
        self._data_buffer = b""

    def dataReceived(self, data):
        self._data_buffer += data
        while True:
            if len(self._data_buffer) < 12:
                return
            version, size, cmd = HEADER.unpack(self._data_buffer[:12])
            if len(self._data_buffer) < 12 + size:
                return
            body = json.loads(self._data_buffer[12 : 12 + size])
            self._data_buffer = self._data_buffer[12 + size :]
            reply = json.dumps({"id": body["id"], "ok": True, "result": body.get("args")}).encode()
            self.transport.write(HEADER.pack(1, len(reply), cmd) + reply)


factory = protocol.Factory.forProtocol(Seed)
port = reactor.listenTCP(0, factory, interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
