"""What PyMargo's own test suite needs of the ``pymargo`` shim, tested here
(CI cannot fetch PyMargo's suite; docs/python.md says how to run it), and
what a caller gets for values pickle refuses.

Covered: bare ``@remote``; ``on_finalize`` / ``on_prefinalize`` (the
engine's and a provider's); ``pymargo.logging`` and ``engine.logger``; the
``argobots`` section of ``engine.config``; addresses printed in the
spelling the engine was made with; ``create_bulk`` over ``bytes`` with a
writable mode in the shim (and still refused by ``courier``); ``mid`` and
``Engine.from_margo_instance_id``; arguments and responses that cannot be
pickled."""

import logging
import pickle
import socket
import sys
import threading

import pytest

import courier
import pymargo
import pymargo.bulk
import pymargo.core
import pymargo.logging
from pymargo.core import Engine, on_finalize, on_prefinalize, provider, remote

from conftest import GUARD_S, PROTOCOLS


@pytest.fixture(params=PROTOCOLS)
def protocol(request):
    return request.param


# --- @remote without parentheses -------------------------------------------


class Greeter:
    @remote
    def greet(self, handle, name):
        handle.respond(f"hi {name}")

    @remote(rpc_name="named", disable_response=False)
    def other(self, handle):
        handle.respond("named")


@remote
def module_level(handle):
    handle.respond("module")


def test_bare_remote_names_the_rpc_after_the_function(protocol):
    assert module_level._pymargo_info == {
        "rpc_name": "module_level", "disable_response": False, "service_name": None,
    }
    with Engine(protocol) as engine:
        rpcs = engine.register_provider(Greeter(), provider_id=3)
        assert sorted(rpcs) == ["greet", "named"]
        assert engine.registered("greet", 3) is not None
        assert rpcs["greet"].on(engine.address, provider_id=3)("Ada") == "hi Ada"
        rpcs = engine.register_provider(Greeter(), provider_id=4, service_name="svc")
        assert sorted(rpcs) == ["svc_greet", "svc_named"]
        # A bare-decorated function registered on its own keeps its name.
        rf = engine.register(func=module_level)
        assert rf.name == "module_level" and rf.on(engine.address)() == "module"


def test_remote_refuses_a_function_with_options():
    with pytest.raises(TypeError, match="bare @remote"):
        remote(module_level, disable_response=True)


# --- finalize callbacks ------------------------------------------------------


@provider(service_name="log")
class Recorder:
    def __init__(self, events):
        self.events = events

    @on_prefinalize
    def before(self):
        self.events.append("prefinalize")

    @on_finalize
    def after(self):
        self.events.append("finalize")

    @remote
    def ping(self, handle):
        handle.respond("pong")


def test_provider_finalize_callbacks_run_in_order(protocol):
    events = []
    engine = Engine(protocol)
    rpcs = engine.register_provider(Recorder(events), provider_id=1)
    assert list(rpcs) == ["log_ping"]
    assert rpcs["log_ping"].on(engine.address, provider_id=1)() == "pong"
    assert events == []
    engine.finalize()
    assert events == ["prefinalize", "finalize"]
    # Finalizing again calls nothing again.
    engine.finalize()
    assert events == ["prefinalize", "finalize"]


def test_engine_finalize_callbacks_take_any_callable(protocol):
    class Callback:
        called = 0

        def __call__(self):
            Callback.called += 1

    engine = Engine(protocol)
    engine.on_finalize(Callback())
    engine.on_prefinalize(Callback())
    assert Callback.called == 0
    engine.finalize()
    assert Callback.called == 2


def test_the_decorators_are_pymargos_names():
    assert pymargo.core.on_finalize is courier.on_finalize is pymargo.on_finalize
    assert pymargo.core.on_prefinalize is courier.on_prefinalize
    assert pymargo.core.ForwardRequest is courier.Request


# --- pymargo.logging -----------------------------------------------------------


class Collect(pymargo.logging.Logger):
    def __init__(self):
        self.lines = []

    def trace(self, msg):
        self.lines.append(("trace", msg))

    def debug(self, msg):
        self.lines.append(("debug", msg))

    def info(self, msg):
        self.lines.append(("info", msg))

    def warning(self, msg):
        self.lines.append(("warning", msg))

    def error(self, msg):
        self.lines.append(("error", msg))

    def critical(self, msg):
        self.lines.append(("critical", msg))


ALL_LEVELS = ["trace", "debug", "info", "warning", "error", "critical"]


@pytest.fixture
def global_logging():
    """Restores the global logger and level after the test."""
    logger = pymargo.logging.get_global_logger()
    lvl = pymargo.logging.get_global_log_level()
    yield
    pymargo.logging.set_global_logger(logger)
    pymargo.logging.set_global_log_level(lvl)


def log_each(target):
    for name in ALL_LEVELS:
        getattr(target, name)(f"m-{name}")


def test_log_levels_are_margos():
    level = pymargo.logging.level
    assert [level[n] for n in ["external"] + ALL_LEVELS] == list(range(7))
    # Margo's default (every test that changes it restores it).
    assert pymargo.logging.get_global_log_level() == level.warning
    assert isinstance(pymargo.logging.get_global_logger(), pymargo.logging.PythonLogger)
    assert pymargo.core.Logger is pymargo.logging.Logger


def test_global_logger_filters_by_level(global_logging):
    got = Collect()
    pymargo.logging.set_global_logger(got)
    pymargo.logging.set_global_log_level(pymargo.logging.level.info)
    log_each(pymargo.logging)
    assert got.lines == [(n, f"m-{n}") for n in ALL_LEVELS[2:]]
    # `external` passes everything to the logger.
    got.lines.clear()
    pymargo.logging.set_global_log_level(pymargo.logging.level.external)
    log_each(pymargo.logging)
    assert [n for n, _ in got.lines] == ALL_LEVELS
    with pytest.raises(ValueError, match="log level 9"):
        pymargo.logging.set_global_log_level(9)
    with pytest.raises(TypeError, match="trace"):
        pymargo.logging.set_global_logger(object())


def test_the_default_logger_is_pythons_logging(global_logging, caplog):
    pymargo.logging.set_global_logger(pymargo.logging.PythonLogger())
    pymargo.logging.set_global_log_level(pymargo.logging.level.trace)
    with caplog.at_level(1, logger="pymargo"):
        log_each(pymargo.logging)
    got = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert got == [
        ("pymargo", 5, "m-trace"), ("pymargo", logging.DEBUG, "m-debug"),
        ("pymargo", logging.INFO, "m-info"), ("pymargo", logging.WARNING, "m-warning"),
        ("pymargo", logging.ERROR, "m-error"), ("pymargo", logging.CRITICAL, "m-critical"),
    ]


def test_engine_logger(global_logging, protocol):
    everything = Collect()
    pymargo.logging.set_global_logger(everything)
    pymargo.logging.set_global_log_level(pymargo.logging.level.external)
    with Engine(protocol) as engine:
        assert engine.logger is engine.logger
        # Without a logger of its own: the global logger, at the engine's
        # level (warning by default).
        log_each(engine.logger)
        assert [n for n, _ in everything.lines] == ["warning", "error", "critical"]
        own = Collect()
        engine.logger.set_logger(own)
        engine.logger.set_log_level(pymargo.logging.level.debug)
        log_each(engine.logger)
        assert [n for n, _ in own.lines] == ALL_LEVELS[1:]
        assert len(everything.lines) == 3
    # A courier engine has no `logger`: it is the shim's.
    with courier.Engine(protocol) as engine:
        assert not hasattr(engine, "logger")


# --- engine.config["argobots"] -------------------------------------------------


def names(section, key):
    return [entry["name"] for entry in section[key]]


def test_config_describes_the_threads_as_argobots(protocol):
    with Engine(protocol) as engine:
        abt = engine.config["argobots"]
        assert "__primary__" in names(abt, "xstreams") and "__primary__" in names(abt, "pools")
        # The engine's own thread: its progress and its handlers.
        assert names(abt, "xstreams") == ["__primary__", "__progress__"]
        # Every xstream's scheduler takes from pools that are listed.
        for xs in abt["xstreams"]:
            assert set(xs["scheduler"]["pools"]) <= set(names(abt, "pools"))
    with Engine(protocol, use_progress_thread=True, num_rpc_threads=2) as engine:
        abt = engine.config["argobots"]
        xstreams = names(abt, "xstreams")
        # Two handlers at once, and a third thread free to drive the engine.
        assert "__progress__" not in xstreams
        assert [x for x in xstreams if x.startswith("__rpc_")] == [
            "__rpc_0__", "__rpc_1__", "__rpc_2__"
        ]
        for xs in abt["xstreams"]:
            assert set(xs["scheduler"]["pools"]) <= set(names(abt, "pools"))


def test_a_config_read_from_an_engine_can_be_given_back(protocol):
    with Engine(protocol, config={"timeouts": {"call_ms": 4321}}) as engine:
        config = engine.config
    # The argobots section is read-only: given back, it is accepted and
    # changes nothing.
    given = {"timeouts": config["timeouts"], "argobots": config["argobots"]}
    with Engine(protocol, config=given) as engine:
        assert engine.config["timeouts"]["call_ms"] == 4321
    with Engine(protocol, config={"argobots": {"xstreams": [{"name": "a"}, {"name": "b"}]}}) as engine:
        assert "a" not in names(engine.config["argobots"], "xstreams")


# --- addresses in the engine's own spelling ------------------------------------


def spelling_cases():
    cases = [("ofi+tcp", "tcp"), ("bmi+tcp", "tcp"), ("uds", "unix")]
    if sys.platform.startswith("linux"):
        cases += [("na+sm", "shm"), ("sm", "shm")]
    return cases


@pytest.mark.parametrize("alias,canonical", spelling_cases(), ids=lambda v: str(v))
def test_addresses_print_the_spelling_the_engine_was_made_with(alias, canonical):
    with Engine(alias) as engine:
        text = str(engine.address)
        assert engine.protocol == canonical and text.startswith(f"{alias}://")
        assert repr(engine.address) == f"Address('{text}')" and text in repr(engine)
        # Both spellings look up the same address, which prints the same.
        same = engine.lookup(text)
        canon = engine.lookup(text.replace(f"{alias}://", f"{canonical}://", 1))
        assert same == canon == engine.address and hash(same) == hash(canon)
        assert str(canon) == text and str(engine.addr()) == text
        # A handler sees its caller's address in the same spelling.
        engine.register("who", lambda handle: handle.respond(str(handle.address)))
        assert engine.register("who").on(canon)().startswith(f"{alias}://")


def test_a_listen_address_keeps_its_spelling():
    with Engine("ofi+tcp://127.0.0.1:0") as engine:
        assert str(engine.address).startswith("ofi+tcp://127.0.0.1:")
    with Engine("tcp://127.0.0.1:0") as engine:
        assert str(engine.address).startswith("tcp://127.0.0.1:")


def test_a_canonical_engine_takes_the_mercury_spelling():
    # The server has a progress thread: the client's waits drive only the
    # client's engine.
    with Engine("ofi+tcp", use_progress_thread=True) as server, \
            Engine("tcp", mode=pymargo.client) as client:
        server.register("hello", lambda handle: handle.respond("hello"))
        address = client.lookup(str(server.address))
        # The client prints addresses in its own spelling.
        assert str(address).startswith("tcp://") and str(address)[6:] == str(server.address)[10:]
        assert client.register("hello").on(address)() == "hello"
        assert client.register("hello").on(str(server.address))() == "hello"


# --- create_bulk over bytes, writable, in the shim ---------------------------


def pusher(engine):
    def push(handle, bulk, offset, data):
        local = engine.create_bulk(data, pymargo.bulk.read_only)
        engine.transfer(pymargo.bulk.push, handle.address, bulk, offset, local, 0, len(data))
        handle.respond()

    def pull(handle, bulk, size):
        into = bytes(size)
        local = engine.create_bulk(into, pymargo.bulk.write_only)
        engine.transfer(pymargo.bulk.pull, handle.address, bulk, 0, local, 0, size)
        handle.respond(into)

    engine.register("push", push)
    engine.register("pull", pull)
    return engine.register("push"), engine.register("pull")


@pytest.mark.parametrize("mode", ["write_only", "read_write"])
def test_the_shim_writes_into_bytes_as_pymargo_does(protocol, mode):
    with Engine(protocol) as engine:
        push, pull = pusher(engine)
        data = bytes(bytearray(b"This is some bytes data"))  # a bytes object of its own
        bulk = engine.create_bulk(data, getattr(pymargo.bulk, mode))
        assert bulk.mode == getattr(pymargo.bulk, mode)
        push.on(engine.address)(bulk, 8, b"more")
        assert data == b"This is more bytes data"
        # Pulled into a bytes object on the other side, too.
        source = engine.create_bulk(bytearray(b"pulled"), pymargo.bulk.read_only)
        assert pull.on(engine.address)(source, 6) == b"pulled"


def test_courier_still_refuses_writable_bytes(protocol):
    with courier.Engine(protocol) as engine:
        with pytest.raises(courier.BulkError, match="read-only bytes"):
            engine.create_bulk(bytes(4), courier.bulk.write_only)
    with Engine(protocol) as engine:
        # Only bytes itself: other read-only memory may be mapped
        # read-only, so the shim refuses it as courier does.
        with pytest.raises(courier.BulkError, match="read-only memoryview"):
            engine.create_bulk(memoryview(bytes(4)), pymargo.bulk.write_only)
        # Read-only exposure of bytes is unchanged.
        assert engine.create_bulk(b"abc", pymargo.bulk.read_only).size == 3


# --- mid and from_margo_instance_id ------------------------------------------


def test_from_margo_instance_id_is_another_object_over_the_engine(protocol):
    engine = Engine(protocol)
    other = Engine.from_margo_instance_id(engine.mid)
    assert isinstance(other, Engine) and other.listening
    assert other.address == engine.address and engine.get_internal_mid() is not None
    engine.register("hi", lambda handle: handle.respond("hi"))
    assert other.register("hi").on(other.address)() == "hi"
    # Dropping the adopted object does not finalize the engine.
    del other
    assert not engine.finalized and engine.register("hi").on(engine.address)() == "hi"
    # Nor does leaving a `with` block over it (PyMargo's way).
    with Engine.from_margo_instance_id(engine.mid) as adopted:
        assert adopted.listening
    assert not engine.finalized
    again = Engine.from_margo_instance_id(engine.mid)
    engine.finalize()
    assert again.finalized and not again.listening


def test_from_margo_instance_id_refuses_anything_else():
    with pytest.raises(TypeError, match="Margo instance"):
        Engine.from_margo_instance_id(object())


# --- values pickle refuses ---------------------------------------------------


@pytest.fixture(params=["inline", "progress"])
def counted(request, protocol):
    """(engine to call, address, RemoteFunction of "count", runs): one
    handler thread either way, so requests run in the order they came."""
    server = Engine(protocol, use_progress_thread=request.param == "progress")
    client = server if request.param == "inline" else Engine(protocol, mode=pymargo.client)
    runs = []

    def count(handle, *args, **kwargs):
        runs.append(len(args) + len(kwargs))
        handle.respond(len(runs))

    server.register("count", count)
    yield client, client.lookup(str(server.address)), client.register("count"), runs
    if client is not server:
        client.finalize()
    server.finalize()


@pytest.mark.parametrize("value,type_name,path", [
    (lambda: 1, "function", "args[0]"),
    (socket.socket, None, None),  # made in the test (a socket to close)
    ({"k": [1, threading.Lock()]}, "_thread.lock", "args[0]['k'][1]"),
], ids=["lambda", "socket", "nested_lock"])
def test_arguments_that_cannot_be_pickled_fail_at_the_caller(counted, value, type_name, path):
    engine, address, rf, runs = counted
    made = None
    if value is socket.socket:
        made = value = socket.socket()
        type_name, path = "socket.socket", "args[0]"
    try:
        with pytest.raises(courier.SerializationError) as info:
            rf.on(address)(value)
    finally:
        if made is not None:
            made.close()
    err = info.value
    assert err.what == "arguments" and err.rpc == "count"
    assert err.type_name == type_name and err.path == path
    assert f"{path} is a {type_name}" in str(err) and "RPC 'count'" in str(err)
    # Nothing was sent: safe to retry, and the handler never ran.
    assert err.reach == "not_reached" and err.is_retry_safe()
    assert isinstance(err, pickle.PicklingError) and isinstance(err, TypeError)
    assert isinstance(err, pymargo.core.MargoException) and err.__cause__ is not None
    with pytest.raises(courier.SerializationError):
        rf.on(address)(value, blocking=False)
    assert rf.on(address)(1) == 1 and runs == [1]


def test_a_keyword_argument_that_cannot_be_pickled_is_named(counted):
    engine, address, rf, runs = counted
    with pytest.raises(courier.SerializationError, match=r"kwargs\['when'\] is a function") as info:
        rf.on(address)(1, when=lambda: 0)
    assert info.value.path == "kwargs['when']" and runs == []


def responder(engine, kept):
    def bad(handle, how):
        if how == "raise":
            handle.respond(lambda: 1)
        elif how == "non_blocking":
            handle.respond(threading.Lock(), blocking=False)
        elif how == "swallow":
            # The handler catches the error and keeps its handle: the
            # caller still gets the error, when the handler returns.
            kept.append(handle)
            try:
                handle.respond(lambda: 1)
            except courier.SerializationError:
                pass
        elif how == "recover":
            try:
                handle.respond(lambda: 1)
            except courier.SerializationError as e:
                handle.respond(f"recovered: {e.type_name}")

    engine.register("bad", bad)
    return engine.register("bad")


@pytest.mark.parametrize("how", ["raise", "non_blocking", "swallow"])
@pytest.mark.parametrize("timeout", [0, 60_000], ids=["no_timeout", "with_timeout"])
def test_a_response_that_cannot_be_pickled_is_an_error_not_a_timeout(protocol, how, timeout):
    kept = []
    with Engine(protocol) as engine:
        bad = responder(engine, kept)
        with pytest.raises(courier.RemoteError) as info:
            bad.on(engine.address)(how, timeout=timeout)
        err = info.value
        assert not isinstance(err, courier.TimeoutError)
        assert err.type_name == "courier.SerializationError"
        expected = "_thread.lock" if how == "non_blocking" else "function"
        assert f"cannot pickle the response of RPC 'bad': value is a {expected}" in err.remote_message
        assert err.reach == "reached"


def test_a_handler_may_respond_again_after_a_refused_response(protocol):
    with Engine(protocol) as engine:
        bad = responder(engine, [])
        assert bad.on(engine.address)("recover") == "recovered: function"


# --- the engine's own warnings, to Python's logging --------------------------


class Wait(logging.Handler):
    """Keeps the records of the `courier.engine` logger; `wait_for` waits
    (without sleeping) for one that contains a text."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []
        self.changed = threading.Condition()

    def emit(self, record):
        with self.changed:
            self.records.append(record)
            self.changed.notify_all()

    def wait_for(self, text):
        def found():
            return [r for r in self.records if text in r.getMessage()]

        with self.changed:
            assert self.changed.wait_for(found, timeout=GUARD_S), \
                f"no {text!r} within {GUARD_S} s: {[r.getMessage() for r in self.records]}"
            return found()[0]


def test_engine_warnings_reach_pythons_logging(protocol):
    logger = logging.getLogger("courier.engine")
    handler = Wait()
    logger.addHandler(handler)
    try:
        with Engine(protocol) as engine:
            def fails(handle):
                raise ValueError("one-way trouble")

            engine.register("fails", fails, disable_response=True)
            assert engine.register("fails", disable_response=True).on(engine.address)() is None
            # The handler runs while this thread waits in the engine.
            engine.register("hello", lambda handle: handle.respond("hi"))
            assert engine.register("hello").on(engine.address)() == "hi"
            record = handler.wait_for("one-way handler failed")
        assert record.levelno == logging.WARNING and "one-way trouble" in record.getMessage()
        assert "rpc=fails" in record.getMessage()
    finally:
        logger.removeHandler(handler)
