"""A PyMargo bulk client: exposes its bytes to the server of argv[1], which
pulls them or pushes into them; prints what it sees, then shuts the
server down."""

import hashlib
import os
import sys

import pymargo
import pymargo.bulk
from pymargo.core import Engine

with Engine("tcp", mode=pymargo.client) as engine:
    address = engine.lookup(sys.argv[1])
    pull_from_bulk = engine.register("pull_from_bulk").on(address)
    push_to_bulk = engine.register("push_to_bulk").on(address)
    digest = engine.register("digest").on(address)

    data = b"This is some bytes data"
    bulk = engine.create_bulk(data, pymargo.bulk.read_only)
    print("pull:", pull_from_bulk(bulk=bulk, size=len(data)).decode())

    target = bytearray(data)
    bulk = engine.create_bulk(target, pymargo.bulk.write_only)
    push_to_bulk(bulk=bulk, size=len(target))
    print("push:", target.decode())

    bulk = engine.create_bulk(data, pymargo.bulk.read_only)
    print("ipull:", pull_from_bulk(bulk, len(data), False).decode())

    target = bytearray(data)
    bulk = engine.create_bulk(target, pymargo.bulk.write_only)
    push_to_bulk(bulk, len(target), False)
    print("ipush:", target.decode())

    big = os.urandom(1 << 20)
    bulk = engine.create_bulk(big, pymargo.bulk.read_only)
    ok = digest(bulk) == hashlib.sha256(big).hexdigest()
    print("1 MiB pull:", "ok" if ok else "MISMATCH")

    address.shutdown()
