"""Streams from Python (issue 19): ``CallableRemoteFunction.stream()`` and
its ``StreamCall`` on the caller's side; generator handlers, ``Handle.
send_item``, ``recv_item`` and ``items()`` on the handler's; server-,
client- and bidirectional streams, an error mid-stream, a caller that
leaves early (its handler sees the cancellation), a deadline, an aborted
request stream, ``async for`` and async generator handlers.

Every protocol, in the set-ups of ``test_deadlines.py``: "inline" (one
engine serves and calls itself), "inline_thread" (a server with PyMargo's
defaults waiting in ``wait_for_finalize`` on a thread, and a separate
client), "progress" (a server with a progress thread) and "rpc_threads"
(two handler threads). What a handler saw comes back through a queue;
nothing waits by sleeping. ``GUARD_S`` guards against hangs only.
"""

import asyncio
import queue
import threading

import pytest

import courier

from conftest import GUARD_S, PROTOCOLS

#: A small window (bytes of items in flight each way), so that a few items
#: use the credit up and flow control works hard. (It also keeps a handler
#: that sends to a caller which stopped reading waiting for credit, where
#: a cancellation reaches it, rather than in a socket's write: a full
#: socket drains only when the caller's engine runs, and a client without
#: a progress thread runs only while one of its threads waits in it.)
SMALL_WINDOW = {"streams": {"window_bytes": 1024}}

#: What an item costs in credit beyond its bytes (`flow.rs`'s ITEM_COST):
#: a window of 1024 bytes holds at most 1024 / 32 items, plus one that
#: overshoots it.
MOST_ITEMS_IN_SMALL_WINDOW = 1024 // 32 + 1


@pytest.fixture(params=PROTOCOLS)
def protocol(request):
    return request.param


def make_pair(setup, protocol, config=SMALL_WINDOW):
    """(server, client, stop) as in ``test_deadlines.py`` (the same engine
    for "inline"), with ``config``."""
    if setup == "inline":
        engine = courier.Engine(protocol, config=config)
        return engine, engine, engine.finalize
    waiter = None
    if setup == "inline_thread":
        server = courier.Engine(protocol, config=config)
        waiter = threading.Thread(target=server.wait_for_finalize)
        waiter.start()
    elif setup == "progress":
        server = courier.Engine(protocol, use_progress_thread=True, config=config)
    else:
        server = courier.Engine(protocol, num_rpc_threads=2, config=config)
    client = courier.Engine(protocol, mode=courier.client, config=config)

    def stop():
        client.finalize()
        server.finalize()
        if waiter is not None:
            waiter.join(GUARD_S)
            assert not waiter.is_alive()

    return server, client, stop


@pytest.fixture(params=["inline", "inline_thread", "progress", "rpc_threads"])
def pair(request, protocol):
    server, client, stop = make_pair(request.param, protocol)
    yield server, client
    stop()


def address_of(server, client):
    return client.lookup(str(server.address))


def got(q):
    """What a handler put in ``q`` (guarded against a hang)."""
    return q.get(timeout=GUARD_S)


# ---------------------------------------------------------------------
# Server streams: generator handlers.


def test_a_generator_handler_streams_its_items_then_its_return_value(pair):
    server, client = pair

    def count(handle, n, start=0):
        for i in range(start, start + n):
            yield i
        return f"{n} sent"

    server.register("count", count)
    address = address_of(server, client)
    with client.register("count").on(address).stream(5, start=10) as call:
        assert list(call) == [10, 11, 12, 13, 14]
        assert call.recv() is None  # the end stays the end
        assert call.recv("end") == "end"
        assert call.finish() == "5 sent"
        assert call.finish() == "5 sent"  # again
        assert call.finished and not call.cancelled


def test_a_handler_may_return_an_iterator_and_items_are_any_picklable_value(pair):
    server, client = pair
    items = [None, b"\x00bytes", {"k": (1, 2.5)}, "text", [1, [2, [3]]]]

    def values(handle):
        return iter(items)

    server.register("values", values)
    call = client.register("values").on(address_of(server, client)).stream()
    assert list(call) == items
    assert call.finish() is None  # no return value: no answer


def test_a_handler_sends_items_with_send_item_then_responds(pair):
    server, client = pair

    def squares(handle, n):
        assert handle.is_stream
        for i in range(n):
            handle.send_item(i * i)
        handle.respond("done")

    server.register("squares", squares)
    call = client.register("squares").on(address_of(server, client)).stream(4)
    assert [call.recv() for _ in range(4)] == [0, 1, 4, 9]
    assert call.recv() is None
    assert call.finish() == "done"


def test_a_plain_call_is_not_a_stream(pair):
    """A generator handler called as a plain call fails, saying why; a
    handler's ``send_item`` in a plain call raises."""
    server, client = pair

    def gen(handle):
        yield 1

    def sender(handle):
        assert not handle.is_stream
        try:
            handle.send_item(1)
        except courier.CourierError as e:
            handle.respond(f"refused: {e}")

    server.register("gen", gen)
    server.register("sender", sender)
    address = address_of(server, client)
    with pytest.raises(courier.RemoteError, match=r"call it with stream\(\)"):
        client.register("gen").on(address)()
    answer = client.register("sender").on(address)()
    assert answer.startswith("refused: ") and "not called as a stream" in answer


# ---------------------------------------------------------------------
# Client streams and both ways.


def test_a_handler_reads_the_callers_items(pair):
    server, client = pair

    def total(handle, scale):
        handle.respond(scale * sum(handle.items()))

    def total_by_recv(handle):
        t = 0
        while (x := handle.recv_item()) is not None:
            t += x
        handle.respond(t)

    server.register("total", total)
    server.register("total_by_recv", total_by_recv)
    address = address_of(server, client)
    call = client.register("total").on(address).stream(scale=2)
    for x in range(100):
        call.send(x)
    call.close()
    assert call.finish() == 2 * 4950
    call = client.register("total_by_recv").on(address).stream()
    for x in range(1, 11):
        call.send(x)
    assert call.finish() == 55  # finish() closes the request stream


def test_both_ways_in_lockstep(pair):
    """A generator handler that reads the caller's items and yields each
    doubled: one thread sends an item and reads the answer to it."""
    server, client = pair

    def double(handle):
        for x in handle.items():
            yield 2 * x
        return "bye"

    server.register("double", double)
    with client.register("double").on(address_of(server, client)).stream() as call:
        for x in range(50):
            call.send(x)
            assert call.recv() == 2 * x
        call.close()
        assert call.recv() is None
        assert call.finish() == "bye"


def test_both_ways_at_once_from_two_threads(protocol):
    """A small window both ways: the caller sends from one thread while it
    reads on another (one thread that sent everything first would wait
    for credit forever, its handler too)."""
    server = courier.Engine(protocol, use_progress_thread=True, config=SMALL_WINDOW)
    client = courier.Engine(protocol, mode=courier.client, config=SMALL_WINDOW)
    try:
        def echo(handle):
            yield from handle.items()

        server.register("echo", echo)
        call = client.register("echo").on(address_of(server, client)).stream()
        sent = list(range(3000))
        failed = []

        def send_all():
            try:
                for x in sent:
                    call.send(x)
                call.close()
            except BaseException as e:  # reported below
                failed.append(e)

        sender = threading.Thread(target=send_all)
        sender.start()
        assert list(call) == sent
        sender.join(GUARD_S)
        assert not sender.is_alive() and failed == []
        assert call.finish() is None
    finally:
        client.finalize()
        server.finalize()


# ---------------------------------------------------------------------
# Errors, cancellation, deadlines.


def test_an_error_mid_stream_comes_after_the_items_before_it(pair):
    server, client = pair

    def three(handle):
        yield 1
        yield 2
        yield 3
        raise ValueError("no fourth item")

    server.register("three", three)
    call = client.register("three").on(address_of(server, client)).stream()
    assert [call.recv(), call.recv(), call.recv()] == [1, 2, 3]
    with pytest.raises(courier.RemoteError) as info:
        call.recv()
    assert isinstance(info.value, ValueError)
    assert info.value.type_name == "ValueError"
    assert info.value.remote_message == "no fourth item"
    with pytest.raises(ValueError, match="no fourth item"):
        call.finish()


def test_a_caller_that_leaves_early_closes_a_generator_handler(pair):
    """Leaving the ``with`` block after three items cancels the call: the
    endless generator is closed (``GeneratorExit`` at its ``yield``)."""
    server, client = pair
    seen = queue.Queue()

    def endless(handle):
        i = 0
        try:
            while True:
                yield i
                i += 1
        except GeneratorExit:
            seen.put(("closed", handle.is_cancelled(), handle.cancel_reason))
            raise

    server.register("endless", endless)
    with client.register("endless").on(address_of(server, client)).stream() as call:
        assert [next(call) for _ in range(3)] == [0, 1, 2]
    assert call.cancelled and not call.finished
    assert got(seen) == ("closed", True, "caller")
    with pytest.raises(courier.CancelledError):
        call.recv()
    with pytest.raises(courier.CancelledError):
        call.send(1)


def test_cancel_reaches_a_handler_sending_with_send_item(pair):
    server, client = pair
    seen = queue.Queue()

    def endless(handle):
        i = 0
        try:
            while True:
                handle.send_item(i)
                i += 1
        except courier.CancelledError as e:
            seen.put(("cancelled", e.reach))

    server.register("endless", endless)
    call = client.register("endless").on(address_of(server, client)).stream()
    assert call.recv() == 0
    call.cancel()
    assert got(seen) == ("cancelled", "unknown")
    with pytest.raises(courier.CancelledError):
        call.finish()


def test_dropping_the_call_cancels_it(pair):
    """Dropped while its handler reads items, a call is cancelled: the
    handler's read raises CancelledError, never ends as if the caller had
    closed its request stream."""
    server, client = pair
    first = queue.Queue()
    seen = queue.Queue()

    def wait_for_items(handle):
        first.put(handle.recv_item())
        try:
            for _ in handle.items():
                pass
        except courier.CancelledError:
            seen.put(handle.cancel_reason)
        else:
            seen.put("a clean end")

    server.register("wait_for_items", wait_for_items)
    server.register("ping", lambda h: h.respond("pong"))
    address = address_of(server, client)
    call = client.register("wait_for_items").on(address).stream()
    call.send("first")
    # Cancelled before its handler started, a request never runs it.
    assert got(first) == "first"
    call.send("second")
    del call
    # A call drives the client's engine, which sends the Cancel frame (over
    # QUIC, without a progress thread, nothing else would).
    assert client.register("ping").on(address)() == "pong"
    assert got(seen) == "caller"


def test_a_caller_that_reads_nothing_holds_a_generator(protocol):
    """Flow control reaches a generator handler: it is advanced only once
    its item before was sent, so a caller that reads nothing holds it once
    the window is used, until its deadline (300 ms) passes and the
    generator is closed."""
    server = courier.Engine(protocol, num_rpc_threads=1, config=SMALL_WINDOW)
    client = courier.Engine(protocol, mode=courier.client, config=SMALL_WINDOW)
    try:
        produced = queue.Queue()

        def flood(handle):
            i = 0
            try:
                while True:
                    yield i
                    i += 1
            finally:
                produced.put((i, handle.cancel_reason))

        server.register("flood", flood)
        call = client.register("flood").on(address_of(server, client)).stream(timeout=300)
        count, reason = got(produced)
        assert reason == "deadline"
        # The items sent, and the one waiting for credit when it ended.
        assert 1 <= count <= MOST_ITEMS_IN_SMALL_WINDOW + 1, count
        read = 0
        with pytest.raises(courier.TimeoutError):
            while True:
                assert call.recv() == read
                read += 1
        assert read <= count
    finally:
        client.finalize()
        server.finalize()


def test_a_deadline_ends_a_handler_waiting_for_items(pair):
    server, client = pair
    seen = queue.Queue()

    def wait_for_items(handle):
        try:
            handle.recv_item()
        except courier.CancelledError:
            seen.put(handle.cancel_reason)

    server.register("wait_for_items", wait_for_items)
    call = client.register("wait_for_items").on(address_of(server, client)).stream(timeout=300)
    with pytest.raises(courier.TimeoutError):
        call.recv()
    assert got(seen) in ("deadline", "caller")


def test_an_aborted_request_stream_reaches_the_handler(pair):
    server, client = pair

    def collect(handle):
        items = []
        try:
            for item in handle.items():
                items.append(item)
        except courier.StreamAbortedError as e:
            handle.respond((items, e.message, e.reach))

    server.register("collect", collect)
    call = client.register("collect").on(address_of(server, client)).stream()
    call.send("a")
    call.send("b")
    call.abort("changed my mind")
    with pytest.raises(courier.CourierError):
        call.send("c")
    assert call.finish() == (["a", "b"], "changed my mind", "reached")


def test_an_unpicklable_item_is_refused_and_the_stream_goes_on(pair):
    server, client = pair

    def total(handle):
        handle.respond(sum(handle.items()))

    server.register("total", total)
    call = client.register("total").on(address_of(server, client)).stream()
    call.send(1)
    with pytest.raises(courier.SerializationError) as info:
        call.send(threading.Lock())
    assert info.value.what == "item" and info.value.reach == "not_reached"
    call.send(2)
    assert call.finish() == 3


def test_a_one_way_function_cannot_stream(pair):
    server, client = pair
    with pytest.raises(ValueError, match="one-way"):
        client.register("x", disable_response=True).on(address_of(server, client)).stream()


def test_a_handler_relays_a_stream_of_its_own_engine(pair):
    """A generator handler that opens a stream to its own engine (another
    handler thread serves it) and relays its items; the inner stream
    inherits the outer request's deadline."""
    server, client = pair

    def source(handle, n):
        yield from range(n)
        return handle.remaining is not None

    inner = server.register("source", source)

    def relay(handle, n):
        with inner.on(server.address).stream(n) as call:
            for i in call:
                yield i + 100
            return call.finish()

    server.register("relay", relay)
    call = client.register("relay").on(address_of(server, client)).stream(200, timeout=GUARD_S * 1000)
    assert list(call) == list(range(100, 300))
    assert call.finish() is True


# ---------------------------------------------------------------------
# asyncio.


@pytest.fixture(params=["inline", "progress"])
def aio_setup(request):
    return request.param


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, GUARD_S))


def test_async_for_over_a_stream(protocol, aio_setup):
    """``async for`` over a blocking generator's and an async generator's
    items; ``send_async``; an ``async def`` handler reading with ``async
    for``; ``async with``."""
    progress = aio_setup == "progress"

    def count(handle, n):
        yield from range(n)
        return "counted"

    async def acount(handle, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    async def atotal(handle):
        t = 0
        async for x in handle.items():
            t += x
        await handle.respond_async(t)

    async def aecho(handle):
        while (x := await handle.recv_item_async()) is not None:
            await handle.send_item_async(x)
        await handle.respond_async("echoed")

    async def main():
        server = courier.Engine(protocol, use_progress_thread=progress)
        client = courier.Engine(protocol, mode=courier.client, use_progress_thread=progress)
        try:
            server.register("count", count)
            server.register("acount", acount)
            server.register("atotal", atotal)
            server.register("aecho", aecho)
            address = await client.lookup_async(str(server.address))
            async with await client.register("count").on(address).stream_async(5) as call:
                assert [x async for x in call] == [0, 1, 2, 3, 4]
                assert await call.recv_async() is None
                assert await call.finish_async() == "counted"
            call = await client.register("acount").on(address).stream_async(4)
            assert [x async for x in call] == [0, 1, 2, 3]
            assert await call.finish_async() is None
            call = await client.register("atotal").on(address).stream_async()
            for x in range(10):
                await call.send_async(x)
            await call.close_async()
            assert await call.finish_async() == 45
            call = await client.register("aecho").on(address).stream_async()
            for x in ("a", "b"):
                await call.send_async(x)
                assert await call.__anext__() == x
            await call.close_async()
            assert [x async for x in call] == []
            assert call.finish() == "echoed"
        finally:
            client.finalize()
            server.finalize()
        return True

    assert run(main())


def test_leaving_async_with_cancels_an_async_generator_handler(protocol, aio_setup):
    progress = aio_setup == "progress"

    async def main():
        server = courier.Engine(protocol, use_progress_thread=progress)
        client = courier.Engine(protocol, mode=courier.client, use_progress_thread=progress)
        closed = asyncio.get_running_loop().create_future()

        async def endless(handle):
            i = 0
            try:
                while True:
                    yield i
                    i += 1
            finally:
                closed.set_result(handle.cancel_reason)

        try:
            server.register("endless", endless)
            address = await client.lookup_async(str(server.address))
            async with await client.register("endless").on(address).stream_async() as call:
                assert [await call.__anext__() for _ in range(3)] == [0, 1, 2]
            assert call.cancelled
            assert await closed == "caller"
            with pytest.raises(courier.CancelledError):
                await call.recv_async()
        finally:
            client.finalize()
            server.finalize()
        return True

    assert run(main())
