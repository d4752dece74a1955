"""PyMargo's package names on Courier: ``import pymargo; pymargo.client``
and ``from pymargo.core import Engine, Handle`` work unchanged.

This is a thin shim over the ``courier`` package, as PyMargo itself ships
``pymargo`` as a shim over ``mochi.margo``.
"""

from . import bulk, core, logging
from .core import (  # noqa: F401
    Address,
    CallableRemoteFunction,
    Engine,
    Handle,
    MargoException,
    Provider,
    RemoteFunction,
    client,
    on_finalize,
    on_prefinalize,
    provider,
    remote,
    server,
)

MargoAddress = core.Address
MargoHandle = core.Handle
MargoInstance = core.Engine

# What this package exports (type checkers in strict mode read re-exports
# from here).
__all__ = [
    "bulk", "core", "Address", "CallableRemoteFunction", "Engine", "Handle", "MargoException",
    "Provider", "RemoteFunction", "client", "provider", "remote", "server",
    "MargoAddress", "MargoHandle", "MargoInstance", "on_finalize", "on_prefinalize",
]
