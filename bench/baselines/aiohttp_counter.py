"""Baseline: an in-memory request counter on aiohttp ("I am request #N"). Prints its port."""

import asyncio

from aiohttp import web

count = 0


async def counter(request):
    global count
    count += 1
    return web.Response(text=f"I am request #{count}\n")


async def main():
    app = web.Application()
    app.router.add_get("/", counter)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
