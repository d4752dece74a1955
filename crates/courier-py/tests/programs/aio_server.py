"""An asyncio server: async def handlers on the running event loop, and
``await engine.wait_for_finalize_async()`` until a client shuts it down.
Prints its address, and "finalized" at the end. "next_cancellation"
answers with the reason of the next cancelled "wait"."""

import asyncio

from courier import Engine


async def main():
    with Engine("tcp") as engine:
        held = asyncio.Event()
        cancellations = asyncio.Queue()

        async def hello(handle, firstname, lastname):
            await handle.respond_async(f"Hello {firstname} {lastname}")

        async def square(handle, x):
            await asyncio.sleep(0)
            await handle.respond_async(x * x)

        async def divide(handle, a, b):
            await handle.respond_async(a / b)

        async def wait(handle, hold):
            if hold:
                held.set()
            try:
                await asyncio.get_running_loop().create_future()  # never completes
            except asyncio.CancelledError:
                cancellations.put_nowait(handle.cancel_reason)
                raise

        async def when_held(handle):
            await held.wait()
            await handle.respond_async(True)

        async def next_cancellation(handle):
            await handle.respond_async(await cancellations.get())

        for handler in (hello, square, divide, wait, when_held, next_cancellation):
            engine.register(handler.__name__, handler)
        engine.enable_remote_shutdown()
        print(f"Service running at {engine.address}")
        await engine.wait_for_finalize_async()
    print("finalized")


if __name__ == "__main__":
    asyncio.run(main())
