"""A small key-value service written with PyMargo's API, and its rate.

    python kv_service.py [--protocols tcp,shm] [--ops 20000] [--threads 1,4]
                         [--repeat 1] [--server-progress-thread]
                         [--server-rpc-threads N]

The server (this script with --serve, in a process of its own) registers
`put(key, value)` and `get(key)` on a dict. The client, in this process,
makes --ops calls (puts and gets of short strings, alternating) one at a
time from one thread, then the same number split over four threads sharing
one client engine, and prints the operations per second of each. The
server's threading set-up is PyMargo's: --server-progress-thread is
`use_progress_thread=True`, --server-rpc-threads N is `num_rpc_threads=N`;
the client engine keeps the defaults. With --repeat R each rate is
measured R times (against the same server) and the median and best are
printed: on a shared machine the best is the least disturbed. Build the
binding in release mode first (`maturin develop --release`).
"""

import argparse
import statistics
import subprocess
import sys
import threading
import time

import pymargo
from pymargo.core import Engine


class Store:
    def __init__(self):
        self.data = {}

    def put(self, handle, key, value):
        self.data[key] = value
        handle.respond(True)

    def get(self, handle, key):
        handle.respond(self.data.get(key))


def serve(protocol, progress_thread, rpc_threads):
    store = Store()
    with Engine(protocol, use_progress_thread=progress_thread, num_rpc_threads=rpc_threads) as engine:
        engine.register("kv_put", store.put)
        engine.register("kv_get", store.get)
        engine.enable_remote_shutdown()
        print(engine.address, flush=True)
        engine.wait_for_finalize()


def run_ops(put, get, first, count):
    """`count` operations: a put, then a get of the same key, and so on."""
    for i in range(first, first + count):
        key = f"key-{(i // 2) % 1000}"
        if i % 2 == 0:
            put(key, f"value-{i}")
        else:
            got = get(key)
            if got is None:
                raise AssertionError(f"get({key!r}) found nothing after its put")


def rate(engine, target, ops, threads):
    put = engine.register("kv_put").on(target)
    get = engine.register("kv_get").on(target)
    share = ops // threads
    errors = []

    def worker(n):
        try:
            run_ops(put, get, n * share, share)
        except BaseException as e:  # reported below
            errors.append(e)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return share * threads / elapsed


def measure(protocol, ops, warmup, thread_counts, repeat, progress_thread, rpc_threads):
    extra = (["--server-progress-thread"] if progress_thread else []) + [
        "--server-rpc-threads", str(rpc_threads)]
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", protocol, *extra],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        address = server.stdout.readline().strip()
        results = {}
        with Engine(protocol, mode=pymargo.client) as engine:
            target = engine.lookup(address)
            rate(engine, target, warmup, 1)
            for _ in range(repeat):
                for threads in thread_counts:
                    results.setdefault(threads, []).append(rate(engine, target, ops, threads))
            target.shutdown()
        server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--serve", metavar="PROTOCOL", help=argparse.SUPPRESS)
    p.add_argument("--protocols", default="tcp,shm")
    p.add_argument("--ops", type=int, default=20_000, help="timed operations per run")
    p.add_argument("--warmup", type=int, default=2_000)
    p.add_argument("--threads", default="1,4", help="client thread counts, in order")
    p.add_argument("--repeat", type=int, default=1, help="runs of each rate (median and best printed)")
    p.add_argument("--server-progress-thread", action="store_true",
                   help="use_progress_thread=True on the server")
    p.add_argument("--server-rpc-threads", type=int, default=0,
                   help="num_rpc_threads on the server")
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.server_progress_thread, args.server_rpc_threads)
        return
    thread_counts = [int(t) for t in args.threads.split(",")]
    mode = f"use_progress_thread={args.server_progress_thread}, num_rpc_threads={args.server_rpc_threads}"
    print(f"server: {mode}")
    print(f"{'protocol':<9} " + " ".join(f"{f'{t} thr ops/s':>21}" for t in thread_counts)
          + "   (median / best)")
    for protocol in args.protocols.split(","):
        r = measure(protocol, args.ops, args.warmup, thread_counts, args.repeat,
                    args.server_progress_thread, args.server_rpc_threads)
        cells = (f"{statistics.median(r[t]):10.0f} /{max(r[t]):9.0f}" for t in thread_counts)
        print(f"{protocol:<9} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
