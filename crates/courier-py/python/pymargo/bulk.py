"""PyMargo's ``pymargo.bulk`` on Courier: ``Bulk``, the access modes
``read_only`` / ``write_only`` / ``read_write`` and the operations
``push`` / ``pull`` (see the ``courier.bulk`` module)."""

from courier.bulk import (  # noqa: F401
    Access,
    Bulk,
    BulkError,
    Op,
    pull,
    push,
    read_only,
    read_write,
    write_only,
)

# What this module exports (type checkers in strict mode read re-exports
# from here).
__all__ = [
    "Access", "Bulk", "BulkError", "Op", "pull", "push", "read_only", "read_write", "write_only",
]
