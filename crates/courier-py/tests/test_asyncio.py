"""asyncio (issue 17): awaitable calls (``call_async`` and the other
``*_async`` methods), ``async def`` handlers, and cancellation both ways:
a cancelled awaiting task cancels its call and tells the server, and a
cancelled request cancels its handler's task.

Each test runs one event loop (``asyncio.run``) with a server engine and a
client engine in it, on every protocol, in two set-ups: "inline" (PyMargo's
defaults: no progress thread, so the binding drives each engine from a
thread of its own once asyncio uses it) and "progress" (both engines with a
progress thread). What a handler saw comes back through asyncio futures or
queues; nothing waits by sleeping. ``asyncio.wait_for(..., GUARD_S)``
guards against hangs only.
"""

import asyncio
import os
import signal
import threading
import time

import pytest

import courier
from courier import Engine

from conftest import GUARD_S, HERE, PROTOCOLS, doc_example, run_script

PROGRAMS = HERE / "programs"


@pytest.fixture(params=PROTOCOLS)
def protocol(request):
    return request.param


@pytest.fixture(params=["inline", "progress"])
def setup(request):
    return request.param


def engines(protocol, setup):
    """(server, client) for a set-up."""
    progress = setup == "progress"
    server = Engine(protocol, use_progress_thread=progress)
    client = Engine(protocol, mode=courier.client, use_progress_thread=progress)
    return server, client


def run(coro):
    """Runs ``coro`` on a new event loop, guarded against hangs."""
    return asyncio.run(asyncio.wait_for(coro, GUARD_S))


async def served(protocol, setup, body):
    """Runs ``body(server, client, address)`` with two engines; finalizes
    them afterwards."""
    server, client = engines(protocol, setup)
    try:
        address = await client.lookup_async(str(server.address))
        return await body(server, client, address)
    finally:
        client.finalize()
        server.finalize()


def test_call_async_returns_the_response(protocol, setup):
    async def body(server, client, address):
        def sync_hello(handle, name, punct="!"):
            handle.respond(f"Hello {name}{punct}")

        async def async_hello(handle, name, punct="!"):
            await asyncio.sleep(0)
            await handle.respond_async(f"Hi {name}{punct}")

        async def blocking_respond(handle, value):
            handle.respond(value * 2)  # the blocking respond works here too

        server.register("sync_hello", sync_hello)
        server.register("async_hello", async_hello)
        server.register("double", blocking_respond)
        assert await client.register("sync_hello").on(address).call_async("Ann", punct="?") == "Hello Ann?"
        assert await client.register("async_hello").on(address).call_async("Bob") == "Hi Bob!"
        assert await client.register("double").on(address).call_async(21) == 42
        # The blocking call still works (from a coroutine it blocks the loop
        # while it waits; the handler runs on the server's own thread here).
        assert client.register("sync_hello").on(address)("Cy") == "Hello Cy!"
        return True

    assert run(served(protocol, setup, body))


def test_the_other_awaitables(protocol, setup):
    async def body(server, client, address):
        assert await client.lookup_async(str(server.address)) == address
        seconds = await address.ping_async()
        assert isinstance(seconds, float) and seconds >= 0

        async def one_way(handle, value):
            got.set_result(value)

        got = asyncio.get_running_loop().create_future()
        server.register("one_way", one_way, disable_response=True)
        assert await client.register("one_way", disable_response=True).on(address).call_async(7) is None
        assert await got == 7
        return True

    assert run(served(protocol, setup, body))


def test_async_methods_of_a_provider(protocol, setup):
    """@courier.provider / @courier.remote on async def methods, registered
    with register_provider."""

    @courier.provider(service_name="kv")
    class Store:
        def __init__(self):
            self.items = {}

        @courier.remote()
        async def put(self, handle, key, value):
            self.items[key] = value
            await handle.respond_async(True)

        @courier.remote(rpc_name="get")
        async def fetch(self, handle, key):
            await handle.respond_async(self.items.get(key))

    async def body(server, client, address):
        store = Store()
        names = server.register_provider(store, provider_id=3)
        assert sorted(names) == ["kv_get", "kv_put"]
        assert await client.register("kv_put").on(address, provider_id=3).call_async("a", 1)
        assert await client.register("kv_get").on(address, provider_id=3).call_async("a") == 1
        assert store.items == {"a": 1}
        return True

    assert run(served(protocol, setup, body))


def test_an_async_handlers_exception_reaches_the_caller(protocol, setup):
    async def body(server, client, address):
        async def divide(handle, a, b):
            await asyncio.sleep(0)
            handle.respond(a / b)

        server.register("divide", divide)
        call = client.register("divide").on(address)
        assert await call.call_async(6, 3) == 2
        with pytest.raises(ZeroDivisionError) as raised:
            await call.call_async(1, 0)
        assert isinstance(raised.value, courier.RemoteError)
        assert raised.value.reach == "reached"
        # Wrong arguments: the coroutine function raises TypeError when called.
        with pytest.raises(TypeError):
            await call.call_async(1)
        return True

    assert run(served(protocol, setup, body))


def test_the_loop_is_not_blocked_while_a_call_is_in_flight(protocol, setup):
    """The handler waits for an event that only another task of the
    caller's event loop sets: the call completes only if that task runs
    while the call is awaited."""

    async def body(server, client, address):
        released = asyncio.Event()
        arrived = asyncio.Event()

        async def held(handle):
            arrived.set()
            await released.wait()
            await handle.respond_async("released")

        server.register("held", held)
        call = asyncio.create_task(client.register("held").on(address).call_async())
        await arrived.wait()
        assert not call.done()

        async def release():
            released.set()

        await asyncio.create_task(release())
        assert await call == "released"

        # The same with a blocking handler on a thread of its own, released
        # by the loop through a threading.Event.
        unblock = threading.Event()
        entered = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()

        def blocking(handle):
            loop.call_soon_threadsafe(entered.set_result, None)
            handle.respond(unblock.wait(GUARD_S))

        server.register("blocking", blocking)
        call = asyncio.create_task(client.register("blocking").on(address).call_async())
        await entered
        unblock.set()
        assert await call is True
        return True

    assert run(served(protocol, setup, body))


def test_a_hundred_gathered_calls_complete(protocol, setup):
    async def body(server, client, address):
        async def square(handle, x):
            await asyncio.sleep(0)
            await handle.respond_async(x * x)

        def cube(handle, x):
            handle.respond(x**3)

        server.register("square", square)
        server.register("cube", cube)
        squares = client.register("square").on(address)
        cubes = client.register("cube").on(address)
        got = await asyncio.gather(
            *(squares.call_async(i) for i in range(100)),
            *(cubes.call_async(i) for i in range(100)),
        )
        assert got == [i * i for i in range(100)] + [i**3 for i in range(100)]
        return True

    assert run(served(protocol, setup, body))


async def cancellable(server):
    """Registers "wait", an async handler that waits until it is cancelled;
    returns (arrived, seen): set when a request arrives, and the handler's
    view when its task is cancelled (is_cancelled(), cancel_reason)."""
    loop = asyncio.get_running_loop()
    arrived = asyncio.Queue()
    seen = asyncio.Queue()

    async def wait(handle):
        arrived.put_nowait(handle.remaining)
        try:
            await loop.create_future()  # never completes
        except asyncio.CancelledError:
            seen.put_nowait((handle.is_cancelled(), handle.cancel_reason))
            raise

    server.register("wait", wait)
    return arrived, seen


def test_cancelling_the_awaiting_task_cancels_the_call(protocol, setup):
    async def body(server, client, address):
        arrived, seen = await cancellable(server)
        call = asyncio.create_task(client.register("wait").on(address).call_async())
        await arrived.get()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        # The server was told: the handler's task was cancelled.
        assert await seen.get() == (True, "caller")
        return True

    assert run(served(protocol, setup, body))


def test_wait_for_expiry_cancels_the_call(protocol, setup):
    async def body(server, client, address):
        arrived, seen = await cancellable(server)
        waiting = client.register("wait").on(address)

        async def expire_once_arrived():
            call = asyncio.create_task(waiting.call_async())
            await arrived.get()
            # The call is in flight; wait_for's expiry cancels it.
            await asyncio.wait_for(call, 0)

        with pytest.raises(TimeoutError):
            await expire_once_arrived()
        assert await seen.get() == (True, "caller")

        # asyncio.timeout, the same way.
        async def time_out():
            async with asyncio.timeout(None) as scope:
                call = waiting.call_async()
                task = asyncio.ensure_future(call)
                await arrived.get()
                scope.reschedule(asyncio.get_running_loop().time())
                await task

        with pytest.raises(TimeoutError):
            await time_out()
        assert await seen.get() == (True, "caller")
        return True

    assert run(served(protocol, setup, body))


class Tagged:
    """Per-call events of a handler that waits until it is cancelled: each
    call carries a tag, so that a late one from an earlier try is told
    apart."""

    def __init__(self):
        self._arrived = {}
        self._seen = {}

    def arrived(self, tag):
        return self._arrived.setdefault(tag, asyncio.get_running_loop().create_future())

    def seen(self, tag):
        return self._seen.setdefault(tag, asyncio.get_running_loop().create_future())

    async def handler(self, handle, tag):
        self.arrived(tag).set_result(handle.remaining)
        try:
            await asyncio.get_running_loop().create_future()  # never completes
        except asyncio.CancelledError:
            self.seen(tag).set_result((handle.is_cancelled(), handle.cancel_reason))
            raise


async def time_out_while_handled(call, tagged):
    """Calls ``call(tag, timeout=ms)`` until its timeout passes while its
    handler runs: a timeout that passes before the handler starts (the
    machine is slow) is doubled. Returns (the TimeoutError, the budget the
    handler saw, the handler's view of its cancellation)."""
    timeout = 100
    for tag in range(32):
        calling = asyncio.ensure_future(call(tag, timeout=timeout))
        arrived = tagged.arrived(tag)
        await asyncio.wait({calling, arrived}, return_when=asyncio.FIRST_COMPLETED)
        with pytest.raises(courier.TimeoutError) as raised:
            await calling
        if arrived.done():
            return raised.value, arrived.result(), await tagged.seen(tag)
        timeout *= 2
    raise AssertionError("no handler started before its call's timeout")


def test_a_calls_timeout_raises_courier_timeout_error(protocol, setup):
    async def body(server, client, address):
        tagged = Tagged()
        server.register("wait", tagged.handler)
        error, budget, (cancelled, reason) = await time_out_while_handled(
            client.register("wait").on(address).call_async, tagged
        )
        assert isinstance(error, TimeoutError)
        assert error.reach == "unknown"
        assert budget is not None and budget > 0
        # The handler's task is cancelled: by the caller's Cancel, or by its
        # deadline passing at the server, whichever came first.
        assert cancelled and reason in ("caller", "deadline")
        return True

    assert run(served(protocol, setup, body))


def test_a_blocking_handler_sees_the_awaiting_callers_cancellation(protocol):
    """The handler is a blocking one polling ``is_cancelled()`` on the
    server's handler thread (a progress thread's)."""

    async def body(server, client, address):
        loop = asyncio.get_running_loop()
        arrived = loop.create_future()
        reason = loop.create_future()

        def spin(handle):
            loop.call_soon_threadsafe(arrived.set_result, None)
            give_up = time.monotonic() + GUARD_S
            while not handle.is_cancelled() and time.monotonic() < give_up:
                time.sleep(0.005)
            loop.call_soon_threadsafe(reason.set_result, handle.cancel_reason)

        server.register("spin", spin)
        call = asyncio.create_task(client.register("spin").on(address).call_async())
        await arrived
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await reason == "caller"
        return True

    assert run(served(protocol, "progress", body))


def test_calls_from_an_async_handler_inherit_its_cancellation(protocol, setup):
    """outer's handler awaits a call to "wait" (on a third engine): when
    outer's caller cancels, the inner call is cancelled too, and its own
    server is told."""

    async def body(server, client, address):
        third = Engine(protocol, use_progress_thread=setup == "progress")
        try:
            arrived, seen = await cancellable(third)
            inner = server.register("wait").on(await server.lookup_async(str(third.address)))
            budgets = asyncio.Queue()

            async def outer(handle):
                budgets.put_nowait(handle.remaining)
                await handle.respond_async(await inner.call_async())

            server.register("outer", outer)
            call = asyncio.create_task(client.register("outer").on(address).call_async(timeout=GUARD_S * 1000))
            # The inner call inherited outer's deadline.
            outer_budget = await budgets.get()
            inner_budget = await arrived.get()
            assert inner_budget is not None and inner_budget <= outer_budget
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert await seen.get() == (True, "caller")
            return True
        finally:
            third.finalize()

    assert run(served(protocol, setup, body))


def test_awaitables_after_finalize(protocol, setup):
    """On a finalized engine an awaitable raises CourierError (or, for
    wait_for_finalize_async, returns) at once: its task still runs."""

    async def body():
        server, client = engines(protocol, setup)
        address = await client.lookup_async(str(server.address))
        call = client.register("anything").on(address)
        server.finalize()
        client.finalize()
        await client.wait_for_finalize_async()
        with pytest.raises(courier.CourierError):
            await call.call_async()
        with pytest.raises(courier.CourierError):
            await client.lookup_async(str(server.address))
        return True

    assert run(body())


def test_wait_for_finalize_async_returns_on_a_remote_shutdown(protocol, setup):
    async def body(server, client, address):
        server.enable_remote_shutdown()

        async def hello(handle):
            await handle.respond_async("hi")

        server.register("hello", hello)
        waiting = asyncio.create_task(server.wait_for_finalize_async())
        call = client.register("hello").on(address)
        assert await asyncio.gather(*(call.call_async() for _ in range(50))) == ["hi"] * 50
        assert not waiting.done()
        address.shutdown()
        assert await waiting is None
        assert server.finalized
        return True

    assert run(served(protocol, setup, body))


def test_call_async_needs_a_running_loop(protocol):
    with Engine(protocol) as engine:
        engine.register("noop", lambda handle: handle.respond(None))
        call = engine.register("noop").on(engine.address)
        with pytest.raises(RuntimeError, match="event loop running"):
            call.call_async()
        with pytest.raises(RuntimeError, match="event loop running"):
            engine.lookup_async(str(engine.address))


def test_an_async_handler_registered_without_a_loop_runs_on_the_engines_own(protocol):
    """A synchronous program registers a coroutine handler: it runs on the
    loop the binding starts for the engine, and the blocking API calls it."""
    with Engine(protocol) as engine:

        async def where(handle, x):
            await asyncio.sleep(0)
            await handle.respond_async((threading.current_thread().name, x))

        engine.register("where", where)
        assert engine.register("where").on(engine.address)(5) == ("courier-py-asyncio", 5)
        own = engine._aio_own_loop
    # Finalizing the engine stopped its loop, and the thread ended.
    own._thread.join(GUARD_S)
    assert not own._thread.is_alive()
    assert own.loop.is_closed()


def test_a_handler_cannot_be_registered_on_a_closed_loop(protocol):
    closed = asyncio.new_event_loop()
    closed.close()
    with Engine(protocol) as engine:

        async def never(handle):
            handle.respond("unreachable")

        with pytest.raises(RuntimeError, match="is closed"):
            engine.register("never", never, loop=closed)


def test_an_explicit_loop_runs_the_handler(protocol):
    """``register(..., loop=)``: the handler runs on that loop, in its
    thread, while the registering thread makes blocking calls."""
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, name="my-loop")
    runner.start()
    try:
        with Engine(protocol) as engine:

            async def where(handle):
                await handle.respond_async(threading.current_thread().name)

            engine.register("where", where, loop=loop)
            assert engine.register("where").on(engine.address)() == "my-loop"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(GUARD_S)
        loop.close()


def test_requests_wait_for_their_loop_to_run(protocol):
    """A handler's loop that is not running yet: its requests wait, and run
    once it does."""
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, name="late-loop")
    try:
        with Engine(protocol) as engine:

            async def late(handle):
                await handle.respond_async(threading.current_thread().name)

            engine.register("late", late, loop=loop)
            request = engine.register("late").on(engine.address)(blocking=False)
            assert not request.test()  # nothing runs the handler yet
            runner.start()
            assert request.wait() == "late-loop"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        if runner.is_alive():
            runner.join(GUARD_S)
        loop.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_asyncio_across_two_processes(scripts, protocol):
    """An asyncio server process (async handlers, ``await
    engine.wait_for_finalize_async()``) and an asyncio client process:
    calls, 100 gathered calls, an exception, a timeout, and a cancelled
    call whose handler reports its cancellation."""
    server = scripts(PROGRAMS / "aio_server.py", protocol=protocol)
    address = server.expect_line("Service running at ")
    client = scripts(PROGRAMS / "aio_client.py", address, protocol=protocol)
    assert client.next_line() == "hello: Hello Matthieu Dorier"
    assert client.next_line() == "gathered: 100 squares"
    assert client.next_line() == "raised: RemoteZeroDivisionError"
    assert client.next_line() == "timeout: courier.TimeoutError"
    assert client.next_line() == "timed out call cancelled: True"
    assert client.next_line() == "waiting"
    assert client.next_line() == "cancelled: asyncio.CancelledError"
    assert client.next_line() == "the server saw: caller"
    assert client.wait() == 0, client.stderr()
    assert server.next_line() == "finalized"
    assert server.wait() == 0, server.stderr()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ctrl_c_stops_asyncio_processes(scripts, protocol):
    """Ctrl-C in an asyncio client awaiting a call: asyncio.run cancels the
    call (its handler is cancelled) and raises KeyboardInterrupt. Ctrl-C in
    an asyncio server awaiting wait_for_finalize_async: the same, and its
    engine is finalized on the way out."""
    server = scripts(PROGRAMS / "aio_server.py", protocol=protocol)
    address = server.expect_line("Service running at ")
    client = scripts(PROGRAMS / "aio_blocked_client.py", address, protocol=protocol)
    client.expect_line("calling")
    client.interrupt()
    assert client.wait() == -signal.SIGINT, client.stderr()
    assert "KeyboardInterrupt" in client.stderr()
    with Engine(protocol, mode=courier.client) as engine:
        cancellation = engine.register("cancellation").on(engine.lookup(address))
        # Its Cancel, or the connection closing as the process ended.
        assert cancellation("ctrl-c") in ("caller", "connection_lost")
    server.interrupt()
    assert server.wait() == -signal.SIGINT, server.stderr()
    assert "KeyboardInterrupt" in server.stderr()
    if protocol == "unix":
        # Leaving the `with` block finalized the engine: its socket is gone.
        assert not os.path.exists(address[len("unix://"):])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_documented_example_runs(scripts, tmp_path, protocol):
    """docs/python.md's asyncio server and client, as written."""
    (tmp_path / "server.py").write_text(doc_example("A runnable server (`server.py`):"))
    (tmp_path / "client.py").write_text(doc_example("And its client (`client.py`):"))
    server = scripts(tmp_path / "server.py", protocol=protocol)
    address = server.expect_line("Service running at ")
    status, out, err = run_script(tmp_path / "client.py", address, protocol=protocol)
    assert status == 0, err
    assert out.splitlines() == [
        "Good bye Matthieu",
        "100 replies",
        "gave up: the call is cancelled, the handler's task too",
        "courier.TimeoutError",
    ]
    assert server.wait() == 0, server.stderr()
