"""An asyncio client of aio_server.py that awaits a call that never
completes ("wait" with the tag "ctrl-c"), until Ctrl-C: asyncio.run then
cancels the call, and the server is told."""

import asyncio
import sys

import courier
from courier import Engine


async def main(address):
    with Engine("tcp", mode=courier.client) as engine:
        server = await engine.lookup_async(address)
        call = asyncio.ensure_future(engine.register("wait").on(server).call_async("ctrl-c"))
        await engine.register("arrived").on(server).call_async("ctrl-c")
        print("calling", flush=True)
        await call


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
