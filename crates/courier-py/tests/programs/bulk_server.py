"""PyMargo's bulk test handlers as a server process: pull the caller's
bytes, push into the caller's region at offset 8 (blocking and not), and
pull a large region and answer its digest. Prints its address."""

import hashlib

import pymargo.bulk
from pymargo.core import Engine


class Receiver:
    def __init__(self, engine):
        self.engine = engine

    def pull_from_bulk(self, handle, bulk, size, blocking=True):
        local_data = bytearray(size)
        local_bulk = self.engine.create_bulk(local_data, pymargo.bulk.write_only)
        req = self.engine.transfer(pymargo.bulk.pull, handle.address, bulk, 0,
                                   local_bulk, 0, size, blocking=blocking)
        if not blocking:
            req.wait()
        handle.respond(bytes(local_data))

    def push_to_bulk(self, handle, bulk, size, blocking=True):
        local_bulk = self.engine.create_bulk(b"more", pymargo.bulk.read_only)
        req = self.engine.transfer(pymargo.bulk.push, handle.address, bulk, 8,
                                   local_bulk, 0, 4, blocking=blocking)
        if not blocking:
            req.wait()
        handle.respond()

    def digest(self, handle, bulk):
        local_data = bytearray(bulk.size)
        local_bulk = self.engine.create_bulk(local_data, pymargo.bulk.write_only)
        self.engine.transfer(pymargo.bulk.pull, handle.address, bulk, 0,
                             local_bulk, 0, bulk.size)
        handle.respond(hashlib.sha256(local_data).hexdigest())


with Engine("tcp") as engine:
    receiver = Receiver(engine)
    engine.register("pull_from_bulk", receiver.pull_from_bulk)
    engine.register("push_to_bulk", receiver.push_to_bulk)
    engine.register("digest", receiver.digest)
    print(f"Service running at {engine.address}", flush=True)
    engine.enable_remote_shutdown()
    engine.wait_for_finalize()
