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
        arrived = engine.register("arrived").on(server)
        cancellation = engine.register("cancellation").on(server)

        # A timeout that passes while the handler runs: one that passes
        # before it starts (a slow machine) is doubled, with a new tag.
        timeout = 100
        timed_out = False
        for tag in range(32):
            call = asyncio.ensure_future(wait.call_async(tag, timeout=timeout))
            started = asyncio.ensure_future(arrived.call_async(tag))
            await asyncio.wait({call, started}, return_when=asyncio.FIRST_COMPLETED)
            try:
                await call
            except courier.TimeoutError:
                timed_out = True
            if started.done():
                break
            started.cancel()
            timeout *= 2
        print("timeout: courier.TimeoutError" if timed_out else "no timeout")
        # By the caller's Cancel, or by its deadline passing at the server.
        reason = await cancellation.call_async(tag)
        print("timed out call cancelled:", reason in ("caller", "deadline"))

        call = asyncio.create_task(wait.call_async("held"))
        await arrived.call_async("held")
        print("waiting")
        call.cancel()
        try:
            await call
        except asyncio.CancelledError:
            print("cancelled: asyncio.CancelledError")
        print("the server saw:", await cancellation.call_async("held"))
        server.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
