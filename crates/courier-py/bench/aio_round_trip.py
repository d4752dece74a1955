"""The asyncio hello round trip: the seed's "hello" RPC awaited with
``call_async`` from an asyncio client process, against a server process
whose handler is ``async def`` (on the server's running event loop) or a
blocking one (``--sync-server``).

    python aio_round_trip.py [--calls 10000] [--protocols tcp,unix,shm] [--concurrency 100]

For each protocol it starts a server (this script with --serve) in another
process, then measures, after --warmup untimed calls:

- one call at a time: each ``await call_async(...)`` timed (p50, p99) and
  the calls per second;
- ``--concurrency`` calls in flight: batches of that many calls gathered
  (``asyncio.gather``), calls per second.

Both engines have PyMargo's defaults (no progress thread: the binding
drives each from a thread of its own) unless --progress-thread. Build the
binding in release mode first (`maturin develop --release`).
"""

import argparse
import asyncio
import statistics
import subprocess
import sys
import time

import courier
from courier import Engine


async def hello_async(handle, firstname, lastname):
    await handle.respond_async(f"Good bye {firstname}")


def hello_sync(handle, firstname, lastname):
    handle.respond(f"Good bye {firstname}")


async def serve(protocol, progress_thread, sync_handler):
    with Engine(protocol, use_progress_thread=progress_thread) as engine:
        engine.register("hello", hello_sync if sync_handler else hello_async)
        engine.enable_remote_shutdown()
        print(engine.address, flush=True)
        await engine.wait_for_finalize_async()


async def client(address, protocol, calls, warmup, concurrency, progress_thread):
    with Engine(protocol, mode=courier.client, use_progress_thread=progress_thread) as engine:
        target = await engine.lookup_async(address)
        call = engine.register("hello").on(target)
        for _ in range(warmup):
            await call.call_async("Matthieu", lastname="Dorier")
        times = []
        clock = time.perf_counter_ns
        start = clock()
        for _ in range(calls):
            t0 = clock()
            await call.call_async("Matthieu", lastname="Dorier")
            times.append(clock() - t0)
        total = clock() - start
        batches = max(1, calls // concurrency)
        start = clock()
        for _ in range(batches):
            await asyncio.gather(*(call.call_async("Matthieu", lastname="Dorier") for _ in range(concurrency)))
        gathered = clock() - start
        target.shutdown()
    times.sort()
    return {
        "p50_us": times[len(times) // 2] / 1000,
        "p99_us": times[int(len(times) * 0.99)] / 1000,
        "mean_us": statistics.fmean(times) / 1000,
        "calls_per_s": calls / (total / 1e9),
        "gathered_per_s": batches * concurrency / (gathered / 1e9),
    }


def measure(protocol, args):
    extra = (["--progress-thread"] if args.progress_thread else []) + (
        ["--sync-server"] if args.sync_server else []
    )
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", protocol, *extra],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        address = server.stdout.readline().strip()
        result = asyncio.run(
            client(address, protocol, args.calls, args.warmup, args.concurrency, args.progress_thread)
        )
        server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--serve", metavar="PROTOCOL", help=argparse.SUPPRESS)
    p.add_argument("--calls", type=int, default=10_000)
    p.add_argument("--warmup", type=int, default=1_000)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--protocols", default="tcp,unix,shm")
    p.add_argument("--progress-thread", action="store_true",
                   help="use_progress_thread=True in both processes")
    p.add_argument("--sync-server", action="store_true",
                   help="the server's handler is a blocking one (run on its engine's driver thread)")
    args = p.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.progress_thread, args.sync_server))
        return
    print(f"{'protocol':<9} {'p50 µs':>8} {'p99 µs':>8} {'mean µs':>8} {'calls/s':>9} "
          f"{'gathered/s':>11}")
    for protocol in args.protocols.split(","):
        r = measure(protocol, args)
        print(f"{protocol:<9} {r['p50_us']:8.1f} {r['p99_us']:8.1f} {r['mean_us']:8.1f} "
              f"{r['calls_per_s']:9.0f} {r['gathered_per_s']:11.0f}")


if __name__ == "__main__":
    main()
