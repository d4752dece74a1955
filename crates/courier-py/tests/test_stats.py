"""Statistics from Python (issue 18): ``engine.stats()`` is the JSON
schema of docs/observability.md as a dict; ``address.stats()`` reads a
peer's through its statistics RPC, with the package's exceptions;
``stats_timing`` and ``serve_stats`` are keywords of ``Engine`` and keys of
its configuration; and the ``queue`` phase of a Python handler's request
includes its wait for a handler thread.

Nothing waits by sleeping: handlers hold on events the test sets, and the
test waits for a condition on the statistics, looking again after a
millisecond, under GUARD_S as a guard against a hang. No test asserts a
duration.
"""

import json
import threading
import time

import pytest

import courier
from courier import Engine

from conftest import GUARD_S, PROTOCOLS


def stats_until(engine, what, cond):
    """``engine.stats()`` once ``cond`` holds for it; fails with ``what``
    and the last statistics past the guard."""
    until = time.monotonic() + GUARD_S
    while True:
        stats = engine.stats()
        if cond(stats):
            return stats
        assert time.monotonic() < until, f"{what} did not happen: {json.dumps(stats, indent=1)}"
        time.sleep(0.001)


def rpc(stats, name, provider=0):
    found = [r for r in stats["rpcs"] if r["name"] == name and r["provider"] == provider]
    assert len(found) == 1, stats["rpcs"]
    return found[0]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_engine_stats_is_the_schema_as_a_dict(protocol):
    with Engine(protocol, use_progress_thread=True, stats_timing=True) as engine:
        engine.register("echo", lambda handle, x: handle.respond(x))
        echo = engine.register("echo").on(engine.address)
        for n in range(5):
            assert echo(n) == n
        # The server counts a request when its handle goes, which may come
        # just after the caller has its answer.
        stats = stats_until(engine, "five requests done",
                            lambda s: rpc(s, "echo")["served"]["in_flight"] == 0)
        assert isinstance(stats, dict)
        assert stats["schema"] == 1
        assert stats["protocol"] == engine.protocol
        assert stats["address"] == str(engine.address) or protocol == "shm"
        assert stats["timing"] is True
        served = rpc(stats, "echo")["served"]
        assert (served["calls"], served["ok"], served["in_flight"], served["waiting"]) == (5, 5, 0, 0)
        assert served["errors"] == {}
        assert set(served["phases"]) == {"queue", "handler", "respond"}
        assert served["phases"]["queue"]["count"] == 5
        called = rpc(stats, "echo")["called"]
        assert (called["calls"], called["ok"]) == (5, 5)
        assert called["phases"]["round_trip"]["count"] == 5
        # The handler threads, as `engine.config` gives them.
        assert stats["settings"]["use_progress_thread"] is True
        assert stats["settings"]["rpc_thread_count"] == engine.config["rpc_thread_count"]
        assert set(stats["progress"]) >= {"messages_in", "parks", "short_parks", "short_parks_us"}
        # Plain JSON values all through.
        assert json.loads(json.dumps(stats)) == stats


def test_timing_and_serving_come_from_keywords_or_the_configuration():
    with Engine("tcp") as plain:
        assert plain.stats()["timing"] is False
        assert plain.config["stats"] == {"counters": True, "timing": False, "serve": False}
    with Engine("tcp", config={"stats": {"timing": True, "serve": True}}) as configured:
        assert configured.stats()["timing"] is True
        assert configured.config["stats"] == {"counters": True, "timing": True, "serve": True}
    # A keyword takes precedence over the configuration.
    with Engine("tcp", config='{"stats": {"timing": true}}', stats_timing=False, serve_stats=True) as both:
        assert both.stats()["timing"] is False
        assert both.config["stats"] == {"counters": True, "timing": False, "serve": True}


@pytest.mark.parametrize("protocol", ["tcp", "unix"])
def test_address_stats_reads_a_peers_statistics(protocol):
    with Engine(protocol, use_progress_thread=True, serve_stats=True) as server, \
            Engine(protocol, mode=courier.client, use_progress_thread=True) as client:
        server.register("hello", lambda handle, name: handle.respond(f"Hello {name}"))
        address = client.lookup(str(server.address))
        assert client.register("hello").on(address)("you") == "Hello you"
        stats_until(server, "the request done", lambda s: rpc(s, "hello")["served"]["ok"] == 1)
        theirs = address.stats()
        assert theirs["schema"] == 1
        assert theirs["address"] == server.stats()["address"]
        assert rpc(theirs, "hello")["served"]["ok"] == 1
        assert address.stats(timeout=GUARD_S * 1000)["schema"] == 1
        with pytest.raises(ValueError, match="milliseconds"):
            address.stats(timeout=-1)


def test_address_stats_of_an_engine_that_does_not_serve_them_raises():
    with Engine("tcp", use_progress_thread=True, stats=False) as server, \
            Engine("tcp", mode=courier.client, use_progress_thread=True) as client:
        address = client.lookup(str(server.address))
        with pytest.raises(courier.RemoteError, match="does not serve its statistics") as raised:
            address.stats()
        assert isinstance(raised.value, courier.CourierError)
        assert "serve --stats" in str(raised.value)


def test_a_request_waiting_for_the_handler_thread_counts_as_waiting():
    # One handler at a time (a progress thread reads requests meanwhile):
    # the first request holds the handler thread, the second waits for it.
    with Engine("tcp", use_progress_thread=True, stats_timing=True) as server, \
            Engine("tcp", mode=courier.client, use_progress_thread=True) as client:
        release = threading.Event()
        started = []

        def hold(handle, n):
            started.append(n)
            if n == 0:
                assert release.wait(GUARD_S)
            handle.respond(n)

        server.register("hold", hold)
        call = client.register("hold").on(client.lookup(str(server.address)))
        results = {}

        def caller(n):
            results[n] = call(n)

        first = threading.Thread(target=caller, args=(0,))
        first.start()
        stats_until(server, "the first request running", lambda s: started == [0])
        second = threading.Thread(target=caller, args=(1,))
        second.start()
        stats = stats_until(server, "the second request waiting for the handler thread",
                            lambda s: rpc(s, "hold")["served"]["in_flight"] == 2)
        served = rpc(stats, "hold")["served"]
        assert served["waiting"] == 1, served
        assert started == [0], "the second handler has not started"
        release.set()
        first.join(GUARD_S)
        second.join(GUARD_S)
        assert results == {0: 0, 1: 1}
        served = rpc(stats_until(server, "both requests done",
                                 lambda s: rpc(s, "hold")["served"]["in_flight"] == 0), "hold")["served"]
        assert (served["ok"], served["waiting"]) == (2, 0)
        # Timed from arrival to the thread's start: the queue phase of each.
        assert served["phases"]["queue"]["count"] == 2
        assert served["phases"]["handler"]["count"] == 2


def test_async_handlers_are_counted_and_timed_from_their_loop():
    # An `async def` handler waits for its event loop (a thread of the
    # engine's own here): its queue phase runs until the loop starts it.
    with Engine("tcp", use_progress_thread=True, stats_timing=True) as engine:
        async def double(handle, x):
            await handle.respond_async(2 * x)

        engine.register("double", double)
        call = engine.register("double").on(engine.address)
        assert [call(n) for n in range(3)] == [0, 2, 4]
        served = rpc(stats_until(engine, "three requests done",
                                 lambda s: rpc(s, "double")["served"]["in_flight"] == 0), "double")["served"]
        assert (served["calls"], served["ok"], served["waiting"]) == (3, 3, 0)
        assert served["phases"]["queue"]["count"] == 3
