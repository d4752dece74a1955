"""Courier from Python, with PyMargo's API.

::

    from courier import Engine

    with Engine("tcp") as engine:
        engine.register("hello", lambda handle, name: handle.respond(f"Hello {name}"))
        print(engine.address)
        engine.enable_remote_shutdown()
        engine.wait_for_finalize()

The same names are importable as ``pymargo.core`` (see docs/python.md).
"""

import atexit
import enum
import types
import weakref

from . import _native
from ._errors import (
    BulkError,
    BulkTimeoutError,
    BusyError,
    CancelledError,
    CourierError,
    DeadlineExceededError,
    RemoteError,
    TimeoutError,
)
from ._native import Address, Bulk, CallableRemoteFunction, Handle, RemoteFunction, Request
from . import bulk
from . import _aio

__all__ = [
    "Engine", "Address", "Handle", "RemoteFunction", "CallableRemoteFunction", "Request",
    "Bulk", "bulk", "CourierError", "TimeoutError", "RemoteError", "BulkError",
    "BulkTimeoutError", "CancelledError", "DeadlineExceededError", "BusyError", "Mode", "client", "server", "remote", "provider", "Provider",
]
__version__ = _native.__version__

#: The environment variable that makes every engine of the process use
#: another protocol than the one the program names (see docs/python.md).
PROTOCOL_OVERRIDE_ENV = _native.PROTOCOL_OVERRIDE_ENV


class Mode(enum.IntEnum):
    """PyMargo's mode tags (Margo's values: client 0, server 1)."""

    client = 0
    server = 1


client = Mode.client
server = Mode.server

_live = weakref.WeakSet()


class Engine(_native.Engine):
    """A Courier engine: ``Engine(protocol, mode=server,
    use_progress_thread=False, num_rpc_threads=0, config=None)``.

    ``protocol`` is a protocol name (``tcp``, ``unix``, ``quic``, ``shm``,
    or an alias such as ``ofi+tcp`` or ``na+sm``) or a full listen address
    (``tcp://0.0.0.0:7000``). ``config`` is a dict or JSON string of
    Courier's engine settings. Use it as a context manager: leaving the
    block finalizes it.

    Bulk transfers: ``create_bulk(array, mode)`` and ``transfer(op,
    origin_addr, origin_handle, origin_offset, local_handle, local_offset,
    size, blocking=True, timeout=None)``, with the names of
    ``courier.bulk``.

    Handlers run on the thread that waits in the engine
    (``wait_for_finalize``, a call, ...) unless ``use_progress_thread`` or
    ``num_rpc_threads`` ask for threads of their own.
    """

    def __init__(self, *args, **kwargs):
        self._client_rpcs = set()
        _live.add(self)
        _aio.engine_made(self)  # asyncio (_aio.py)

    @property
    def mode(self):
        """``pymargo.server`` or ``pymargo.client``."""
        return Mode[self._mode]

    def register(self, rpc_name=None, func=None, provider_id=0, disable_response=False, *, loop=None):
        """Without ``func`` (a client): a RemoteFunction to call ``rpc_name``
        with. With ``func``: registers ``func(handle, *args, **kwargs)`` as
        the handler of ``rpc_name`` at ``provider_id`` (default name: the
        function's ``@remote`` name or qualified name) and returns the
        RemoteFunction for it. ``disable_response=True`` makes the RPC
        one-way: the handler runs, nothing is sent back.

        A coroutine function (``async def``) runs on an asyncio event loop:
        ``loop``, else the loop running in this thread, else a loop of the
        engine's own on a thread of its own (docs/python.md, "asyncio")."""
        if func is not None and isinstance(provider_id, str):
            # PyMargo's older form: register(name, obj, method_name, provider_id).
            func, provider_id, disable_response = getattr(func, provider_id), int(disable_response), False
        if func is None:
            if rpc_name is None:
                raise ValueError("client-side registration needs the RPC's name")
            name = str(rpc_name)
            self._client_rpcs.add((name, provider_id))
            return self._remote(name, provider_id, bool(disable_response))
        info = getattr(func, "_pymargo_info", None)
        if rpc_name is None:
            if info is not None:
                rpc_name = info["rpc_name"]
                disable_response = info["disable_response"]
            elif isinstance(func, types.MethodType):
                rpc_name = func.__func__.__qualname__
            else:
                rpc_name = getattr(func, "__qualname__", None)
            if rpc_name is None:
                raise ValueError("cannot name the RPC: pass rpc_name")
        name = str(rpc_name)
        if _aio.is_async_handler(func):  # asyncio (_aio.py)
            _aio.register(self, name, func, provider_id, bool(disable_response), loop)
        else:
            self._register(name, func, provider_id, bool(disable_response))
        return self._remote(name, provider_id, bool(disable_response))

    def registered(self, rpc_name, provider_id=None):
        """The RemoteFunction of ``rpc_name`` if it is registered here (a
        handler, or a client-side registration), else None."""
        pid = 0 if provider_id is None else provider_id
        if self._registered(rpc_name, pid) or (rpc_name, pid) in self._client_rpcs:
            return self._remote(rpc_name, pid, False)
        return None

    def deregister(self, rpc_name, provider_id=0):
        """Removes the handler of ``rpc_name`` (a name or a RemoteFunction)
        at ``provider_id``; later requests get an error."""
        if isinstance(rpc_name, RemoteFunction):
            rpc_name.deregister()
            return
        self._client_rpcs.discard((rpc_name, provider_id))
        self._deregister(rpc_name, provider_id)

    def register_provider(self, provider, provider_id=0, service_name=None):
        """Registers every method of ``provider`` decorated with ``@remote``
        at ``provider_id``; returns {rpc name: RemoteFunction}."""
        cls_info = getattr(type(provider), "_pymargo_provider_info", None)
        if service_name is None and cls_info is not None:
            service_name = cls_info["service_name"]
        result = {}
        for attr in dir(provider):
            func = getattr(provider, attr)
            info = getattr(func, "_pymargo_info", None)
            if info is None:
                continue
            prefix = service_name if service_name is not None else info["service_name"]
            name = info["rpc_name"] if prefix is None else f"{prefix}_{info['rpc_name']}"
            result[name] = self.register(name, func, provider_id, info["disable_response"])
        return result


def remote(rpc_name=None, disable_response=False, service_name=None):
    """Decorator naming a handler for ``Engine.register`` /
    ``register_provider`` (PyMargo's ``@remote``)."""

    def decorate(func):
        name = rpc_name if rpc_name is not None else getattr(func, "__name__", None)
        func._pymargo_info = {
            "rpc_name": name,
            "disable_response": disable_response,
            "service_name": service_name,
        }
        return func

    return decorate


def provider(service_name=None):
    """Class decorator giving a provider's RPCs a service-name prefix."""

    def decorate(cls):
        cls._pymargo_provider_info = {"service_name": service_name}
        return cls

    return decorate


class Provider:
    """PyMargo's older provider base class: an engine and a provider id."""

    def __init__(self, engine, provider_id):
        self._engine = engine
        self._provider_id = provider_id

    def register(self, rpc_name, method_name):
        return self._engine.register(rpc_name, getattr(self, method_name), self._provider_id)

    def registered(self, rpc_name):
        return self._engine.registered(rpc_name, self._provider_id)

    def get_provider_id(self):
        return self._provider_id

    @property
    def provider_id(self):
        return self._provider_id

    def get_engine(self):
        return self._engine

    @property
    def engine(self):
        return self._engine


@atexit.register
def _finalize_live_engines():
    # Finalize engines before the interpreter tears down, so no handler
    # thread wants the interpreter while it goes away.
    for engine in list(_live):
        try:
            engine.finalize()
        except BaseException:
            pass
