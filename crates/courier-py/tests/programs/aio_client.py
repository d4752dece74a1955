"""An asyncio client of aio_server.py: prints one line per step."""

import asyncio
import sys

import courier
from courier import Engine


async def main(address):
    with Engine("tcp", mode=courier.client) as engine:
        server = await engine.lookup_async(address)
        hello = engine.register("hello").on(server)
        print("hello:", await hello.call_async("Matthieu", lastname="Dorier"))

        square = engine.register("square").on(server)
        got = await asyncio.gather(*(square.call_async(i) for i in range(100)))
        assert got == [i * i for i in range(100)], got
        print(f"gathered: {len(got)} squares")

        try:
            await engine.register("divide").on(server).call_async(1, 0)
        except ZeroDivisionError as e:
            print("raised:", type(e).__name__)

        wait = engine.register("wait").on(server)
        try:
            await wait.call_async(False, timeout=100)
        except courier.TimeoutError:
            print("timeout: courier.TimeoutError")
        next_cancellation = engine.register("next_cancellation").on(server)
        # By the caller's Cancel, or by its deadline passing at the server.
        reason = await next_cancellation.call_async()
        print("timed out call cancelled:", reason in ("caller", "deadline"))

        call = asyncio.create_task(wait.call_async(True))
        await engine.register("when_held").on(server).call_async()
        print("waiting")
        call.cancel()
        try:
            await call
        except asyncio.CancelledError:
            print("cancelled: asyncio.CancelledError")
        print("the server saw:", await next_cancellation.call_async())
        server.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
