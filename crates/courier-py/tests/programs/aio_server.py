"""An asyncio server: async def handlers on the running event loop, and
``await engine.wait_for_finalize_async()`` until a client shuts it down.
Prints its address, and "finalized" at the end.

"wait" (with a tag) waits until it is cancelled; "arrived" answers once
the "wait" of a tag has started, "cancellation" with the reason its
handler saw when it was cancelled."""

import asyncio

from courier import Engine


async def main():
    with Engine("tcp") as engine:
        loop = asyncio.get_running_loop()
        arrivals = {}
        cancellations = {}

        def arrival(tag):
            return arrivals.setdefault(tag, loop.create_future())

        def cancelled(tag):
            return cancellations.setdefault(tag, loop.create_future())

        async def hello(handle, firstname, lastname):
            await handle.respond_async(f"Hello {firstname} {lastname}")

        async def square(handle, x):
            await asyncio.sleep(0)
            await handle.respond_async(x * x)

        async def divide(handle, a, b):
            await handle.respond_async(a / b)

        async def wait(handle, tag):
            arrival(tag).set_result(None)
            try:
                await loop.create_future()  # never completes
            except asyncio.CancelledError:
                cancelled(tag).set_result(handle.cancel_reason)
                raise

        async def arrived(handle, tag):
            await arrival(tag)
            await handle.respond_async(True)

        async def cancellation(handle, tag):
            await handle.respond_async(await cancelled(tag))

        for handler in (hello, square, divide, wait, arrived, cancellation):
            engine.register(handler.__name__, handler)
        engine.enable_remote_shutdown()
        print(f"Service running at {engine.address}")
        await engine.wait_for_finalize_async()
    print("finalized")


if __name__ == "__main__":
    asyncio.run(main())
