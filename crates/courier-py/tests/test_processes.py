"""Behaviours that need real processes: Ctrl-C on a waiting server and on
a waiting client, a handler that raises, across processes."""

import os
import signal

import pytest

import pymargo
from pymargo.core import Engine

from conftest import HERE, PROTOCOLS, SEED, run_script

PROGRAMS = HERE / "programs"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ctrl_c_stops_a_server_in_wait_for_finalize(scripts, protocol):
    server = scripts(SEED / "server.py", protocol=protocol)
    address = server.expect_line("Service running at ")
    # Once it has answered a call it is waiting: its handlers run from
    # wait_for_finalize (no progress thread).
    with Engine(protocol, mode=pymargo.client) as client:
        hello = client.register("hello").on(client.lookup(address))
        assert hello("Matthieu", lastname="Dorier") == "Good bye Matthieu"
    assert server.next_line() == "Hello Matthieu Dorier!"
    server.interrupt()
    status = server.wait()
    err = server.stderr()
    # Python's own way to die of an uncaught KeyboardInterrupt.
    assert status == -signal.SIGINT, f"status {status}; stderr: {err}"
    assert "KeyboardInterrupt" in err
    assert "wait_for_finalize" in err
    if protocol == "unix":
        # Leaving the `with` block finalized the engine: its socket is gone.
        assert not os.path.exists(address[len("unix://"):])


def test_ctrl_c_stops_a_client_waiting_for_a_response(scripts):
    server = scripts(PROGRAMS / "holding_server.py")
    address = server.expect_line("Service running at ")
    client = scripts(PROGRAMS / "blocked_client.py", address)
    client.expect_line("calling")
    assert server.next_line() == "held"
    client.interrupt()
    assert client.wait() == -signal.SIGINT, client.stderr()
    assert "KeyboardInterrupt" in client.stderr()
    # The server is unharmed and still serves.
    status, out, err = run_script(SEED / "client.py", address)
    assert status == 0, err
    assert server.wait() == 0


def test_a_raising_handler_raises_at_the_caller(scripts):
    server = scripts(PROGRAMS / "raising_server.py")
    address = server.expect_line("Service running at ")
    status, out, err = run_script(PROGRAMS / "raising_client.py", address)
    assert status == 0, err
    assert out == "raised RemoteZeroDivisionError: division by zero\n"
    assert server.wait() == 0
    # The server logged the traceback of what its handler raised.
    assert "ZeroDivisionError: division by zero" in server.stderr()
    assert "the handler of RPC 'divide' raised" in server.stderr()
