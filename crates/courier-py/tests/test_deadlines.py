"""Deadlines and cancellation from Python (issue 16): what a handler knows
of its caller's patience (``handle.remaining``, ``handle.deadline``,
``handle.is_cancelled()``, ``handle.cancel_reason``), ``Request.cancel()``,
and calls made from a handler inheriting its deadline.

A handler that waits for its cancellation polls ``handle.is_cancelled()``
(the documented use), bounded by GUARD_S; what it saw comes back through a
queue or an event, never through sleeps.

Set-ups: "inline" (one engine serves and calls itself, handlers run on the
waiting thread), "inline_thread" (a server with PyMargo's defaults whose
one thread waits in ``wait_for_finalize``, and a separate client),
"progress" (a server with a progress thread) and "rpc_threads" (two
handler threads). A handler that runs until its caller cancels it needs a
thread other than its caller's: those tests leave "inline" out.
"""

import gc
import queue
import threading
import time

import pytest

import courier
import pymargo
from pymargo.core import Engine

from conftest import GUARD_S, PROTOCOLS

SEPARATE = ["inline_thread", "progress", "rpc_threads"]


@pytest.fixture(params=PROTOCOLS)
def protocol(request):
    return request.param


def make_pair(setup, protocol):
    """(server, client, stop): the same engine for "inline"."""
    if setup == "inline":
        engine = Engine(protocol)
        return engine, engine, engine.finalize
    if setup == "inline_thread":
        server = Engine(protocol)
        waiter = threading.Thread(target=server.wait_for_finalize)
        waiter.start()
    elif setup == "progress":
        server, waiter = Engine(protocol, use_progress_thread=True), None
    else:
        server, waiter = Engine(protocol, num_rpc_threads=2), None
    client = Engine(protocol, mode=pymargo.client)

    def stop():
        client.finalize()
        server.finalize()
        if waiter is not None:
            waiter.join(GUARD_S)
            assert not waiter.is_alive()

    return server, client, stop


@pytest.fixture(params=["inline"] + SEPARATE)
def pair(request, protocol):
    server, client, stop = make_pair(request.param, protocol)
    yield server, client
    stop()


@pytest.fixture(params=SEPARATE)
def separate(request, protocol):
    """A server whose handlers run on a thread other than the client's."""
    server, client, stop = make_pair(request.param, protocol)
    yield server, client
    stop()


def until_cancelled(handle):
    """Polls ``handle.is_cancelled()`` as a handler that works would; the
    reason, or "guard" if nothing came within GUARD_S."""
    give_up = time.monotonic() + GUARD_S
    while not handle.is_cancelled():
        if time.monotonic() > give_up:
            return "guard"
        time.sleep(0.005)
    return handle.cancel_reason


def drive_until(engine, event):
    """Lets ``engine`` make progress until ``event`` is set (without a
    progress thread nothing moves unless a thread waits in the engine)."""
    give_up = time.monotonic() + GUARD_S
    while not event.is_set():
        assert time.monotonic() < give_up, "no progress within GUARD_S"
        engine.sleep(0.002)


def test_no_timeout_no_deadline(pair):
    server, client = pair

    def look(handle):
        handle.respond((handle.remaining, handle.deadline, handle.is_cancelled(), handle.cancel_reason))

    server.register("look", look)
    call = client.register("look").on(client.lookup(str(server.address)))
    assert call() == (None, None, False, None)


def test_a_timeout_is_the_handlers_deadline(pair):
    server, client = pair

    def look(handle):
        handle.respond((handle.remaining, handle.deadline, time.monotonic(), handle.is_cancelled()))

    server.register("look", look)
    call = client.register("look").on(client.lookup(str(server.address)))
    before = time.monotonic()
    remaining, deadline, then, cancelled = call(timeout=5000)
    after = time.monotonic()
    assert 0 < remaining <= 5.0
    assert not cancelled
    # An instant of time.monotonic(), within the budget of when it was read.
    assert then < deadline <= then + 5.0
    assert before < deadline <= after + 5.0


def test_a_timeout_cancels_the_handler(pair):
    """The caller's timeout passes: it raises courier.TimeoutError, and the
    handler polling is_cancelled() sees it (the caller's Cancel frame, or
    the deadline passing at the server: whichever comes first)."""
    server, client = pair
    budget = queue.Queue()
    seen = queue.Queue()

    def spin(handle):
        budget.put(handle.remaining)
        reason = until_cancelled(handle)
        handle.respond("late")  # nobody waits for it: not sent, no error
        try:
            handle.respond("twice")
        except courier.CourierError as e:
            seen.put((reason, str(e)))
        else:
            seen.put((reason, "a second respond() did not raise"))

    server.register("spin", spin)
    call = client.register("spin").on(client.lookup(str(server.address)))
    with pytest.raises(courier.TimeoutError) as info:
        call(timeout=200)
    assert isinstance(info.value, TimeoutError)
    assert info.value.reach == "unknown"
    assert not info.value.is_retry_safe() and info.value.is_retry_safe(idempotent=True)
    assert 0 < budget.get(timeout=GUARD_S) <= 0.2
    reason, second = seen.get(timeout=GUARD_S)
    assert reason in ("caller", "deadline")
    assert "already responded" in second or "cancelled" in second, second


def test_cancel_reaches_the_handler(separate):
    """request.cancel() on a non-blocking call: the server's handler (no
    deadline: only the caller's Cancel frame can tell it) sees
    is_cancelled(), with reason "caller"; wait() raises CancelledError."""
    server, client = separate
    started = threading.Event()
    seen = queue.Queue()

    def spin(handle):
        started.set()
        seen.put(until_cancelled(handle))

    server.register("spin", spin)
    call = client.register("spin").on(client.lookup(str(server.address)))
    req = call(blocking=False)
    drive_until(client, started)
    assert not req.test() and not req.cancelled()
    assert req.cancel() is True
    assert seen.get(timeout=GUARD_S) == "caller"
    assert req.cancelled() and repr(req) == "Request(cancelled)"
    with pytest.raises(courier.CancelledError) as info:
        req.wait()
    err = info.value
    assert isinstance(err, courier.CourierError) and not isinstance(err, TimeoutError)
    assert err.rpc == "spin" and err.address == str(server.address)
    assert err.reach == "unknown" and not err.is_retry_safe()
    with pytest.raises(courier.CancelledError):
        req.wait()  # again: the same
    assert req.cancel() is False  # already over
    # The server goes on serving.
    server.register("ping", lambda h: h.respond("pong"))
    assert client.register("ping").on(client.lookup(str(server.address)))() == "pong"


def test_dropping_a_request_cancels_its_call(separate):
    server, client = separate
    started = threading.Event()
    seen = queue.Queue()

    def spin(handle):
        started.set()
        seen.put(until_cancelled(handle))

    server.register("spin", spin)
    server.register("ping", lambda h: h.respond("pong"))
    address = client.lookup(str(server.address))
    req = client.register("spin").on(address)(blocking=False)
    drive_until(client, started)
    del req
    gc.collect()
    # A call drives the client's engine, which sends the Cancel frame
    # (with a single handler thread the ping waits for the handler to end).
    assert client.register("ping").on(address)() == "pong"
    assert seen.get(timeout=GUARD_S) == "caller"


def test_a_request_cancelled_while_queued_never_runs(protocol):
    """One handler thread, busy until its caller cancels it; a second
    request, queued behind it, is cancelled too before the thread is free:
    its handler never runs."""
    with Engine(protocol, num_rpc_threads=1) as server, Engine(protocol, mode=pymargo.client) as client:
        started = threading.Event()
        ran = []
        seen = queue.Queue()

        def spin(handle):
            started.set()
            seen.put(until_cancelled(handle))

        server.register("spin", spin)
        server.register("queued", lambda h: (ran.append(h.rpc_name), h.respond("ran")))
        server.register("ping", lambda h: h.respond("pong"))
        address = client.lookup(str(server.address))
        busy = client.register("spin").on(address)(blocking=False)
        drive_until(client, started)
        queued = client.register("queued").on(address)(blocking=False)
        assert queued.cancel() is True
        assert busy.cancel() is True
        assert seen.get(timeout=GUARD_S) == "caller"
        # The ping runs after whatever was queued before it.
        assert client.register("ping").on(address)() == "pong"
        assert ran == []


def test_cancel_after_completion_keeps_the_result(pair):
    server, client = pair
    server.register("hello", lambda h, x: h.respond(f"hi {x}"))
    req = client.register("hello").on(client.lookup(str(server.address)))("a", blocking=False)
    assert req.wait() == "hi a"
    assert req.cancel() is False and not req.cancelled()
    assert req.wait() == "hi a"


def test_responses_and_one_way_calls_are_not_cancelled(pair):
    server, client = pair
    held = queue.Queue()
    server.register("later", lambda h: held.put(h))
    ran = threading.Event()
    server.register("note", lambda h: ran.set(), disable_response=True)
    address = client.lookup(str(server.address))
    req = client.register("later").on(address)(blocking=False)
    while held.empty():
        req.test()
    done = held.get().respond("answer", blocking=False)
    assert done.cancel() is False
    assert req.wait() == "answer" and done.wait() is None
    note = client.register("note", disable_response=True).on(address)(blocking=False)
    assert note.cancel() is False
    assert note.wait() is None


def test_handler_calls_inherit_the_deadline(pair):
    """A call made from a handler without a timeout carries what is left
    of the handler's deadline; one with a timeout of its own does not."""
    server, client = pair
    server.register("inner", lambda h: h.respond(h.remaining))

    def outer(handle):
        inner = server.register("inner").on(server.address)
        mine = handle.remaining
        handle.respond((mine, inner(), inner(timeout=60_000)))

    server.register("outer", outer)
    call = client.register("outer").on(client.lookup(str(server.address)))
    mine, inherited, own = call(timeout=5000)
    assert 0 < inherited <= mine <= 5.0
    assert 5.0 < own <= 60.0
    # Without a deadline, nothing is passed on.
    mine, inherited, own = call()
    assert mine is None and inherited is None and 5.0 < own <= 60.0


def test_a_spent_budget_is_not_sent(pair):
    """A handler whose deadline passed calls another RPC: nothing is sent,
    the call raises DeadlineExceededError (a TimeoutError, safe to retry)."""
    server, client = pair
    got = queue.Queue()
    server.register("inner", lambda h: h.respond("never"))

    def outer(handle):
        until_cancelled(handle)
        # The caller's Cancel frame may come first: then wait for the
        # deadline itself (else the call would be sent, and cancelled).
        give_up = time.monotonic() + GUARD_S
        while handle.remaining > 0 and time.monotonic() < give_up:
            time.sleep(0.005)
        try:
            server.register("inner").on(server.address)()
        except courier.CourierError as e:
            got.put((type(e), isinstance(e, courier.TimeoutError), e.rpc, e.reach, e.is_retry_safe()))
        else:
            got.put("sent")

    server.register("outer", outer)
    with pytest.raises(courier.TimeoutError):
        client.register("outer").on(client.lookup(str(server.address)))(timeout=100)
    assert got.get(timeout=GUARD_S) == (courier.DeadlineExceededError, True, "inner", "not_reached", True)


def test_cancellation_cascades(separate):
    """The caller cancels the outer call: the outer handler's own call
    (inheriting its request) is cancelled too, and its server's handler
    sees it."""
    server, client = separate
    inner_started = threading.Event()
    inner_seen = queue.Queue()
    outer_got = queue.Queue()

    def inner(handle):
        inner_started.set()
        inner_seen.put(until_cancelled(handle))

    def outer(handle):
        try:
            server.register("inner").on(server.address)()
        except courier.CourierError as e:
            outer_got.put((type(e), handle.is_cancelled(), handle.cancel_reason))
        else:
            outer_got.put("returned")

    server.register("inner", inner)
    server.register("outer", outer)
    req = client.register("outer").on(client.lookup(str(server.address)))(blocking=False)
    drive_until(client, inner_started)
    assert req.cancel() is True
    assert inner_seen.get(timeout=GUARD_S) == "caller"
    assert outer_got.get(timeout=GUARD_S) == (courier.CancelledError, True, "caller")
    with pytest.raises(courier.CancelledError):
        req.wait()


def test_busy_is_safe_to_retry(protocol):
    """A server at max_in_flight_per_connection, waiting for an answer from
    its caller, refuses that caller's next request as busy: BusyError,
    which never reached a handler."""
    with Engine(protocol, use_progress_thread=True) as a, Engine(
        protocol, use_progress_thread=True, config={"max_in_flight_per_connection": 1}
    ) as b:
        b.register("other", lambda h: h.respond("ran"))

        def callback(handle):
            try:
                a.register("other").on(a.lookup(str(b.address)))()
            except courier.CourierError as e:
                handle.respond((type(e), e.reach, e.is_retry_safe(), e.rpc))
            else:
                handle.respond("not refused")

        a.register("callback", callback)
        b.register("outer", lambda h: h.respond(b.register("callback").on(h.address)()))
        got = a.register("outer").on(a.lookup(str(b.address)))(timeout=GUARD_S * 1000)
        assert got == (courier.BusyError, "not_reached", True, "other")


def test_pymargo_names_the_new_errors():
    import pymargo.core as core

    assert core.CancelledError is courier.CancelledError
    assert core.DeadlineExceededError is courier.DeadlineExceededError
    assert core.BusyError is courier.BusyError
    assert issubclass(courier.DeadlineExceededError, courier.TimeoutError)
    assert issubclass(courier.BusyError, courier.CourierError)
    assert courier.CourierError("x").reach is None
    assert not courier.CourierError("x").is_retry_safe(idempotent=True)
