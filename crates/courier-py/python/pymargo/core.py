"""PyMargo's ``pymargo.core`` names, on Courier (see the ``courier`` package)."""

from courier import (  # noqa: F401
    Address,
    Bulk,
    BulkError,
    BusyError,
    CallableRemoteFunction,
    CancelledError,
    CourierError,
    DeadlineExceededError,
    Engine,
    Handle,
    Provider,
    RemoteError,
    RemoteFunction,
    Request,
    TimeoutError,
    client,
    provider,
    remote,
    server,
)

#: PyMargo's exception type.
MargoException = CourierError

#: PyMargo's name for the request of a non-blocking call.
ForwardRequest = Request

# What this module exports (type checkers in strict mode read re-exports
# from here).
__all__ = [
    "Address", "Bulk", "BulkError", "BusyError", "CallableRemoteFunction", "CancelledError",
    "CourierError", "DeadlineExceededError", "Engine", "ForwardRequest", "Handle",
    "MargoException", "Provider", "RemoteError", "RemoteFunction", "Request", "TimeoutError",
    "client", "provider", "remote", "server",
]
