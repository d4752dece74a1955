"""asyncio support: which event loop an ``async def`` handler runs on.

The native side (``crates/courier-py/src/aio.rs``) runs the handler's
coroutine as a task of that loop; this module chooses the loop:

- the ``loop=`` given to ``Engine.register``;
- else the event loop running in the thread that registers the handler
  (``engine.register(...)`` called from a coroutine);
- else a loop of the engine's own, run by a thread the binding starts
  (``courier-py-asyncio``) the first time one is needed, and stopped when
  the engine is finalized (its tasks still running are cancelled, as
  ``asyncio.run`` cancels them).

See docs/python.md, "asyncio".
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar

from . import _native
from ._errors import CourierError

if TYPE_CHECKING:
    from . import Engine

_T = TypeVar("_T")

#: The request whose ``async def`` handler runs in this context (set by the
#: native side in the handler task's context; read by ``call_async`` to
#: inherit the request's deadline and cancellation).
request: contextvars.ContextVar[object] = contextvars.ContextVar("courier_request", default=None)

#: The name of the thread that runs an engine's own event loop.
LOOP_THREAD_NAME = "courier-py-asyncio"


async def awaited(future: Awaitable[_T]) -> _T:
    """The native awaitables' coroutine: ``call_async`` and the other
    ``*_async`` methods return ``awaited(future)`` rather than the asyncio
    future itself, so that ``asyncio.create_task`` takes them too.
    Cancelling the task cancels the future it waits on, and so the call."""
    return await future


async def ready(value: _T) -> _T:
    """A coroutine returning ``value`` at once (``StreamCall.__aenter__``)."""
    return value


async def serve_async_generator(handle: _native.Handle, agen: AsyncGenerator[object, None]) -> None:
    """An ``async def`` handler that yields: each item it yields is sent on
    the response stream (``await handle.send_item_async(item)``, once the
    caller has credit for it, so the generator is advanced only after the
    item before it was sent). Closed (``GeneratorExit`` at its ``yield``)
    when the task is cancelled (the caller left) or a send fails."""
    try:
        if not handle.is_stream:
            raise CourierError(
                f"the handler of RPC {handle.rpc_name!r} is an async generator, whose items "
                "make a response stream: call it with stream(), not as a plain call"
            )
        async for item in agen:
            await handle.send_item_async(item)
    finally:
        await agen.aclose()


def engine_made(engine: Engine) -> None:
    """An engine made while an event loop runs in this thread is driven by
    a thread of the binding from the start (when it has no progress
    thread): nothing else would wait in it, and its peers may connect to it
    before it is first awaited."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    engine._drive_for_asyncio()


def is_async_handler(func: object) -> bool:
    """Whether ``func`` is a coroutine function or an async generator
    function (also through a bound method or ``functools.partial``): its
    handler then runs on an event loop."""
    while isinstance(func, functools.partial):
        func = func.func
    return inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)


class _LoopThread:
    """An event loop run by a thread of its own until ``stop()``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=LOOP_THREAD_NAME, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            # As asyncio.run ends: what still runs is cancelled and waited
            # for, then the loop is closed.
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            if tasks:
                self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def stop(self) -> None:
        """Asks the loop to stop (from any thread, without waiting: it is
        called from the engine's finalize)."""
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:
            pass  # closed already


_own_loops_lock = threading.Lock()


def _own_loop(engine: Engine) -> asyncio.AbstractEventLoop:
    """The engine's own event loop, started on first use."""
    with _own_loops_lock:
        own: _LoopThread | None = getattr(engine, "_aio_own_loop", None)
        if own is None:
            own = _LoopThread()
            setattr(engine, "_aio_own_loop", own)
            engine.on_finalize(own.stop)
        return own.loop


def handler_loop(
    engine: Engine, loop: asyncio.AbstractEventLoop | None = None
) -> asyncio.AbstractEventLoop:
    """The event loop a coroutine handler registered now runs on."""
    if loop is not None:
        return loop
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return _own_loop(engine)


def register(
    engine: Engine,
    name: str,
    func: Callable[..., Coroutine[Any, Any, object]],
    provider_id: int,
    disable_response: bool,
    loop: asyncio.AbstractEventLoop | None = None,
) -> None:
    """Registers the coroutine function ``func`` as the handler of ``name``."""
    loop = handler_loop(engine, loop)
    engine._register_async(name, func, loop, mailbox(loop), provider_id, disable_response)


#: Each loop's mailbox, dropped with its loop; loops that take no weak
#: reference keep theirs in ``_kept_mailboxes``.
_mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _native._Mailbox] = (
    weakref.WeakKeyDictionary()
)
_kept_mailboxes: dict[asyncio.AbstractEventLoop, _native._Mailbox] = {}
_mailboxes_lock = threading.Lock()


def mailbox(loop: asyncio.AbstractEventLoop) -> _native._Mailbox:
    """The mailbox through which the engines hand ``loop`` what it must
    run (completed calls, handlers to start), made on first use: the loop
    watches its ``fileno()`` and calls its ``_drain()`` when it is readable.
    From the loop's own thread it is watched at once; from another, as soon
    as the loop runs."""
    with _mailboxes_lock:
        kept: MutableMapping[asyncio.AbstractEventLoop, _native._Mailbox]
        try:
            box = _mailboxes.get(loop)
            kept = _mailboxes
        except TypeError:
            box = _kept_mailboxes.get(loop)
            kept = _kept_mailboxes
        if box is not None:
            return box
        if loop.is_closed():
            raise RuntimeError(f"the asyncio event loop {loop!r} is closed")
        box = _native._Mailbox()
        running: asyncio.AbstractEventLoop | None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.add_reader(box.fileno(), box._drain)
        else:
            loop.call_soon_threadsafe(loop.add_reader, box.fileno(), box._drain)
        kept[loop] = box
        return box
