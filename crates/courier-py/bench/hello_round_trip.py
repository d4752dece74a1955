"""The Python hello round trip: the seed's "hello" RPC from a client
process to a server process, timed call by call.

    python hello_round_trip.py [--calls 10000] [--protocols tcp,unix,shm]

For each protocol it starts a server (this script with --serve) in another
process, makes --warmup untimed calls, then --calls timed ones, and prints
p50, p99 and calls per second. Build the binding in release mode first
(`maturin develop --release`); a debug build measures the debug build.
"""

import argparse
import statistics
import subprocess
import sys
import time

from pymargo.core import Engine
import pymargo


def hello(handle, firstname, lastname):
    handle.respond(f"Good bye {firstname}")


def serve(protocol, progress_thread, config):
    with Engine(protocol, use_progress_thread=progress_thread, config=config) as engine:
        engine.register("hello", hello)
        engine.enable_remote_shutdown()
        print(engine.address, flush=True)
        engine.wait_for_finalize()


def measure(protocol, calls, warmup, progress_thread, config, server_config):
    server_config = server_config or config
    extra = (["--progress-thread"] if progress_thread else []) + (
        ["--config", server_config] if server_config else [])
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", protocol, *extra],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        address = server.stdout.readline().strip()
        with Engine(protocol, mode=pymargo.client, use_progress_thread=progress_thread,
                    config=config) as engine:
            target = engine.lookup(address)
            call = engine.register("hello").on(target)
            for _ in range(warmup):
                call("Matthieu", lastname="Dorier")
            times = []
            clock = time.perf_counter_ns
            start = clock()
            for _ in range(calls):
                t0 = clock()
                call("Matthieu", lastname="Dorier")
                times.append(clock() - t0)
            total = clock() - start
            target.shutdown()
        server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    times.sort()
    return {
        "p50_us": times[len(times) // 2] / 1000,
        "p99_us": times[int(len(times) * 0.99)] / 1000,
        "mean_us": statistics.fmean(times) / 1000,
        "calls_per_s": calls / (total / 1e9),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--serve", metavar="PROTOCOL", help=argparse.SUPPRESS)
    p.add_argument("--calls", type=int, default=10_000)
    p.add_argument("--warmup", type=int, default=1_000)
    p.add_argument("--protocols", default="tcp,unix,shm")
    p.add_argument("--progress-thread", action="store_true",
                   help="use_progress_thread=True in both processes")
    p.add_argument("--config", default=None, help="engine configuration (JSON) of both processes")
    p.add_argument("--server-config", default=None,
                   help="engine configuration (JSON) of the server, instead of --config")
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.progress_thread, args.config)
        return
    print(f"{'protocol':<9} {'p50 µs':>8} {'p99 µs':>8} {'mean µs':>8} {'calls/s':>9}")
    for protocol in args.protocols.split(","):
        r = measure(protocol, args.calls, args.warmup, args.progress_thread, args.config,
                    args.server_config)
        print(f"{protocol:<9} {r['p50_us']:8.1f} {r['p99_us']:8.1f} {r['mean_us']:8.1f} {r['calls_per_s']:9.0f}")


if __name__ == "__main__":
    main()
