"""Bulk transfers: PyMargo's ``pymargo.bulk`` names on Courier.

::

    import courier.bulk as bulk

    # Client: expose bytes read-only and send the handle in an RPC.
    data = b"This is some bytes data"
    handle = engine.create_bulk(data, bulk.read_only)
    rpc.on(server)(handle, len(data))

    # Server handler: pull them into a buffer of its own.
    def put(h, remote, size):
        local = bytearray(size)
        local_handle = engine.create_bulk(local, bulk.write_only)
        engine.transfer(bulk.pull, h.address, remote, 0, local_handle, 0, size)
        h.respond(bytes(local))

A ``Bulk`` from ``Engine.create_bulk`` keeps its region exposed (and its
object exported) while it lives; pickled into an RPC's arguments it travels
as a handle, never with the data. See docs/python.md, "Bulk transfers".
"""

import enum

from . import _native
from ._errors import BulkError, BulkTimeoutError

__all__ = [
    "Bulk", "Access", "Op", "read_only", "write_only", "read_write", "push", "pull",
    "BulkError", "BulkTimeoutError",
]

Bulk = _native.Bulk


class Access(enum.IntEnum):
    """What peers may do with a region (Mercury's ``HG_BULK_*`` values)."""

    read_only = 1
    write_only = 2
    read_write = 3


class Op(enum.IntEnum):
    """The direction of a transfer (Mercury's ``HG_BULK_PUSH``/``PULL``)."""

    push = 0
    pull = 1


read_only = Access.read_only
write_only = Access.write_only
read_write = Access.read_write
push = Op.push
pull = Op.pull


def _unpickle(data: bytes) -> Bulk:
    """A pickled ``Bulk``: a remote handle on the sender's region."""
    return _native._bulk_from_bytes(data)
