"""A bulk pull from Python: a client process pulls a region that a server
process exposed, transfer by transfer.

    python bulk_pull.py [--size 1048576] [--transfers 500] [--protocols shm,tcp]

For each protocol it starts a server (this script with --serve) that
exposes --size bytes read-only and prints its address and the region's
handle (base64); the client exposes a buffer of the same size write-only,
makes --warmup untimed pulls, then --transfers timed ones
(`engine.transfer(pull, ...)`, blocking), and prints p50, p99 and MiB/s
(size / p50). No RPC is involved: each timed call is one transfer. Build the
binding in release mode first (`maturin develop --release`).
"""

import argparse
import subprocess
import sys
import time

import pymargo
import pymargo.bulk as bulk
from pymargo.bulk import Bulk
from pymargo.core import Engine


def serve(protocol, size, progress_thread):
    with Engine(protocol, use_progress_thread=progress_thread) as engine:
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        region = engine.create_bulk(data, bulk.read_only)
        engine.enable_remote_shutdown()
        print(engine.address, flush=True)
        print(region.to_base64(), flush=True)
        engine.wait_for_finalize()


def measure(protocol, size, transfers, warmup, progress_thread):
    extra = ["--progress-thread"] if progress_thread else []
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", protocol, "--size", str(size), *extra],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        address = server.stdout.readline().strip()
        handle = server.stdout.readline().strip()
        with Engine(protocol, mode=pymargo.client, use_progress_thread=progress_thread) as engine:
            target = engine.lookup(address)
            remote = Bulk.from_base64(engine, handle)
            buffer = bytearray(size)
            local = engine.create_bulk(buffer, bulk.write_only)
            for _ in range(warmup):
                engine.transfer(bulk.pull, target, remote, 0, local, 0, size)
            assert buffer[:256] == bytes(range(256)), "the pulled bytes are wrong"
            times = []
            clock = time.perf_counter_ns
            for _ in range(transfers):
                t0 = clock()
                engine.transfer(bulk.pull, target, remote, 0, local, 0, size)
                times.append(clock() - t0)
            target.shutdown()
        server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    times.sort()
    p50 = times[len(times) // 2] / 1e9
    return {
        "p50_us": p50 * 1e6,
        "p99_us": times[int(len(times) * 0.99)] / 1000,
        "mib_per_s": size / p50 / (1 << 20),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--serve", metavar="PROTOCOL", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=1 << 20)
    p.add_argument("--transfers", type=int, default=500)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--protocols", default="shm,tcp")
    p.add_argument("--progress-thread", action="store_true",
                   help="use_progress_thread=True in both processes")
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.size, args.progress_thread)
        return
    print(f"{'protocol':<9} {'bytes':>9} {'p50 µs':>9} {'p99 µs':>9} {'MiB/s':>8}")
    for protocol in args.protocols.split(","):
        r = measure(protocol, args.size, args.transfers, args.warmup, args.progress_thread)
        print(f"{protocol:<9} {args.size:9d} {r['p50_us']:9.1f} {r['p99_us']:9.1f} {r['mib_per_s']:8.0f}")


if __name__ == "__main__":
    main()
