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

import asyncio
import atexit
import enum
import types
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self, TypeVar, overload

from . import _native
from ._errors import (
    BulkError,
    BulkTimeoutError,
    BusyError,
    CancelledError,
    CourierError,
    DeadlineExceededError,
    RemoteError,
    SerializationError,
    StreamAbortedError,
    TimeoutError,
)
from ._native import (
    Address, Bulk, CallableRemoteFunction, Change, Group, GroupFunction, Handle, HandleItems,
    Member, RemoteFunction, Request, StreamCall, View,
)
from . import bulk
from . import _aio

__all__ = [
    "Engine", "Address", "Handle", "RemoteFunction", "CallableRemoteFunction", "Request",
    "StreamCall", "HandleItems", "Group", "View", "Member", "Change", "GroupFunction",
    "Bulk", "bulk", "CourierError", "TimeoutError", "RemoteError", "BulkError",
    "BulkTimeoutError", "CancelledError", "DeadlineExceededError", "BusyError", "Mode", "client", "server", "remote", "provider", "Provider",
    "SerializationError", "StreamAbortedError", "on_finalize", "on_prefinalize",
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

_live: "weakref.WeakSet[Engine]" = weakref.WeakSet()

#: What ``Engine.register`` takes as a handler: ``func(handle, *args,
#: **kwargs)``, whatever it returns (the response is what it passes to
#: ``handle.respond``; a generator's items are a response stream). Typed ``Callable[..., object]``: mypy cannot infer
#: a lambda's parameters against ``Concatenate[Handle, ...]``, and lambdas
#: make fine handlers.
_Handler = Callable[..., object]
_F = TypeVar("_F", bound=Callable[..., object])
_C = TypeVar("_C", bound=type)


class Engine(_native.Engine):
    """A Courier engine: ``Engine(protocol, mode=server,
    use_progress_thread=False, num_rpc_threads=0, config=None, *,
    stats=None, stats_timing=None, serve_stats=None)``.

    ``protocol`` is a protocol name (``tcp``, ``unix``, ``quic``, ``shm``,
    or an alias such as ``ofi+tcp`` or ``na+sm``) or a full listen address
    (``tcp://0.0.0.0:7000``), or several of them separated by commas
    (``tcp,shm``): the engine then listens on each, and its address is an
    address set, which ``lookup`` reaches by the fastest path both engines
    speak (``Address.path``). ``config`` is a dict or JSON string of
    Courier's engine settings. Use it as a context manager: leaving the
    block finalizes it.

    Bulk transfers: ``create_bulk(array, mode)`` and ``transfer(op,
    origin_addr, origin_handle, origin_offset, local_handle, local_offset,
    size, blocking=True, timeout=None)``, with the names of
    ``courier.bulk``.

    Statistics: ``stats()`` returns the engine's as a dict. Calls are
    counted by default (``stats=False`` turns it off);
    ``stats_timing=True`` also times their phases, ``serve_stats=True``
    lets peers read them (``Address.stats()``, ``courier stats ADDR``).

    Handlers run on the thread that waits in the engine
    (``wait_for_finalize``, a call, ...) unless ``use_progress_thread`` or
    ``num_rpc_threads`` ask for threads of their own.
    """

    # The constructor's arguments are those of the native ``__new__``
    # (courier/_native.pyi types them); ``__init__`` takes them all and
    # only sets up the Python half, so type checkers read the signature
    # from ``__new__``.
    _client_rpcs: set[tuple[str, int]]

    if not TYPE_CHECKING:
        def __init__(self, *args, **kwargs):
            self._client_rpcs = set()
            _live.add(self)
            _aio.engine_made(self)  # asyncio (_aio.py)

    @property
    def mode(self) -> Mode:
        """``pymargo.server`` or ``pymargo.client``."""
        return Mode[self._mode]

    @overload
    def register(
        self, rpc_name: str, func: None = None, provider_id: int = 0,
        disable_response: bool = False, *, loop: asyncio.AbstractEventLoop | None = None,
    ) -> RemoteFunction: ...

    @overload
    def register(
        self, rpc_name: str | None, func: _Handler, provider_id: int = 0,
        disable_response: bool = False, *, loop: asyncio.AbstractEventLoop | None = None,
    ) -> RemoteFunction: ...

    @overload
    def register(
        self, rpc_name: str, func: object, provider_id: str, disable_response: int = 0,
        *, loop: asyncio.AbstractEventLoop | None = None,
    ) -> RemoteFunction: ...

    def register(
        self, rpc_name: str | None = None, func: Any = None, provider_id: Any = 0,
        disable_response: Any = False, *, loop: asyncio.AbstractEventLoop | None = None,
    ) -> RemoteFunction:
        """Without ``func`` (a client): a RemoteFunction to call ``rpc_name``
        with. With ``func``: registers ``func(handle, *args, **kwargs)`` as
        the handler of ``rpc_name`` at ``provider_id`` (default name: the
        function's ``@remote`` name or qualified name) and returns the
        RemoteFunction for it. ``disable_response=True`` makes the RPC
        one-way: the handler runs, nothing is sent back.

        A coroutine function (``async def``) runs on an asyncio event loop:
        ``loop``, else the loop running in this thread, else a loop of the
        engine's own on a thread of its own (docs/python.md, "asyncio").

        A generator function (or one returning an iterator), and an async
        generator function, serve streams: each item it yields is sent to
        the caller's ``StreamCall`` (docs/python.md, "Streams")."""
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

    def registered(self, rpc_name: str, provider_id: int | None = None) -> RemoteFunction | None:
        """The RemoteFunction of ``rpc_name`` if it is registered here (a
        handler, or a client-side registration), else None."""
        pid = 0 if provider_id is None else provider_id
        if self._registered(rpc_name, pid) or (rpc_name, pid) in self._client_rpcs:
            return self._remote(rpc_name, pid, False)
        return None

    def deregister(self, rpc_name: str | RemoteFunction, provider_id: int = 0) -> None:
        """Removes the handler of ``rpc_name`` (a name or a RemoteFunction)
        at ``provider_id``; later requests get an error."""
        if isinstance(rpc_name, RemoteFunction):
            rpc_name.deregister()
            return
        self._client_rpcs.discard((rpc_name, provider_id))
        self._deregister(rpc_name, provider_id)

    def register_provider(
        self, provider: object, provider_id: int = 0, service_name: str | None = None,
    ) -> dict[str, RemoteFunction]:
        """Registers every method of ``provider`` (an object, or a module)
        decorated with ``@remote`` at ``provider_id``, and its methods
        decorated with ``@on_prefinalize`` / ``@on_finalize`` as this
        engine's finalize callbacks; returns {rpc name: RemoteFunction}."""
        cls_info = getattr(type(provider), "_pymargo_provider_info", None)
        if service_name is None and cls_info is not None:
            service_name = cls_info["service_name"]
        result: dict[str, RemoteFunction] = {}
        for attr in dir(provider):
            func = getattr(provider, attr)
            if getattr(func, "_pymargo_info_prefinalize", False) is True:
                self.on_prefinalize(func)
            if getattr(func, "_pymargo_info_finalize", False) is True:
                self.on_finalize(func)
            info = getattr(func, "_pymargo_info", None)
            if type(info) is not dict:
                continue
            prefix = service_name if service_name is not None else info["service_name"]
            name = info["rpc_name"] if prefix is None else f"{prefix}_{info['rpc_name']}"
            result[name] = self.register(name, func, provider_id, info["disable_response"])
        return result

    @classmethod
    def from_margo_instance_id(cls, mid: _native.InstanceId) -> Self:
        """Another object over the engine whose ``mid`` this is (PyMargo's
        ``from_margo_instance_id``). Garbage collecting it does not
        finalize the engine; ``finalize()`` does. ``mid`` is Courier's
        token, not a Margo instance: one from PyMargo's C code raises
        TypeError."""
        return cls("", _instance=mid)


@overload
def remote(rpc_name: _F, /) -> _F: ...


@overload
def remote(
    rpc_name: str | None = None, disable_response: bool = False, service_name: str | None = None,
) -> Callable[[_F], _F]: ...


def remote(
    rpc_name: Any = None, disable_response: bool = False, service_name: str | None = None,
) -> Any:
    """Decorator naming a handler for ``Engine.register`` /
    ``register_provider`` (PyMargo's ``@remote``): ``@remote`` alone names
    the RPC after the function, ``@remote(rpc_name=..., disable_response=...,
    service_name=...)`` sets its name and options."""
    if callable(rpc_name) and not isinstance(rpc_name, str):
        # Bare `@remote`: the function came in place of the name.
        if disable_response is not False or service_name is not None:
            raise TypeError("@remote: pass either the function (bare @remote) or options, not both")
        return remote()(rpc_name)

    def decorate(func: _F) -> _F:
        name = rpc_name if rpc_name is not None else getattr(func, "__name__", None)
        setattr(func, "_pymargo_info", {
            "rpc_name": name,
            "disable_response": disable_response,
            "service_name": service_name,
        })
        return func

    return decorate


def on_finalize(func: _F) -> _F:
    """Decorator marking a provider's method to be called when the engine
    it is registered with (``register_provider``) finalizes, at the end
    of finalize (PyMargo's ``on_finalize``)."""
    setattr(func, "_pymargo_info_finalize", True)
    return func


def on_prefinalize(func: _F) -> _F:
    """Decorator marking a provider's method to be called when the engine
    it is registered with (``register_provider``) starts to finalize,
    before anything stops (PyMargo's ``on_prefinalize``)."""
    setattr(func, "_pymargo_info_prefinalize", True)
    return func


def provider(service_name: str | None = None) -> Callable[[_C], _C]:
    """Class decorator giving a provider's RPCs a service-name prefix."""

    def decorate(cls: _C) -> _C:
        setattr(cls, "_pymargo_provider_info", {"service_name": service_name})
        return cls

    return decorate


class Provider:
    """PyMargo's older provider base class: an engine and a provider id."""

    def __init__(self, engine: Engine, provider_id: int) -> None:
        self._engine = engine
        self._provider_id = provider_id

    def register(self, rpc_name: str, method_name: str) -> RemoteFunction:
        return self._engine.register(rpc_name, getattr(self, method_name), self._provider_id)

    def registered(self, rpc_name: str) -> RemoteFunction | None:
        return self._engine.registered(rpc_name, self._provider_id)

    def get_provider_id(self) -> int:
        return self._provider_id

    @property
    def provider_id(self) -> int:
        return self._provider_id

    def get_engine(self) -> Engine:
        return self._engine

    @property
    def engine(self) -> Engine:
        return self._engine


@atexit.register
def _finalize_live_engines() -> None:
    # Finalize engines before the interpreter tears down, so no handler
    # thread wants the interpreter while it goes away.
    for engine in list(_live):
        try:
            engine.finalize()
        except BaseException:
            pass
