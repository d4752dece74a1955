"""PyMargo's documented API on Courier, in one process.

Most tests run on every protocol and in three threading set-ups:
"inline" (PyMargo's defaults: one engine serves and calls itself, its
handlers run while a thread waits in it), "progress" (a server engine
with a progress thread, a separate client engine) and "rpc_threads"
(a server with two handler threads)."""

import gc
import json
import threading
import time

import pytest

import courier
import pymargo
from pymargo.core import Address, Engine, Handle

from conftest import GUARD_S, PROTOCOLS, needs_shm

SETUPS = ["inline", "progress", "rpc_threads"]


@pytest.fixture(params=PROTOCOLS)
def protocol(request):
    return request.param


@pytest.fixture(params=SETUPS)
def pair(request, protocol):
    """(server engine, client engine): the same engine for "inline"."""
    if request.param == "inline":
        engine = Engine(protocol)
        yield engine, engine
        engine.finalize()
        return
    if request.param == "progress":
        server = Engine(protocol, use_progress_thread=True)
    else:
        server = Engine(protocol, num_rpc_threads=2)
    client = Engine(protocol, mode=pymargo.client)
    yield server, client
    client.finalize()
    server.finalize()


def hello(handle, firstname, lastname="Doe"):
    handle.respond(f"Good bye {firstname} {lastname}")


def test_round_trip_with_positional_and_keyword_arguments(pair):
    server, client = pair
    server.register("hello", hello)
    rf = client.register("hello")
    address = client.lookup(str(server.address))
    assert rf.on(address)("Matthieu", lastname="Dorier") == "Good bye Matthieu Dorier"
    assert rf.on(address)("Ada") == "Good bye Ada Doe"


def test_any_picklable_value_travels(pair):
    server, client = pair
    server.register("echo", lambda h, *a, **k: h.respond((a, k)))
    echo = client.register("echo").on(client.lookup(str(server.address)))
    value = {"list": [1, 2.5, None], "bytes": b"\x00" * 100_000, "set": {1, 2}}
    assert echo(value, 7, key=("x", 3)) == ((value, 7), {"key": ("x", 3)})


def test_respond_without_value_sends_none(pair):
    server, client = pair
    server.register("nothing", lambda h: h.respond())
    assert client.register("nothing").on(client.lookup(str(server.address)))() is None


def test_handle_address_is_the_callers(protocol):
    with Engine(protocol, use_progress_thread=True) as server, Engine(protocol) as client:
        seen = []

        def who(handle):
            seen.append(handle.address)
            handle.respond(str(handle.get_addr()))

        server.register("who", who)
        answer = client.register("who").on(client.lookup(str(server.address)))()
        assert answer == str(client.address)
        assert seen[0] == client.address
        assert isinstance(seen[0], Address)


def test_handlers_may_call_back_and_call_others(pair):
    """A handler making a blocking call itself (to its own engine: the
    caller's thread must run the inner handler while the outer waits)."""
    server, client = pair
    server.register("inner", lambda h, x: h.respond(x * 2))

    def outer(handle, x):
        inner = server.register("inner").on(server.address)
        handle.respond(inner(x) + 1)

    server.register("outer", outer)
    assert client.register("outer").on(client.lookup(str(server.address)))(20) == 41


def test_address_str_eq_hash_copy(protocol):
    with Engine(protocol) as engine:
        a = engine.address
        b = engine.lookup(str(a))
        assert str(a) == str(b) and str(a).startswith(f"{protocol}://")
        assert a == b and not (a != b)
        assert hash(a) == hash(b) and len({a, b, a.copy()}) == 1
        assert a != str(a)
        assert engine.addr() == a
        assert repr(a) == f"Address('{a}')"


@needs_shm
def test_aliases_build_the_canonical_protocol():
    with Engine("ofi+tcp") as tcp, Engine("na+sm") as shm:
        # The canonical protocol underneath; addresses print as PyMargo's,
        # in the spelling the engine was made with (test_pymargo_compat.py).
        assert tcp.protocol == "tcp" and str(tcp.address).startswith("ofi+tcp://")
        assert shm.protocol == "shm" and str(shm.address).startswith("na+sm://")
        # The canonical spelling of the address is accepted too.
        assert tcp.lookup(str(tcp.address).replace("ofi+tcp://", "tcp://")) == tcp.address


def test_unknown_protocol_raises_courier_error_and_runtime_error():
    with pytest.raises(courier.CourierError, match="pigeon"):
        Engine("pigeon")
    with pytest.raises(RuntimeError):
        Engine("pigeon")
    with pytest.raises(pymargo.core.MargoException):
        Engine("pigeon")


def test_modes_and_config(protocol):
    with Engine(protocol, mode=pymargo.client) as c:
        assert c.mode == pymargo.client and not c.listening
        assert c.config["mode"] == "client"
    with Engine(protocol, mode="server", config={"rpc_thread_count": 3}) as s:
        assert s.mode == pymargo.server and s.listening
        assert s.config["rpc_thread_count"] == 3
        # Handler threads come with a progress thread.
        assert s.config["use_progress_thread"] is True
        assert s.config["protocol"] == protocol
    text = json.dumps({"use_progress_thread": True, "timeouts": {"call_ms": 1234}})
    with Engine(protocol, config=text) as e:
        assert e.config["use_progress_thread"] is True
        assert e.config["timeouts"]["call_ms"] == 1234
    # The key of earlier versions still reads, into the timeouts section.
    with Engine(protocol, config={"default_timeout_ms": 1234}) as e:
        assert e.config["timeouts"]["call_ms"] == 1234
    # Keyword arguments win over the same keys in config.
    with Engine(protocol, use_progress_thread=False, options={"use_progress_thread": True}) as e:
        assert e.config["use_progress_thread"] is False
    with pytest.raises(courier.CourierError, match="rpc_threads"):
        Engine(protocol, config={"rpc_threads": 2})


def test_registered_and_deregister(pair):
    server, client = pair
    assert server.registered("hello") is None
    rf = server.register("hello", hello, provider_id=3)
    assert server.registered("hello", 3) is not None
    assert server.registered("hello") is None
    assert rf.name == "hello" and rf.rpc_id == server.registered("hello", 3).rpc_id
    address = client.lookup(str(server.address))
    assert client.register("hello").on(address, provider_id=3)("A") == "Good bye A Doe"
    server.deregister("hello", 3)
    assert server.registered("hello", 3) is None
    with pytest.raises(courier.CourierError, match="no such RPC 'hello' at provider 3"):
        client.register("hello").on(address, provider_id=3)("A")
    with pytest.raises(courier.CourierError, match="not registered"):
        server.deregister("hello", 3)
    # A client-side registration shows in registered() too, as in PyMargo.
    assert client.register("later") is not None and client.registered("later") is not None


def test_same_name_at_several_providers(pair):
    server, client = pair
    for pid in (1, 2):
        server.register("whoami", lambda h, pid=pid: h.respond(pid), provider_id=pid)
    whoami = client.register("whoami")
    address = client.lookup(str(server.address))
    assert [whoami.on(address, pid)() for pid in (1, 2)] == [1, 2]


def test_one_way_handlers_run(pair):
    server, client = pair
    got = []
    ran = threading.Event()

    def note(handle, value):
        got.append((value, handle.expects_response))
        handle.respond("ignored")  # a no-op on a one-way RPC
        ran.set()

    server.register("note", note, disable_response=True)
    rf = client.register("note", disable_response=True)
    assert rf.disabled_response()
    address = client.lookup(str(server.address))
    assert rf.on(address)(42) is None
    # The handler ran, and no response came back: a two-way call after it
    # on the same connection still works.
    server.register("ping", lambda h: h.respond("pong"))
    assert client.register("ping").on(address)() == "pong"
    if server is client:
        assert ran.is_set()
    else:
        assert ran.wait(GUARD_S)
    assert got == [(42, False)]


def test_two_way_call_to_a_one_way_rpc_is_an_error(pair):
    server, client = pair
    server.register("note", lambda h, v: None, disable_response=True)
    with pytest.raises(courier.CourierError, match="one-way"):
        client.register("note").on(client.lookup(str(server.address)))(1)


def test_handler_exception_is_raised_at_the_caller(pair):
    server, client = pair

    def fails(handle, x):
        raise ValueError(f"bad value {x}")

    server.register("fails", fails)
    call = client.register("fails").on(client.lookup(str(server.address)))
    with pytest.raises(ValueError, match="bad value 3") as info:
        call(3)
    err = info.value
    assert isinstance(err, courier.RemoteError) and isinstance(err, courier.CourierError)
    assert err.type_name == "ValueError" and err.remote_message == "bad value 3"
    assert err.rpc == "fails" and err.address == str(server.address)
    # The engine goes on serving.
    server.register("ok", lambda h: h.respond("ok"))
    assert client.register("ok").on(client.lookup(str(server.address)))() == "ok"


class AppError(Exception):
    pass


def test_handler_exception_of_a_user_type(pair):
    server, client = pair

    def fails(handle):
        raise AppError("quota exceeded")

    server.register("fails", fails)
    with pytest.raises(courier.RemoteError) as info:
        client.register("fails").on(client.lookup(str(server.address)))()
    assert info.value.type_name == f"{__name__}.AppError"
    assert info.value.remote_message == "quota exceeded"
    assert "AppError: quota exceeded" in str(info.value)


def test_handler_that_does_not_respond_is_an_error_not_a_hang(pair):
    server, client = pair
    server.register("mute", lambda h: None)
    with pytest.raises(courier.CourierError, match="without responding"):
        client.register("mute").on(client.lookup(str(server.address)))()


def test_handler_with_wrong_arguments(pair):
    server, client = pair
    server.register("hello", hello)
    with pytest.raises(TypeError) as info:
        client.register("hello").on(client.lookup(str(server.address)))()
    assert "firstname" in info.value.remote_message


def test_timeout_raises_timeout_error(pair):
    server, client = pair
    held = []
    server.register("hold", lambda h: held.append(h))
    call = client.register("hold").on(client.lookup(str(server.address)))
    with pytest.raises(courier.TimeoutError) as info:
        call(timeout=50)
    assert isinstance(info.value, TimeoutError)  # the builtin
    assert isinstance(info.value, courier.CourierError)
    assert isinstance(info.value, pymargo.core.MargoException)
    # Answering after the caller gave up harms nothing.
    for h in held:
        h.respond("late")
    server.register("ping", lambda h: h.respond("pong"))
    assert client.register("ping").on(client.lookup(str(server.address)))() == "pong"


def test_timeout_in_milliseconds_is_validated(pair):
    server, client = pair
    server.register("hello", hello)
    call = client.register("hello").on(client.lookup(str(server.address)))
    assert call("A", timeout=60_000) == "Good bye A Doe"
    assert call("A", timeout=0) == "Good bye A Doe"
    with pytest.raises(ValueError):
        call("A", timeout=-1)


def test_non_blocking_call_wait_and_test(pair):
    server, client = pair
    server.register("hello", hello)
    call = client.register("hello").on(client.lookup(str(server.address)))
    requests = [call(f"n{i}", blocking=False) for i in range(5)]
    answers = [r.wait() for r in requests]
    assert answers == [f"Good bye n{i} Doe" for i in range(5)]
    assert all(r.test() for r in requests)
    assert requests[0].wait() == "Good bye n0 Doe"  # waiting again


def test_non_blocking_call_test_until_done(pair):
    server, client = pair
    server.register("hello", hello)
    req = client.register("hello").on(client.lookup(str(server.address)))("x", blocking=False)
    while not req.test():  # test() makes progress without a progress thread
        pass
    assert req.wait() == "Good bye x Doe"


def test_non_blocking_call_raises_at_wait(pair):
    server, client = pair

    def fails(handle):
        raise KeyError("missing")

    server.register("fails", fails)
    req = client.register("fails").on(client.lookup(str(server.address)))(blocking=False)
    with pytest.raises(KeyError):
        req.wait()
    with pytest.raises(KeyError):
        req.wait()


def test_deferred_and_non_blocking_respond(pair):
    server, client = pair
    held = []
    server.register("later", lambda h, x: held.append((h, x)))
    call = client.register("later").on(client.lookup(str(server.address)))
    req = call(5, blocking=False)
    # Wait until the handler has run (it keeps its handle).
    while not held:
        req.test()
    handle, x = held.pop()
    done = handle.respond(x * 10, blocking=False)
    assert req.wait() == 50
    assert done.wait() is None
    with pytest.raises(courier.CourierError, match="already responded"):
        handle.respond(0)


def test_finalize_callbacks(protocol):
    order = []
    engine = Engine(protocol)
    engine.on_prefinalize(lambda: order.append("pre"))
    engine.on_finalize(lambda: order.append("fin"))

    def raises():
        raise RuntimeError("a callback that fails does not stop finalize")

    engine.on_finalize(raises)
    assert order == []
    engine.finalize()
    assert order == ["pre", "fin"] and engine.finalized
    engine.finalize()  # twice is harmless
    assert order == ["pre", "fin"]


def test_context_manager_finalizes(protocol):
    with Engine(protocol) as engine:
        assert engine.listening
    assert engine.finalized and not engine.listening


def test_remote_shutdown(protocol):
    with Engine(protocol, use_progress_thread=True) as server, Engine(protocol, mode=pymargo.client) as client:
        address = client.lookup(str(server.address))
        with pytest.raises(courier.CourierError, match="refused"):
            address.shutdown()
        server.enable_remote_shutdown()
        address.shutdown()
        server.wait_for_finalize()
        assert server.finalized


def test_wait_for_finalize_serves_until_a_remote_shutdown(protocol):
    """The seed's server shape in a thread: wait_for_finalize releases the
    GIL, so this thread's client calls run meanwhile."""
    server = Engine(protocol)
    server.register("hello", hello)
    server.enable_remote_shutdown()
    waiter = threading.Thread(target=server.wait_for_finalize)
    waiter.start()
    with Engine(protocol, mode=pymargo.client) as client:
        address = client.lookup(str(server.address))
        assert client.register("hello").on(address)("T") == "Good bye T Doe"
        address.shutdown()
    waiter.join(GUARD_S)
    assert not waiter.is_alive() and server.finalized


def test_gil_is_released_while_a_call_waits(protocol):
    """A Python thread runs while the main thread is blocked in a call:
    the handler, in another thread, only answers once that thread has run."""
    go = threading.Event()
    with Engine(protocol, num_rpc_threads=1) as server, Engine(protocol) as client:
        def waits_for_go(handle):
            # Runs on the server's handler thread, needing the GIL while the
            # caller waits.
            handle.respond(go.wait(GUARD_S))

        server.register("gated", waits_for_go)
        call = client.register("gated").on(client.lookup(str(server.address)))
        req = call(blocking=False)
        setter = threading.Thread(target=go.set)
        setter.start()
        assert req.wait() is True
        setter.join()


def test_objects_outliving_their_engine(protocol):
    engine = Engine(protocol)
    engine.register("hello", hello)
    address = engine.lookup(str(engine.address))
    rf = engine.register("hello")
    call = rf.on(address)
    assert call("A") == "Good bye A Doe"
    engine.finalize()
    with pytest.raises(courier.CourierError, match="finalized"):
        call("A")
    with pytest.raises(courier.CourierError, match="finalized"):
        address.shutdown()
    with pytest.raises(courier.CourierError, match="finalized"):
        engine.lookup(str(address))

    # Garbage-collected without finalize: PyMargo finalizes it then. What
    # was made from it raises instead of crashing.
    engine = Engine(protocol)
    handles = []
    engine.register("keep", lambda h: (handles.append(h), h.respond(1)))
    keep = engine.register("keep").on(engine.address)
    assert keep() == 1
    address = engine.lookup(str(engine.address))
    del engine, keep
    gc.collect()
    with pytest.raises(courier.CourierError, match="finalized"):
        address.shutdown()
    with pytest.raises(courier.CourierError):
        handles[0].respond(2)
    assert str(handles[0].address).startswith(f"{protocol}://")

    # A function keeps its engine alive, as in PyMargo.
    engine = Engine(protocol)
    engine.register("hello", hello)
    call = engine.register("hello").on(engine.address)
    del engine
    gc.collect()
    assert call("B") == "Good bye B Doe"
    assert not call.engine.finalized


def test_keyword_names_blocking_and_timeout_are_the_calls_own(pair):
    server, client = pair
    server.register("kw", lambda h, **kw: h.respond(sorted(kw)))
    call = client.register("kw").on(client.lookup(str(server.address)))
    assert call(timeout=0, blocking=True, other=1) == ["other"]


def test_pymargo_names():
    import pymargo.core as core

    assert pymargo.client == core.client == courier.client == 0
    assert pymargo.server == core.server == courier.server == 1
    # The shim's Engine is courier's, but for create_bulk over bytes and
    # `logger` (test_pymargo_compat.py).
    assert issubclass(core.Engine, courier.Engine) and core.Handle is courier.Handle is Handle
    assert pymargo.MargoInstance is core.Engine and pymargo.MargoAddress is core.Address
    assert core.MargoException is courier.CourierError


def test_register_provider_and_remote_decorator(protocol):
    @courier.provider(service_name="kv")
    class Store:
        def __init__(self):
            self.data = {}

        @courier.remote()
        def put(self, handle, key, value):
            self.data[key] = value
            handle.respond(True)

        @courier.remote(rpc_name="get")
        def fetch(self, handle, key):
            handle.respond(self.data.get(key))

    with Engine(protocol) as engine:
        names = engine.register_provider(Store(), provider_id=7)
        assert sorted(names) == ["kv_get", "kv_put"]
        a = engine.address
        assert engine.register("kv_put").on(a, 7)("k", 1) is True
        assert engine.register("kv_get").on(a, 7)("k") == 1


def test_many_calls_in_flight(pair):
    """Hundreds of requests queued at once: handlers that respond while
    others wait do not pile up on one thread's stack."""
    server, client = pair
    server.register("hello", hello)
    call = client.register("hello").on(client.lookup(str(server.address)))
    requests = [call(str(i), blocking=False) for i in range(300)]
    assert [r.wait() for r in requests] == [f"Good bye {i} Doe" for i in range(300)]


@needs_shm
def test_shm_keeps_its_spin_in_every_mode():
    # Handlers run on the engine's own threads, which a spinning reader
    # hands requests to before it spins: no mode turns the spin off.
    with Engine("shm") as default, Engine("na+sm", use_progress_thread=True) as threaded:
        assert "spin_us" not in default.config["transport"]
        assert "spin_us" not in threaded.config["transport"]
    with Engine("shm", config={"transport": {"spin_us": 20}}) as chosen:
        assert chosen.config["transport"]["spin_us"] == 20


def test_older_pymargo_register_form(protocol):
    """register(name, obj, method_name, provider_id), as PyMargo's own
    older tests write it."""

    class Receiver:
        def hello_world(self, handle, name):
            handle.respond("Hello " + name)

    with Engine(protocol) as engine:
        engine.register("hello_world", Receiver(), "hello_world", 2)
        assert engine.registered("hello_world", 2) is not None
        call = engine.register("hello_world").on(engine.lookup(str(engine.address)), 2)
        assert call("Matthieu") == "Hello Matthieu"


def test_engine_sleep_drives_the_engine(protocol):
    """PyMargo's sleep: the engine makes progress meanwhile (here a
    non-blocking call to this engine itself completes)."""
    with Engine(protocol) as engine:
        engine.register("hello", hello)
        req = engine.register("hello").on(engine.address)("S", blocking=False)
        give_up = time.monotonic() + GUARD_S
        while not req.test():
            assert time.monotonic() < give_up
            engine.sleep(0.001)
        assert req.wait() == "Good bye S Doe"
        assert engine.sleep(0) is None
