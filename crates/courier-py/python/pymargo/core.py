"""PyMargo's ``pymargo.core`` names, on Courier (see the ``courier`` package).

``Engine`` here is ``courier.Engine`` with PyMargo's own ways where
Courier's differ: ``create_bulk`` exposes a ``bytes`` object writable when
asked to (PyMargo writes into it; docs/python.md says why that is
hazardous, and ``courier.Engine`` refuses it), and ``engine.logger``
(``pymargo.logging``).
"""

from typing import TYPE_CHECKING

import courier as _courier
from courier import (  # noqa: F401
    Address,
    Bulk,
    BulkError,
    BusyError,
    CallableRemoteFunction,
    CancelledError,
    CourierError,
    DeadlineExceededError,
    Handle,
    Provider,
    RemoteError,
    RemoteFunction,
    Request,
    SerializationError,
    TimeoutError,
    client,
    on_finalize,
    on_prefinalize,
    provider,
    remote,
    server,
)

from . import logging as _pymargo_logging
from .logging import Logger  # noqa: F401  (PyMargo's core has it too)

if TYPE_CHECKING:
    # Stub-only names (courier/_native.pyi): what `create_bulk` takes.
    from typing_extensions import Buffer

    from courier._native import _AccessArg

#: PyMargo's exception type.
MargoException = CourierError

#: PyMargo's name for the request of a non-blocking call.
ForwardRequest = Request


class Engine(_courier.Engine):
    """``courier.Engine`` as PyMargo's ``Engine``: the same, but for
    ``create_bulk`` over ``bytes`` and ``logger`` (see the module)."""

    def create_bulk(
        self, array: "Buffer | list[Buffer] | tuple[Buffer, ...]", mode: "_AccessArg"
    ) -> Bulk:
        """As ``courier.Engine.create_bulk``, but a ``bytes`` object may be
        exposed ``write_only`` or ``read_write``, as PyMargo allows: peers
        then write into it although Python holds bytes immutable. Only
        write into a ``bytes`` object made for it (``bytes(n)``), never a
        literal, an empty or one-byte ``bytes`` (shared by the whole
        interpreter) or one used as a dict key (its hash is cached); a
        ``bytearray`` does the same without the hazard."""
        return self._create_bulk_pymargo(array, mode)

    @property
    def logger(self) -> _pymargo_logging.EngineLogger:
        """This engine's logger (``pymargo.logging``): ``trace(msg)`` ...
        ``critical(msg)``, ``set_logger(logger)``, ``set_log_level(level)``."""
        logger: _pymargo_logging.EngineLogger | None = self.__dict__.get("_pymargo_logger")
        if logger is None:
            logger = self.__dict__.setdefault("_pymargo_logger", _pymargo_logging.EngineLogger())
        return logger

# What this module exports (type checkers in strict mode read re-exports
# from here).
__all__ = [
    "Address", "Bulk", "BulkError", "BusyError", "CallableRemoteFunction", "CancelledError",
    "CourierError", "DeadlineExceededError", "Engine", "ForwardRequest", "Handle", "Logger",
    "MargoException", "Provider", "RemoteError", "RemoteFunction", "Request",
    "SerializationError", "TimeoutError", "client", "on_finalize", "on_prefinalize",
    "provider", "remote", "server",
]
