"""Where Python handlers run (issue 17): on threads of the engine's own,
never on a thread that waits in the engine, so that handlers run and
timeouts fire whatever the program's threads are doing; handlers that call
their own engine, or call back their caller, complete in every mode; and
Ctrl-C interrupts every blocking call.

Modes: "default" (PyMargo's defaults: the engine's own thread), "progress"
(use_progress_thread=True) and "rpc" (num_rpc_threads=2). Nothing here
waits by sleeping: events, queues and a process's output lines say when
something happened, bounded by GUARD_S only as a guard against a hang.
"""

import signal
import sys
import threading

import pytest

import courier
from pymargo.core import Engine

from conftest import GUARD_S, HERE, PROTOCOLS

PROGRAM = HERE / "programs" / "threads_program.py"

MODES = {
    "default": {},
    "progress": {"use_progress_thread": True},
    "rpc": {"num_rpc_threads": 2},
}


@pytest.fixture(params=list(MODES))
def mode(request):
    return request.param


@pytest.mark.parametrize("scenario", ["oneway-sleep", "oneway-block"])
def test_one_way_handler_runs_while_the_main_thread_is_blocked(scripts, scenario, mode):
    # The main thread sleeps in time.sleep (or waits on an Event) right
    # after sending a one-way RPC to its own engine: the handler runs anyway,
    # on a thread of the engine's, and ends the process.
    program = scripts(PROGRAM, scenario, mode)
    assert program.next_line() == "sending"
    assert program.next_line() == "handler ran on another thread"
    assert program.wait() == 0, program.stderr()


def thread_name():
    """The OS name of this thread (Linux: what the engine named it)."""
    with open(f"/proc/self/task/{threading.get_native_id()}/comm") as comm:
        return comm.read().strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads thread names from /proc (Linux)")
@pytest.mark.parametrize("mode, name", [("default", "courier-py-prog"), ("progress", "courier-py-rpc"),
                                        ("rpc", "courier-py-rpc")])
def test_handlers_run_on_threads_of_the_engines_own(mode, name):
    # Not on the thread waiting in the engine; in PyMargo's default mode, on
    # the engine's own thread ("courier-py-progress", cut to 15 characters
    # by the OS).
    with Engine("tcp", **MODES[mode]) as engine:
        names = []

        def where(handle):
            names.append((threading.get_native_id(), thread_name()))
            handle.respond(None)

        f = engine.register("where", where).on(engine.address)
        f()
        f()
        assert [n for _, n in names] == [name] * 2
        assert threading.get_native_id() not in [tid for tid, _ in names]


class Stuck:
    """A handler that blocks until released, and says whether it started
    and whether it finished."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()

    def __call__(self, handle):
        self.entered.set()
        self.release.wait(GUARD_S)
        self.finished.set()
        handle.respond("late")

    def times_out(self, f):
        """Calls `f` with a 200 ms timeout: it must raise while the handler
        is still blocked (released only afterwards)."""
        try:
            with pytest.raises(courier.TimeoutError):
                f(timeout=200)
            assert self.entered.is_set()
            # Raised while the handler was still blocked, not after it.
            assert not self.finished.is_set()
        finally:
            self.release.set()


def test_a_self_call_times_out_while_its_handler_blocks(protocol_any, mode):
    # The call's timeout fires at its time, while the handler is still
    # blocked (the test releases it only afterwards).
    stuck = Stuck()
    with Engine(protocol_any, **MODES[mode]) as engine:
        stuck.times_out(engine.register("stuck", stuck).on(engine.address))
        # The engine serves on once the handler is released.
        assert engine.register("echo", lambda h, x: h.respond(x)).on(engine.address)(7) == 7


def test_a_timeout_fires_while_a_handler_blocks_without_a_self_call(mode):
    # Two engines in one process: a caller's timeout is not delayed by a
    # handler of another engine holding its thread.
    stuck = Stuck()
    with Engine("tcp", **MODES[mode]) as server, Engine("tcp", **MODES[mode]) as client:
        server.register("stuck", stuck)
        stuck.times_out(client.register("stuck").on(client.lookup(str(server.address))))


def test_a_handler_calls_its_own_engine(protocol_any, mode):
    with Engine(protocol_any, **MODES[mode]) as engine:
        inner = engine.register("inner", lambda h, x: h.respond(x * 2))

        def middle(handle, x):
            handle.respond(inner.on(engine.address)(x) + 1)

        mid = engine.register("middle", middle)

        def outer(handle, x):
            handle.respond(mid.on(engine.address)(x) + 100)

        f = engine.register("outer", outer).on(engine.address)
        assert f(5, timeout=GUARD_S * 1000) == 111
        # Several at once, from several threads.
        results = []

        def caller(n):
            results.append(f(n, timeout=GUARD_S * 1000))

        threads = [threading.Thread(target=caller, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [101, 103, 105, 107]


def test_a_handler_calls_back_its_caller(protocol_any, mode):
    # A calls B; B's handler calls A back at the caller's address; and a
    # handler of A that calls B, whose handler calls A again.
    with Engine(protocol_any, **MODES[mode]) as a, Engine(protocol_any, **MODES[mode]) as b:
        a.register("echo", lambda h, x: h.respond(("a", x)))
        a_echo = a.register("echo")
        b_echo = b.register("echo")

        def relay(handle, x):
            handle.respond(b_echo.on(handle.address)(x))

        b.register("relay", relay)
        relay_on_b = a.register("relay").on(a.lookup(str(b.address)))
        assert relay_on_b(1, timeout=GUARD_S * 1000) == ("a", 1)

        def outer(handle, x):
            handle.respond(relay_on_b(x))

        a.register("outer", outer)
        outer_on_a = b.register("outer").on(b.lookup(str(a.address)))
        assert outer_on_a(2, timeout=GUARD_S * 1000) == ("a", 2)
        del a_echo


@pytest.mark.parametrize("scenario", ["call", "serve"])
def test_ctrl_c_interrupts_a_blocked_process(scripts, scenario, mode):
    # A blocking call whose handler (on the engine's thread) never returns,
    # and wait_for_finalize with handlers registered: SIGINT raises
    # KeyboardInterrupt in the main thread, which leaves the process.
    program = scripts(PROGRAM, scenario, mode)
    assert program.next_line() == ("calling" if scenario == "call" else "serving")
    program.interrupt()
    status = program.wait()
    err = program.stderr()
    assert status == -signal.SIGINT, f"status {status}; stderr: {err}"
    assert "KeyboardInterrupt" in err


@pytest.fixture(params=PROTOCOLS)
def protocol_any(request):
    return request.param
