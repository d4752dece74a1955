"""Pulls 10 bytes from the peer at argv[1] (the test's plain socket, which
reads the request and never answers), with a handle naming region 1, so
the transfer waits forever. Ctrl-C must interrupt it."""

import sys

import pymargo
import pymargo.bulk
from pymargo.bulk import Bulk
from pymargo.core import Engine

# Region 1, key 1, read-only, offset 0, 10 bytes (five postcard varints).
REMOTE = Bulk.from_bytes(None, bytes([1, 1, 0, 0, 10]))

with Engine("tcp", mode=pymargo.client) as client:
    address = client.lookup(sys.argv[1])
    local = client.create_bulk(bytearray(10), pymargo.bulk.write_only)
    client.transfer(pymargo.bulk.pull, address, REMOTE, 0, local, 0, 10)
    print("not reached", flush=True)
