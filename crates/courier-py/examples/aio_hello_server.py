"""An asyncio server: ``hello`` as an ``async def`` handler on the
program's event loop, served until a client asks for a shutdown.

    python aio_hello_server.py [PROTOCOL]    # Service running at tcp://127.0.0.1:PORT
"""

import asyncio
import sys

from courier import Engine, Handle


async def hello(handle: Handle, firstname: str, lastname: str) -> None:
    """Runs as a task of the loop that registered it; awaiting here lets
    the loop's other tasks (other requests) run."""
    print(f"Hello {firstname} {lastname}!", flush=True)
    await handle.respond_async(f"Good bye {firstname}")


async def main(protocol: str) -> None:
    with Engine(protocol) as engine:
        engine.register("hello", hello)  # registered from a coroutine: this loop
        engine.enable_remote_shutdown()
        print(f"Service running at {engine.address}", flush=True)
        await engine.wait_for_finalize_async()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "tcp"))
