"""Arguments and responses larger than the largest message, from Python
(docs/bulk.md, "Payloads of any size"): they travel by the bulk path on
their own, on every protocol and in the three threading set-ups, and one
over ``max_payload_bytes`` is refused with an error that says so."""

import pytest

import courier
import pymargo
from pymargo.core import Engine

from conftest import PROTOCOLS

MIB = 1 << 20

#: 1 MiB messages, so that a few MiB are over the largest.
SMALL = {"max_message_size": MIB}


@pytest.fixture(params=PROTOCOLS)
def protocol(request):
    return request.param


@pytest.fixture(params=["inline", "progress", "rpc_threads"])
def pair(request, protocol):
    """(server engine, client engine): the same engine for "inline"."""
    if request.param == "inline":
        engine = Engine(protocol, config=SMALL)
        yield engine, engine
        engine.finalize()
        return
    if request.param == "progress":
        server = Engine(protocol, use_progress_thread=True, config=SMALL)
    else:
        server = Engine(protocol, num_rpc_threads=2, config=SMALL)
    client = Engine(protocol, mode=pymargo.client, config=SMALL)
    yield server, client
    client.finalize()
    server.finalize()


def test_arguments_and_responses_over_the_largest_message(pair):
    server, client = pair
    server.register("echo", lambda h, data: h.respond(data))
    server.register("size", lambda h, data: h.respond(len(data)))
    server.register("make", lambda h, n: h.respond(b"\x07" * n))
    address = client.lookup(str(server.address))
    echo = client.register("echo").on(address)
    size = client.register("size").on(address)
    make = client.register("make").on(address)
    for n in (2 * MIB, 3 * MIB):
        data = bytes(range(256)) * (n // 256)
        assert size(data) == n
        assert make(n) == b"\x07" * n
        assert echo(data) == data


def test_over_max_payload_bytes_is_refused(protocol):
    with Engine(protocol, use_progress_thread=True, config=SMALL) as server, Engine(
        protocol, mode=pymargo.client, config={**SMALL, "max_payload_bytes": 2 * MIB}
    ) as client:
        server.register("size", lambda h, data: h.respond(len(data)))
        size = client.register("size").on(client.lookup(str(server.address)))
        with pytest.raises(courier.CourierError) as refused:
            size(b"x" * (3 * MIB))
        assert "max_payload_bytes (2097152 bytes)" in str(refused.value)
        # Under the limit, by the bulk path all the same.
        assert size(b"x" * (MIB + 1)) == MIB + 1
