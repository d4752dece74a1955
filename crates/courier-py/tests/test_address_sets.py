"""Engines listening on several protocols at once (address sets, issue 20):
`Engine("tcp,shm")` prints one address set, a lookup of it takes the
fastest path both ends speak (`Address.path` says which), and Margo's
`{"mercury": {"auto_sm": true}}` adds the host's shared memory."""

import json
import subprocess
import sys

import pytest

import courier
import pymargo
import pymargo.core
from courier import CourierError, Engine

from conftest import GUARD_S, HERE, SEED, doc_example, needs_shm, run_script, script_env

PROGRAMS = HERE / "programs"


def scheme(address):
    return address.split("://", 1)[0]


def start_set_server(scripts, protocols, config=None):
    """A set server in a child process: (script, its address set)."""
    args = [protocols] + ([json.dumps(config)] if config is not None else [])
    server = scripts(PROGRAMS / "set_server.py", *args)
    assert server.expect_line("protocol ") == protocols
    return server, server.expect_line("Service running at ")


def shut_down(server, address):
    address.shutdown()
    assert server.wait() == 0, server.stderr()


# --- across two processes ------------------------------------------------------


@needs_shm
def test_a_set_server_is_reached_by_shm_from_the_same_host(scripts):
    server, text = start_set_server(scripts, "tcp,shm")
    # The listeners in listed order, then the in-process part.
    assert [scheme(p) for p in text.split(",")] == ["tcp", "shm", "mem"]
    with Engine("tcp,shm", mode=courier.client) as client:
        address = client.lookup(text)
        assert str(address) == text
        assert address.parts == tuple(text.split(","))
        # The mem part names a listener of the server's process, not this
        # one's: the lookup skips it and takes shared memory.
        assert address.path is not None and address.path.startswith("shm://")
        assert address.path in address.parts
        assert client.register("hello").on(address)("set") == "Hello set"
        # The server sees the call come by shared memory too.
        assert scheme(client.register("caller_path").on(address)()) == "shm"
        shut_down(server, address)


@needs_shm
def test_a_client_that_speaks_only_tcp_takes_the_tcp_part(scripts):
    server, text = start_set_server(scripts, "tcp,shm")
    with pymargo.core.Engine("tcp", mode=pymargo.client) as client:
        address = client.lookup(text)
        assert address.path == text.split(",")[0] and address.path.startswith("tcp://")
        assert client.register("hello").on(address)("tcp") == "Hello tcp"
        assert scheme(client.register("caller_path").on(address)()) == "tcp"
        shut_down(server, address)


def test_unix_is_preferred_to_tcp_and_listed_order_keeps_the_sets(scripts):
    server, text = start_set_server(scripts, "tcp,unix")
    with Engine("tcp,unix", mode=courier.client) as fastest:
        assert fastest.lookup(text).path.startswith("unix://")
    # Courier's own `paths` key, through the Python config.
    with Engine("tcp,unix", mode=courier.client, config={"paths": {"order": "listed"}}) as listed:
        assert listed.config["paths"]["order"] == "listed"
        address = listed.lookup(text)
        assert address.path.startswith("tcp://")
        shut_down(server, address)


@needs_shm
def test_a_path_dying_mid_call_fails_that_call_and_the_next_dials_again(scripts):
    server, text = start_set_server(scripts, "tcp,shm")
    with Engine("tcp,shm", mode=courier.client) as client:
        address = client.lookup(text)
        shm = address.path
        assert shm.startswith("shm://")
        held = client.register("hold").on(address)(blocking=False)
        assert server.next_line() == "held"
        server.kill()
        with pytest.raises(CourierError) as err:
            held.wait()
        assert f"connection with {text} lost" in str(err.value) and shm in str(err.value)
        # The connection is dead: no path until the next call dials again,
        # trying every part in order, each failing now that nobody listens.
        assert address.path is None
        with pytest.raises(CourierError) as err:
            client.register("hello").on(address)("again")
        tried = str(err.value)
        assert f"no path to {text} could connect" in tried
        parts = text.split(",")
        assert tried.index(parts[2]) < tried.index(parts[1] + ":") < tried.index(parts[0] + ":")


@needs_shm
def test_the_seed_scripts_run_unchanged_over_a_set(scripts):
    # COURIER_PROTOCOL_OVERRIDE may name a set: the scripts' "tcp" engines
    # then listen on (and look up by) tcp and shm.
    server = scripts(SEED / "server.py", protocol="tcp,shm")
    text = server.expect_line("Service running at ")
    assert [scheme(p) for p in text.split(",")] == ["tcp", "shm", "mem"]
    status, _, err = run_script(SEED / "client.py", text, protocol="tcp,shm")
    assert status == 0, err
    assert server.remaining_lines() == ["Hello Matthieu Dorier!"]
    assert server.wait() == 0, server.stderr()


@needs_shm
def test_the_documented_example_runs(scripts, tmp_path):
    """docs/python.md's address set server and client, as written."""
    (tmp_path / "set_server.py").write_text(doc_example("A runnable server (`set_server.py`):"))
    (tmp_path / "set_client.py").write_text(doc_example("And its client (`set_client.py`)"))
    server = scripts(tmp_path / "set_server.py")
    text = server.expect_line("Service running at ")
    status, out, err = run_script(tmp_path / "set_client.py", text)
    assert status == 0, err
    assert out.splitlines() == [
        "path: shm", "Hello Matthieu", "seen by the server: shm", "tcp only: tcp",
    ]
    assert server.wait() == 0, server.stderr()


@needs_shm
def test_python_m_courier_takes_a_set(scripts):
    server, text = start_set_server(scripts, "tcp,shm")

    def cli(*args):
        done = subprocess.run(
            [sys.executable, "-m", "courier", *args], stdin=subprocess.DEVNULL,
            capture_output=True, text=True, env=script_env(), timeout=GUARD_S,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert cli("call", text, "hello", "--literal", "'cli'") == "Hello cli\n"
    # Its client speaks the set's protocols but mem (the server's process's
    # own), so it takes shm; --protocol pins what it speaks.
    assert cli("call", text, "caller_path").startswith("shm://")
    assert cli("call", text, "caller_path", "--protocol", "tcp").startswith("tcp://")
    shm = text.split(",")[1]
    lines = cli("ping", text, "-c", "2").splitlines()
    assert lines[0] == f"PING {text}: 2 engine-level round trips"
    assert all(line.startswith(f"seq={i} via {shm} time=") for i, line in enumerate(lines[1:3], 1))
    assert cli("ping", text, "-c", "1", "--protocol", "tcp").splitlines()[1].startswith(
        f"seq=1 via {text.split(',')[0]} time="
    )
    assert cli("shutdown", text) == f"shutdown requested: {text}\n"
    assert server.wait() == 0, server.stderr()


def test_python_m_courier_names_what_is_wrong_with_a_set():
    def fails(*args):
        done = subprocess.run(
            [sys.executable, "-m", "courier", *args], stdin=subprocess.DEVNULL,
            capture_output=True, text=True, env=script_env(), timeout=GUARD_S,
        )
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        return done.stderr.splitlines()[-1]

    assert fails("ping", "tcp://127.0.0.1:1,,unix:///x") == (
        "courier: invalid address set 'tcp://127.0.0.1:1,,unix:///x': part 2 is empty"
    )
    assert fails("ping", "tcp://127.0.0.1:1,nope://x").startswith(
        "courier: invalid address set 'tcp://127.0.0.1:1,nope://x': unknown protocol 'nope'"
    )


# --- in one process ------------------------------------------------------------


@needs_shm
def test_two_set_engines_of_one_process_take_the_in_process_path():
    with Engine("tcp,shm", use_progress_thread=True) as server, \
            Engine("tcp,shm", mode=courier.client) as client:
        server.register("hello", lambda handle, name: handle.respond(f"Hello {name}"))
        text = str(server.address)
        assert server.protocol == "tcp,shm"
        assert server.address.parts[-1].startswith("mem://")
        # The engine's own address has no connection of its own.
        assert server.address.path is None
        address = client.lookup(text)
        assert address.path == server.address.parts[-1]
        assert client.register("hello").on(address)("mem") == "Hello mem"


@needs_shm
def test_without_the_in_process_path_engines_of_one_process_take_shm():
    off = {"paths": {"in_process": False}}
    # The server has a progress thread: a shm connection is accepted by
    # the server's engine, which the client's waits do not drive.
    with Engine("tcp,shm", config=off, use_progress_thread=True) as server, \
            Engine("tcp,shm", mode=courier.client) as client:
        assert [scheme(p) for p in server.address.parts] == ["tcp", "shm"]
        assert client.lookup(str(server.address)).path.startswith("shm://")


@needs_shm
def test_a_set_may_be_given_as_addresses_a_listen_list_and_options_per_protocol():
    with Engine("tcp://127.0.0.1:0,shm") as engine:
        assert engine.protocol == "tcp,shm"
        assert engine.address.parts[0].startswith("tcp://127.0.0.1:")
    config = {
        "listen": ["tcp://127.0.0.1:0", "shm"],
        "transport": {"tcp": {"nodelay": False}, "shm": {}},
    }
    with Engine("tcp", config=config) as engine:
        assert [scheme(p) for p in engine.address.parts] == ["tcp", "shm", "mem"]
        assert engine.config["transport"]["tcp"] == {"nodelay": False}
    # A key naming the engine's protocol gives that protocol its options.
    with pytest.raises(CourierError) as err:
        Engine("tcp,shm", config={"transport": {"tcp": {"bogus": 1}}})
    assert "invalid options for the 'tcp' plugin: option 'bogus'" in str(err.value)


def test_one_protocol_keeps_one_address():
    with Engine("tcp") as engine:
        assert engine.protocol == "tcp"
        assert engine.address.parts == (str(engine.address),)
        assert "," not in str(engine.address)


# --- Margo's auto_sm -----------------------------------------------------------


@needs_shm
@pytest.mark.parametrize("make", [courier.Engine, pymargo.core.Engine], ids=["courier", "pymargo"])
def test_mercury_auto_sm_adds_shared_memory(make):
    with make("tcp", config={"mercury": {"auto_sm": True}}) as engine:
        assert engine.protocol == "tcp,shm"
        assert engine.config["paths"]["auto_sm"] is True
        parts = engine.address.parts
        assert [scheme(p) for p in parts] == ["tcp", "shm", "mem"]
        # A tcp client reaches it as before.
        with Engine("tcp", mode=courier.client) as client:
            assert client.lookup(str(engine.address)).path == parts[0]
    # The same as Courier's own key; the JSON string form too.
    with Engine("tcp", config='{"paths": {"auto_sm": true}}') as engine:
        assert engine.protocol == "tcp,shm"
    with Engine("tcp", config={"mercury": {"auto_sm": False}}) as engine:
        assert engine.protocol == "tcp" and len(engine.address.parts) == 1


def test_auto_sm_on_an_engine_of_the_host_adds_nothing():
    with Engine("unix", config={"mercury": {"auto_sm": True}}) as engine:
        assert engine.protocol == "unix"


@pytest.mark.parametrize(
    "config, message",
    [
        ({"mercury": {"auto_sm": 1}}, "`mercury.auto_sm` must be true or false, not 1"),
        ({"mercury": {"na_no_block": True}},
         "`mercury.na_no_block`: Courier reads only `auto_sm`"),
        ({"mercury": True}, "`mercury` must be an object"),
        ({"mercury": {"auto_sm": True}, "paths": {"auto_sm": False}},
         "`mercury.auto_sm` (true) and `paths.auto_sm` (false) are the same setting"),
        ({"paths": {"order": "sideways"}}, "unknown variant `sideways`"),
    ],
)
def test_bad_path_settings_are_refused_naming_them(config, message):
    with pytest.raises(CourierError) as err:
        Engine("tcp", config=config)
    assert message in str(err.value)


# --- bad sets ------------------------------------------------------------------


@pytest.mark.parametrize(
    "protocols, message",
    [
        ("tcp,nope", "unknown protocol 'nope'"),
        ("tcp,,unix", "invalid address set 'tcp,,unix': part 2 is empty"),
        ("tcp,ofi+tcp", "protocol 'tcp' is listed twice"),
    ],
)
def test_a_bad_set_is_refused_naming_the_problem(protocols, message):
    with pytest.raises(CourierError) as err:
        Engine(protocols)
    assert message in str(err.value)
    # The pymargo shim raises the same (MargoException is CourierError).
    with pytest.raises(pymargo.core.MargoException) as err:
        pymargo.core.Engine(protocols)
    assert message in str(err.value)


def test_a_bad_set_to_look_up_is_refused_naming_the_problem():
    with Engine("tcp", mode=courier.client) as client:
        cases = [
            ("tcp://127.0.0.1:1,nope://x", "unknown protocol 'nope'"),
            ("tcp://127.0.0.1:1,,unix:///x", "part 2 is empty"),
            ("tcp://127.0.0.1:1,tcp://127.0.0.1:1", "is given twice"),
            # Known protocols, none of them spoken by this engine.
            ("unix:///x,quic://127.0.0.1:1", "this engine speaks 'tcp'"),
        ]
        for text, message in cases:
            with pytest.raises(CourierError) as err:
                client.lookup(text)
            assert message in str(err.value), text


def test_a_set_whose_every_path_fails_says_how_each_failed(tmp_path):
    gone = tmp_path / "nobody.sock"
    with Engine("tcp,unix", mode=courier.client) as client:
        with pytest.raises(CourierError) as err:
            client.lookup(f"tcp://127.0.0.1:1,unix://{gone}")
    text = str(err.value)
    assert f"unix://{gone}" in text and "tcp://127.0.0.1:1" in text


# --- spellings -----------------------------------------------------------------


@needs_shm
def test_each_part_keeps_the_mercury_spelling_it_was_made_with():
    with Engine("ofi+tcp,na+sm", use_progress_thread=True) as engine, \
            Engine("tcp,shm", mode=courier.client) as client:
        assert engine.protocol == "tcp,shm"
        parts = engine.address.parts
        assert [scheme(p) for p in parts] == ["ofi+tcp", "na+sm", "mem"]
        # Either spelling looks up the same address.
        canonical = str(engine.address).replace("ofi+tcp://", "tcp://").replace("na+sm://", "shm://")
        assert client.lookup(str(engine.address)) == client.lookup(canonical)
        # The path prints in the spelling of the engine that took it.
        assert scheme(engine.lookup(canonical).path) == "mem"
        with Engine("tcp,na+sm", mode=courier.client, config={"paths": {"in_process": False}}) as na:
            assert scheme(na.lookup(canonical).path) == "na+sm"
