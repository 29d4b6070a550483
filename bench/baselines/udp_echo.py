"""Baseline: a minimal UDP echo server, Twisted DatagramProtocol or (--asyncio) asyncio. Prints its port."""

import sys

if "--asyncio" in sys.argv:
    import asyncio

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport):
            self.transport = transport

        def datagram_received(self, data, addr):
            self.transport.sendto(data, addr)

    async def main():
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        print(transport.get_extra_info("sockname")[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
else:
    from twisted.internet import protocol, reactor

    class Echo(protocol.DatagramProtocol):
        def datagramReceived(self, data, addr):
            self.transport.write(data, addr)

    port = reactor.listenUDP(0, Echo(), interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()
