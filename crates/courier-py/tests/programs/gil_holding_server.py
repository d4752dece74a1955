"""Exposes two regions, prints its address and their handles, then spins
in pure Python holding the GIL (a switch interval of 1000 s: no other
thread gets it) until a peer pushes a nonzero byte into the flag region.
It can only see that byte if the engine serves the peer's pull and push
without ever taking the GIL."""

import sys

import pymargo.bulk
from pymargo.core import Engine

with Engine("tcp", use_progress_thread=True) as engine:
    data = bytes(range(256)) * 4096  # 1 MiB: a pull served off the reader
    flag = bytearray(64 << 10)  # 64 KiB: on shm, a direct copy
    data_bulk = engine.create_bulk(data, pymargo.bulk.read_only)
    flag_bulk = engine.create_bulk(flag, pymargo.bulk.write_only)
    print(f"Service running at {engine.address}", flush=True)
    print(data_bulk.to_base64(), flush=True)
    print(flag_bulk.to_base64(), flush=True)
    sys.setswitchinterval(1000)
    while flag[-1] == 0:
        pass
    sys.setswitchinterval(0.005)
    print(f"seen {flag[-1]}", flush=True)
