"""The seeds' in-memory twisted.web request counter ("I am request #N"), for comparison.

As in the tutorial, but with the access log off (it defaults to the legacy log
and would cost the baseline CPU the daemon does not spend). Prints its port on
stdout once listening.
"""

import sys

from twisted.internet import endpoints, reactor
from twisted.web import resource, server


class Counter(resource.Resource):
    isLeaf = True
    numberRequests = 0

    def render_GET(self, request):
        self.numberRequests += 1
        request.setHeader(b"content-type", b"text/plain")
        content = "I am request #{}\n".format(self.numberRequests)
        return content.encode("utf-8")


class QuietSite(server.Site):
    def log(self, request):
        pass


def announce(port):
    print(port.getHost().port, flush=True)


site = QuietSite(Counter())
endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1:backlog=1024").listen(site).addCallback(announce)
reactor.run()
sys.exit(0)
