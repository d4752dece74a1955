"""Bulk transfers: the caller exposes an array of floats and sends only
its handle; the handler pulls the floats into a buffer of its own and sums
them. One engine serves and calls itself here, as in PyMargo's bulk test.

    python bulk_sum.py [PROTOCOL]
"""

import array
import sys

import courier.bulk as bulk
from courier import Bulk, Engine, Handle


def main(protocol: str) -> None:
    with Engine(protocol) as engine:

        def total(handle: Handle, remote: Bulk) -> None:
            local = bytearray(remote.size)
            local_bulk = engine.create_bulk(local, bulk.write_only)
            # Copies the caller's region into `local`: no RPC carries it.
            engine.transfer(bulk.pull, handle.address, remote, 0, local_bulk, 0, remote.size)
            handle.respond(sum(memoryview(local).cast("d")))

        rpc = engine.register("sum", total)
        values = array.array("d", (float(i) for i in range(100_000)))
        exposed = engine.create_bulk(values, bulk.read_only)
        result: float = rpc.on(engine.address)(exposed)
        print(f"sum of {len(values)} floats: {result}")
        assert result == sum(values)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tcp")
