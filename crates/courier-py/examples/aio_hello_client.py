"""An asyncio client of ``aio_hello_server.py`` (or ``hello_server.py``):
one awaited call, then 100 in flight at once from one thread, then the
server's shutdown.

    python aio_hello_client.py tcp://127.0.0.1:PORT
"""

import asyncio
import sys

import courier
from courier import Engine


async def main(address: str) -> None:
    protocol = address.split("://", 1)[0]
    with Engine(protocol, mode=courier.client) as engine:
        server = await engine.lookup_async(address)
        hello = engine.register("hello").on(server)
        response: str = await hello.call_async("Matthieu", lastname="Dorier", timeout=10_000)
        print(response)
        replies = await asyncio.gather(*(hello.call_async(f"#{i}", "x") for i in range(100)))
        print(f"{len(replies)} replies")
        server.shutdown()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} ADDRESS")
    asyncio.run(main(sys.argv[1]))
