"""The seed tutorial's two scripts, byte for byte (tests/seed/), run as a
user runs them: the server in one process, the client in another, on
every protocol. The scripts name "tcp"; COURIER_PROTOCOL_OVERRIDE makes
them use another protocol without changing a line."""

import pytest

from conftest import PROTOCOLS, SEED, needs_shm, run_script


def seed_round_trip(scripts, protocol):
    server = scripts(SEED / "server.py", protocol=protocol)
    address = server.expect_line("Service running at ")
    assert address.startswith(f"{protocol or 'tcp'}://"), address

    status, out, err = run_script(SEED / "client.py", address, protocol=protocol)
    assert status == 0, f"client failed ({status}): {err}"
    assert out == ""  # the client prints nothing; its assert checked the response

    assert server.remaining_lines() == ["Hello Matthieu Dorier!"]
    assert server.wait() == 0, server.stderr()
    assert "Traceback" not in server.stderr()


def test_seed_scripts_verbatim_on_tcp(scripts):
    seed_round_trip(scripts, None)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_seed_scripts_on_every_protocol(scripts, protocol):
    seed_round_trip(scripts, protocol)


@pytest.mark.parametrize(
    "alias, canonical", [("ofi+tcp", "tcp"), pytest.param("na+sm", "shm", marks=needs_shm)]
)
def test_seed_scripts_with_mochi_protocol_names(scripts, alias, canonical):
    server = scripts(SEED / "server.py", protocol=alias)
    address = server.expect_line("Service running at ")
    # Printed as PyMargo prints it: in the spelling the engine was made with.
    assert address.startswith(f"{alias}://") and alias != canonical, address
    status, _, err = run_script(SEED / "client.py", address, protocol=alias)
    assert status == 0, err
    assert server.remaining_lines() == ["Hello Matthieu Dorier!"]
    assert server.wait() == 0


def test_seed_client_against_a_dead_address_fails_fast():
    status, out, err = run_script(SEED / "client.py", "tcp://127.0.0.1:1")
    assert status == 1
    assert "CourierError" in err and "cannot connect" in err, err
