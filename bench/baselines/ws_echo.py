"""Baseline: a minimal WebSocket echo server on autobahn's Twisted protocol, or (--websockets) on the
websockets library (asyncio). Prints its port. No limits, no origin checks, no compression."""

import sys

if "--websockets" in sys.argv:
    import asyncio

    from websockets.asyncio.server import serve

    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async def main():
        async with serve(echo, "127.0.0.1", 0, compression=None, max_size=None, ping_interval=None) as server:
            print(list(server.sockets)[0].getsockname()[1], flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())
else:
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet import reactor

    class Echo(WebSocketServerProtocol):
        def onMessage(self, payload, isBinary):
            self.sendMessage(payload, isBinary)

    factory = WebSocketServerFactory()
    factory.protocol = Echo
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()
