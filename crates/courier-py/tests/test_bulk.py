"""Bulk transfers from Python (PyMargo's ``create_bulk`` / ``transfer`` /
``pymargo.bulk``), on every protocol.

The PyMargo-style programs run in two set-ups: "inline" (one engine serves
and calls itself, as PyMargo's own bulk test does; the handler pulls from
its caller while the caller's thread waits) and "progress" (a server engine
with a progress thread, a separate client engine). Hostile handles are
forged from a real handle's serialized form, so the exposing engine's own
checks are what refuses them."""

import array
import gc
import os
import pickle
import signal
import socket

import pytest

import courier
import courier.bulk
import pymargo
import pymargo.bulk
from pymargo.bulk import Bulk
from pymargo.core import Engine

from conftest import GUARD_S, HERE, PROTOCOLS, run_script

PROGRAMS = HERE / "programs"

try:
    import numpy
except ImportError:  # optional: CI installs it, a bare venv may not
    numpy = None

needs_numpy = pytest.mark.skipif(numpy is None, reason="numpy is not installed (pip install numpy)")

DATA = b"This is some bytes data"  # 23 bytes, as in PyMargo's test


@pytest.fixture(params=PROTOCOLS)
def protocol(request):
    return request.param


@pytest.fixture(params=["inline", "progress"])
def pair(request, protocol):
    """(server engine, client engine, the server's address as the client
    knows it): the same engine for "inline"."""
    if request.param == "inline":
        engine = Engine(protocol)
        yield engine, engine, engine.address
        engine.finalize()
        return
    server = Engine(protocol, use_progress_thread=True)
    client = Engine(protocol, mode=pymargo.client)
    yield server, client, client.lookup(str(server.address))
    client.finalize()
    server.finalize()


class Receiver:
    """PyMargo's bulk test handlers: pull the caller's bytes, push into the
    caller's region at offset 8; blocking or not."""

    def __init__(self, engine):
        self.engine = engine

    def _transfer(self, blocking, **kwargs):
        out = self.engine.transfer(blocking=blocking, **kwargs)
        if blocking:
            assert out is None
        else:
            out.wait()
            assert out.test()

    def pull_from_bulk(self, handle, bulk, size, blocking=True):
        local_data = bytearray(size)
        local_bulk = self.engine.create_bulk(local_data, pymargo.bulk.write_only)
        self._transfer(
            blocking,
            op=pymargo.bulk.pull,
            origin_addr=handle.address,
            origin_handle=bulk,
            origin_offset=0,
            local_handle=local_bulk,
            local_offset=0,
            size=size,
        )
        handle.respond(bytes(local_data))

    def push_to_bulk(self, handle, bulk, size, blocking=True):
        local_bulk = self.engine.create_bulk(b"more", pymargo.bulk.read_only)
        self._transfer(
            blocking,
            op=pymargo.bulk.push,
            origin_addr=handle.address,
            origin_handle=bulk,
            origin_offset=8,
            local_handle=local_bulk,
            local_offset=0,
            size=4,
        )
        handle.respond()


def register_receiver(server, client):
    receiver = Receiver(server)
    server.register("pull_from_bulk", receiver.pull_from_bulk)
    server.register("push_to_bulk", receiver.push_to_bulk)
    return client.register("pull_from_bulk"), client.register("push_to_bulk")


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "non_blocking"])
def test_pull_23_bytes(pair, blocking):
    server, client, address = pair
    pull_rf, _ = register_receiver(server, client)
    bulk = client.create_bulk(DATA, pymargo.bulk.read_only)
    assert isinstance(bulk, Bulk) and bulk.size == len(bulk) == 23
    if blocking:
        # PyMargo's call: the handle is a keyword argument, pickled.
        assert pull_rf.on(address)(bulk=bulk, size=len(DATA)) == DATA
    else:
        # `blocking` is also the call's own keyword: passed positionally.
        assert pull_rf.on(address)(bulk, len(DATA), False) == DATA


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "non_blocking"])
def test_push_into_a_region_at_an_offset(pair, blocking):
    server, client, address = pair
    _, push_rf = register_receiver(server, client)
    data = bytearray(DATA)
    bulk = client.create_bulk(data, pymargo.bulk.write_only)
    assert push_rf.on(address)(bulk, len(data), blocking) is None
    assert data == b"This is more bytes data"


def test_memoryview_and_array_round_trip(pair):
    """The server pulls a memoryview's bytes, and pushes them back upper-cased
    into an array.array region of the caller."""
    server, client, address = pair

    def shout(handle, src, dst, size):
        local = bytearray(size)
        lb = server.create_bulk(memoryview(local), courier.bulk.read_write)
        server.transfer(courier.bulk.pull, handle.address, src, 0, lb, 0, size)
        local[:] = local.upper()
        server.transfer(courier.bulk.push, handle.address, dst, 0, lb, 0, size)
        handle.respond(size)

    server.register("shout", shout)
    backing = bytearray(b"...hello bulk...")
    view = memoryview(backing)[3:13]  # a contiguous slice: "hello bulk"
    out = array.array("b", bytes(10))
    src = client.create_bulk(view, courier.bulk.read_only)
    dst = client.create_bulk(out, courier.bulk.write_only)
    assert client.register("shout").on(address)(src, dst, 10) == 10
    assert out.tobytes() == b"HELLO BULK"


@pytest.mark.parametrize("size", [1 << 20, 3 * (1 << 20) + 5], ids=["1MiB", "3MiB+5"])
def test_large_pull_and_push(pair, size):
    """Several chunks on the message path; direct copies on shm."""
    server, client, address = pair
    payload = os.urandom(size)

    def mirror(handle, src, dst, n):
        local = bytearray(n)
        lb = server.create_bulk(local, courier.bulk.read_write)
        server.transfer(courier.bulk.pull, handle.address, src, 0, lb, 0, n)
        local.reverse()
        server.transfer(courier.bulk.push, handle.address, dst, 0, lb, 0, n)
        handle.respond(bytes(local[:16]))

    server.register("mirror", mirror)
    back = bytearray(size)
    src = client.create_bulk(payload, courier.bulk.read_only)
    dst = client.create_bulk(back, courier.bulk.write_only)
    head = client.register("mirror").on(address)(src, dst, size)
    assert head == payload[::-1][:16]
    assert back == payload[::-1]


def test_segments_and_select(pair):
    """A list of buffers is one region, end to end; select() a sub-range."""
    server, client, address = pair
    parts = [b"abc", bytearray(b"defgh"), memoryview(b"ij")]

    def fetch(handle, remote):
        local = bytearray(len(remote))
        server.transfer(
            courier.bulk.pull, handle.address, remote, 0,
            server.create_bulk(local, courier.bulk.write_only), 0, len(remote),
        )
        handle.respond(bytes(local))

    server.register("fetch", fetch)
    whole = client.create_bulk(parts, courier.bulk.read_only)
    assert whole.size == 10
    fetch_rf = client.register("fetch").on(address)
    assert fetch_rf(whole) == b"abcdefghij"
    assert fetch_rf(whole.select(2, 5)) == b"cdefg"


@needs_numpy
def test_numpy_arrays(pair):
    server, client, address = pair

    def total(handle, remote, count):
        local = numpy.empty(count, dtype=numpy.float64)
        lb = server.create_bulk(local, courier.bulk.write_only)
        server.transfer(courier.bulk.pull, handle.address, remote, 0, lb, 0, local.nbytes)
        result = numpy.cumsum(local)
        server.transfer(
            courier.bulk.push, handle.address, remote, 0,
            server.create_bulk(result, courier.bulk.read_only), 0, result.nbytes,
        )
        handle.respond(float(local.sum()))

    server.register("total", total)
    values = numpy.arange(1000, dtype=numpy.float64).reshape(10, 100)
    bulk = client.create_bulk(values, courier.bulk.read_write)
    assert bulk.size == values.nbytes == 8000
    assert client.register("total").on(address)(bulk, values.size) == 499500.0
    assert numpy.array_equal(values.ravel(), numpy.cumsum(numpy.arange(1000.0)))
    # Fortran order is one block too; a strided view is not.
    client.create_bulk(numpy.asfortranarray(values), courier.bulk.read_only)
    with pytest.raises(ValueError, match="not contiguous"):
        client.create_bulk(values[:, ::2], courier.bulk.read_only)
    # A read-only array cannot be exposed writable.
    frozen = numpy.zeros(4)
    frozen.flags.writeable = False
    with pytest.raises(courier.BulkError, match="read-only ndarray"):
        client.create_bulk(frozen, courier.bulk.write_only)


def test_handles_pickle_and_serialize():
    with Engine("tcp") as engine:
        local = engine.create_bulk(bytearray(DATA), pymargo.bulk.read_write)
        assert local.is_local and local.mode == pymargo.bulk.read_write
        for remote in (
            pickle.loads(pickle.dumps(local)),
            Bulk.from_bytes(engine, local.to_bytes()),
            Bulk.from_base64(engine, local.to_base64()),
        ):
            assert not remote.is_local
            assert remote.size == 23 and remote.mode == pymargo.bulk.read_write
            assert remote.to_bytes() == local.to_bytes()
        assert repr(local) == "Bulk(size=23, mode=read_write, local)"
        with pytest.raises(courier.BulkError, match="not a bulk handle"):
            Bulk.from_bytes(None, b"\xff")
        with pytest.raises(courier.BulkError, match="base64"):
            Bulk.from_base64(None, "not base64!")


# --- hostile and invalid handles -------------------------------------------------


def _varint(data, at):
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def _encode_varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def forge(bulk, **changes):
    """A handle like `bulk` with some of its fields (region, key, mode,
    offset, len) replaced: what a hostile peer could send. The serialized
    form is five postcard varints, in that order (docs/bulk.md)."""
    raw = bulk.to_bytes()
    fields, at = {}, 0
    for name in ("region", "key", "mode", "offset", "len"):
        fields[name], at = _varint(raw, at)
    assert at == len(raw)
    fields.update(changes)
    return Bulk.from_bytes(None, b"".join(_encode_varint(fields[n]) for n in fields))


def exposed(server, data=DATA, mode=pymargo.bulk.read_only):
    return server.create_bulk(data, mode)


def sink(client, size=len(DATA)):
    buf = bytearray(size)
    return buf, client.create_bulk(buf, pymargo.bulk.write_only)


def pull(client, address, remote, local, size=len(DATA), offset=0, **kwargs):
    return client.transfer(pymargo.bulk.pull, address, remote, offset, local, 0, size, **kwargs)


def test_a_handle_works_then_forged_keys_are_refused(pair):
    server, client, address = pair
    region = exposed(server)
    buf, local = sink(client)
    pull(client, address, pickle.loads(pickle.dumps(region)), local)
    assert buf == DATA
    forged = forge(region, key=forge_key(region))
    with pytest.raises(courier.BulkError, match="key does not match") as info:
        pull(client, address, forged, local)
    assert info.value.address is not None and "forged" in info.value.reason
    assert isinstance(info.value, courier.CourierError)
    # A region id that was never exposed.
    with pytest.raises(courier.BulkError, match="no region"):
        pull(client, address, forge(region, region=10**9), local)


def forge_key(bulk):
    raw = bulk.to_bytes()
    _, at = _varint(raw, 0)
    key, _ = _varint(raw, at)
    return key ^ 1


def test_out_of_range_is_refused(pair):
    server, client, address = pair
    region = exposed(server)
    buf, local = sink(client, 64)
    # Past the end of the handle: caught before anything is sent.
    with pytest.raises(courier.BulkError, match="past the end of the remote handle"):
        pull(client, address, region, local, size=10, offset=20)
    # A handle claiming more bytes than the region has: the exposing
    # engine refuses.
    with pytest.raises(courier.BulkError, match="past the end of region") as info:
        pull(client, address, forge(region, len=64), local, size=64)
    assert info.value.address is not None
    # Past the end of the local handle.
    with pytest.raises(courier.BulkError, match="past the end of the local handle"):
        client.transfer(pymargo.bulk.pull, address, region, 0, local, 60, 10)


def test_read_only_push_is_refused(pair):
    server, client, address = pair
    target = bytearray(DATA)
    region = exposed(server, target, pymargo.bulk.read_only)
    src = client.create_bulk(b"XXXX", pymargo.bulk.read_only)
    with pytest.raises(courier.BulkError, match="push is not allowed"):
        client.transfer(pymargo.bulk.push, address, region, 0, src, 0, 4)
    # Forging the mode does not help: the region's own mode is checked.
    with pytest.raises(courier.BulkError, match="push is not allowed"):
        client.transfer(pymargo.bulk.push, address, forge(region, mode=2), 0, src, 0, 4)
    assert target == DATA


def test_local_handle_misuse_is_refused(pair):
    server, client, address = pair
    region = exposed(server)
    ro = client.create_bulk(bytearray(23), pymargo.bulk.read_only)
    with pytest.raises(courier.BulkError, match="must be writable"):
        pull(client, address, region, ro)
    with pytest.raises(courier.BulkError, match="came from a peer"):
        pull(client, address, region, pickle.loads(pickle.dumps(ro)))
    with pytest.raises(TypeError, match="local_handle must be a Bulk"):
        pull(client, address, region, bytearray(23))
    with pytest.raises(ValueError, match="bulk operation"):
        client.transfer("sideways", address, region, 0, ro, 0, 1)


def test_creating_bulks_checks_the_buffer():
    # courier.Engine: the pymargo shim's exposes bytes writable, as PyMargo
    # does (test_pymargo_compat.py).
    with courier.Engine("tcp") as engine:
        for readonly in (b"bytes", memoryview(b"view"), memoryview(bytearray(3)).toreadonly()):
            with pytest.raises(courier.BulkError, match="read-only .* expose it read_only"):
                engine.create_bulk(readonly, pymargo.bulk.write_only)
            with pytest.raises(courier.BulkError):
                engine.create_bulk(readonly, pymargo.bulk.read_write)
            engine.create_bulk(readonly, pymargo.bulk.read_only)
        with pytest.raises(TypeError, match="buffer protocol.*str does not"):
            engine.create_bulk("text", pymargo.bulk.read_only)
        with pytest.raises(ValueError, match="not contiguous"):
            engine.create_bulk(memoryview(bytearray(8))[::2], pymargo.bulk.read_only)
        with pytest.raises(ValueError, match="bulk mode"):
            engine.create_bulk(bytearray(1), 7)
        # Names work as well as the constants.
        assert engine.create_bulk(bytearray(1), "write_only").mode == courier.bulk.write_only


@pytest.mark.parametrize("how", ["del", "free"])
def test_a_dropped_region_is_refused(pair, how):
    server, client, address = pair
    data = bytearray(DATA)
    region = server.create_bulk(data, pymargo.bulk.read_write)
    remote = pickle.loads(pickle.dumps(region))
    buf, local = sink(client)
    # While exposed, the bytearray is exported: it cannot change size.
    with pytest.raises(BufferError):
        data.extend(b"!")
    if how == "del":
        del region
        gc.collect()
    else:
        region.free()
        region.free()  # harmless
        with pytest.raises(courier.BulkError, match="freed"):
            region.size
    with pytest.raises(courier.BulkError, match="no region") as info:
        pull(client, address, remote, local)
    assert "dropped" in info.value.reason
    # The export was released with the region.
    data.extend(b"!")
    assert buf == bytes(23)


def test_transfer_checks_the_engine(protocol):
    with Engine(protocol, use_progress_thread=True) as a, Engine(protocol) as b:
        region = a.create_bulk(DATA, pymargo.bulk.read_only)
        buf = bytearray(23)
        local = b.create_bulk(buf, pymargo.bulk.write_only)
        with pytest.raises(courier.BulkError, match="another engine"):
            b.transfer(pymargo.bulk.pull, a.address, region, 0, local, 0, 23)
        with pytest.raises(courier.BulkError, match="created by another engine"):
            a.transfer(pymargo.bulk.pull, a.address, region, 0, local, 0, 23)
        # An address given as a string is looked up by the engine itself.
        b.transfer(pymargo.bulk.pull, str(a.address), region, 0, local, 0, 23, timeout=10_000)
        assert buf == DATA


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_transfers_never_take_the_gil(scripts, protocol):
    """The server process holds its GIL in a Python loop while this process
    pulls 1 MiB from it and pushes 64 KiB into it: its engine serves both
    on its own threads, reading and writing the buffers without the GIL,
    and the loop sees the pushed byte."""
    server = scripts(PROGRAMS / "gil_holding_server.py", protocol=protocol)
    address = server.expect_line("Service running at ")
    data_handle = Bulk.from_base64(None, server.next_line())
    flag_handle = Bulk.from_base64(None, server.next_line())
    with Engine(protocol, mode=pymargo.client) as client:
        target = client.lookup(address)
        got = bytearray(1 << 20)
        local = client.create_bulk(got, pymargo.bulk.write_only)
        client.transfer(pymargo.bulk.pull, target, data_handle, 0, local, 0, len(got))
        assert got == bytes(range(256)) * 4096
        flag = client.create_bulk(b"\x07" * (64 << 10), pymargo.bulk.read_only)
        client.transfer(pymargo.bulk.push, target, flag_handle, 0, flag, 0, 64 << 10)
        assert server.next_line() == "seen 7"
    assert server.wait() == 0, server.stderr()


@pytest.mark.parametrize("protocol", ["tcp", "unix"])
def test_a_transfer_times_out(protocol):
    """An engine without a progress thread makes progress only while a
    thread waits in it: nobody does here, so its peer's pull gets no
    answer. (tcp and unix only: there the connection is made by the kernel,
    while quic and shm need the silent engine to answer their handshake.)"""
    with Engine(protocol) as silent, Engine(protocol, mode=pymargo.client) as client:
        region = silent.create_bulk(DATA, pymargo.bulk.read_only)
        buf, local = sink(client)
        address = client.lookup(str(silent.address))
        with pytest.raises(courier.BulkTimeoutError, match="timed out after 100ms") as info:
            pull(client, address, region, local, timeout=100)
        assert isinstance(info.value, courier.TimeoutError)
        assert isinstance(info.value, TimeoutError) and isinstance(info.value, courier.BulkError)
        request = pull(client, address, region, local, blocking=False, timeout=100)
        with pytest.raises(courier.BulkTimeoutError):
            request.wait()
        assert request.test()


def test_bulk_options_come_from_the_json_config():
    """The configuration's ``bulk`` object sets the engine's transfer
    options, and ``timeouts.bulk_ms`` the timeout a transfer that sets none
    gets; ``engine.config`` shows them, and a wrong key is refused by name."""
    config = {"timeouts": {"bulk_ms": 100}, "bulk": {"window": 4}}
    with Engine("tcp") as silent, Engine("tcp", mode=pymargo.client, config=config) as client:
        assert client.config["timeouts"]["bulk_ms"] == 100
        assert client.config["bulk"]["window"] == 4
        assert client.config["bulk"]["chunk_size"] == 256 << 10
        region = silent.create_bulk(DATA, pymargo.bulk.read_only)
        buf, local = sink(client)
        address = client.lookup(str(silent.address))
        with pytest.raises(courier.BulkTimeoutError, match="timed out after 100ms"):
            pull(client, address, region, local)
    with pytest.raises(courier.CourierError, match="unknown field `chunk`"):
        Engine("tcp", config={"bulk": {"chunk": 1}})


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_pymargo_bulk_programs_across_processes(scripts, protocol):
    server = scripts(PROGRAMS / "bulk_server.py", protocol=protocol)
    address = server.expect_line("Service running at ")
    status, out, err = run_script(PROGRAMS / "bulk_client.py", address, protocol=protocol)
    assert status == 0, err
    assert out.splitlines() == [
        "pull: This is some bytes data",
        "push: This is more bytes data",
        "ipull: This is some bytes data",
        "ipush: This is more bytes data",
        "1 MiB pull: ok",
    ]
    assert server.wait() == 0, server.stderr()


def test_ctrl_c_interrupts_a_blocking_transfer(scripts):
    """The peer is a plain socket that reads the BulkPull and never answers.
    Without a progress thread, the client's engine sends it only from
    inside the blocking transfer's wait: once it has arrived, the client is
    waiting there, and Ctrl-C must end it."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(GUARD_S)
        port = listener.getsockname()[1]
        client = scripts(PROGRAMS / "blocked_bulk_client.py", f"tcp://127.0.0.1:{port}")
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(GUARD_S)
            # A frame of 64 bytes (u32 length), version 1, kind 8: BulkPull.
            received = b""
            while b"\x40\x00\x00\x00\x01\x08" not in received:
                chunk = conn.recv(4096)
                assert chunk, f"the client closed the connection; stderr: {client.stderr()}"
                received += chunk
            client.interrupt()
            assert client.wait() == -signal.SIGINT, client.stderr()
    assert "KeyboardInterrupt" in client.stderr()
    assert "client.transfer(" in client.stderr()


def test_bulks_after_finalize(protocol):
    engine = Engine(protocol)
    buf = bytearray(4)
    region = engine.create_bulk(buf, pymargo.bulk.read_write)
    engine.finalize()
    with pytest.raises(courier.CourierError, match="finaliz"):
        engine.create_bulk(bytearray(1), pymargo.bulk.read_only)
    with pytest.raises(courier.CourierError, match="finaliz"):
        engine.transfer(pymargo.bulk.pull, engine.address, region, 0, region, 0, 4)
    # The handle outlives its engine harmlessly, and lets its buffer go.
    assert region.size == 4
    del region, engine
    gc.collect()
    buf.extend(b"more")
