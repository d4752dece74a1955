"""`python -m courier`: protocols, call, ping and shutdown, run as a user
runs them (a child process each) against a service started here, on every
protocol; errors print `courier: <message>` and exit 1, never a traceback."""

import json
import re
import signal
import subprocess
import sys

import pytest

from conftest import GUARD_S, HERE, PROTOCOLS, Script, script_env

PROGRAMS = HERE / "programs"


def cli(*args):
    """Runs `python -m courier ARGS...` to its end: (status, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "courier", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=script_env(),
        timeout=GUARD_S,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout, done.stderr


def fails(expected_stderr, *args):
    """Asserts that `python -m courier ARGS` fails with exit status 1 and a
    last stderr line `courier: ...` matching `expected_stderr` (a regex)."""
    status, out, err = cli(*args)
    assert status == 1, (status, out, err)
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(f"courier: {expected_stderr}", last), last
    return out


@pytest.fixture(scope="module", params=PROTOCOLS)
def server(request):
    """A service (tests/programs/cli_server.py) on each protocol, as a
    Script with its `address`; shut down with `python -m courier shutdown`
    at the end, which must end it."""
    server = Script(PROGRAMS / "cli_server.py", protocol=request.param)
    try:
        address = server.expect_line("Service running at ")
        server.address = address
        yield server
        status, out, err = cli("shutdown", address)
        assert (status, out) == (0, f"shutdown requested: {address}\n"), err
        assert server.wait() == 0, server.stderr()
    finally:
        server.kill()
        server.proc.stdout.close()
        server.proc.stderr.close()


@pytest.fixture
def service(server):
    """The address of `server`."""
    return server.address


def next_line_starting(server, prefix):
    """The rest of `server`'s next output line that starts with `prefix`."""
    while True:
        line = server.next_line()
        if line.startswith(prefix):
            return line[len(prefix):]


def test_protocols_prints_the_rust_commands_table():
    status, out, err = cli("protocols")
    assert status == 0, err
    lines = out.splitlines()
    assert re.fullmatch(r"\| protocol +\| aliases +\| plugin +\| reach +\| status +\|", lines[0])
    assert re.fullmatch(r"\|(-+-\|){5}", lines[1])
    assert len({len(line) for line in lines}) == 1, "columns are aligned"
    rows = {cells[0]: cells[1:] for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    for protocol in PROTOCOLS:
        assert rows[protocol][-1] == "available", rows[protocol]
    assert rows["tcp"][:3] == ["ofi+tcp, bmi+tcp", "tcp", "network"]
    assert rows["unix"][:3] == ["uds", "unix", "host"]


def test_call_prints_a_string_response_as_it_is(service):
    status, out, err = cli("call", service, "hello", "Matthieu", "Dorier")
    assert (status, out) == (0, "Good bye Matthieu\n"), err


def test_call_arguments_are_strings_literals_or_json(service):
    # Strings by default, as the Rust command sends them; the response is
    # not a string, so its repr() is printed.
    status, out, err = cli("call", service, "echo", "1", "two", "--kwarg", "k=v")
    assert (status, out) == (0, "(('1', 'two'), {'k': 'v'})\n"), err
    # Python literals, ARGS after options too.
    status, out, err = cli("call", service, "echo", "--literal", "1", "'two'", "[3, None]",
                           "--kwarg", "k=b'v'", "(4.5,)")
    assert (status, out) == (0, "((1, 'two', [3, None], (4.5,)), {'k': b'v'})\n"), err
    # JSON in, JSON out (the tuples come back as arrays).
    status, out, err = cli("call", service, "echo", "--json", '{"a": [true, null]}', "2",
                           "--kwarg", 'x="y"')
    assert status == 0, err
    assert json.loads(out) == [[{"a": [True, None]}, 2], {"x": "y"}]
    # `--` before ARGS that start with '-'.
    status, out, err = cli("call", service, "echo", "-l", "--", "-1", "-2.5")
    assert (status, out) == (0, "((-1, -2.5), {})\n"), err


def test_call_prints_nothing_for_none(service):
    assert cli("call", service, "nothing")[:2] == (0, "")


def test_call_at_a_provider_id(service):
    status, out, err = cli("call", service, "whoami", "--provider", "5")
    assert (status, out) == (0, "provider 5\n"), err
    fails(re.escape(f"no such RPC 'whoami' at provider 0 of {service}"), "call", service, "whoami")


def test_call_sends_its_timeout_as_the_handlers_deadline(service):
    status, out, err = cli("call", service, "remaining", "--timeout-ms", "60000")
    assert status == 0, err
    assert 0 < float(out) <= 60.0
    # --timeout-ms 0: no deadline.
    assert cli("call", service, "remaining", "--timeout-ms", "0")[:2] == (0, "")


def test_call_past_its_timeout_fails_and_cancels_the_handler(server):
    fails(".*(timed out|timeout).*", "call", server.address, "until_cancelled",
          "--timeout-ms", "200")
    # The handler's deadline (the call's timeout) passed at the same time as
    # the caller gave up: either may be the first the server saw.
    assert next_line_starting(server, "until_cancelled ended: ") in ("caller", "deadline")
    # The service is unharmed.
    assert cli("call", server.address, "hello", "a", "b")[:2] == (0, "Good bye a\n")


def test_ctrl_c_in_call_exits_130_and_cancels_the_handler(server):
    call = subprocess.Popen(
        [sys.executable, "-m", "courier", "call", server.address, "until_cancelled",
         "--timeout-ms", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=script_env(),
    )
    try:
        next_line_starting(server, "until_cancelled started")
        call.send_signal(signal.SIGINT)
        out, err = call.communicate(timeout=GUARD_S)
    finally:
        if call.poll() is None:
            call.kill()
            call.communicate()
    assert (call.returncode, out, err) == (130, "", "courier: call interrupted\n")
    # The call was given up: the server's handler sees it cancelled (by its
    # caller, or by the connection's end when the engine finalized first).
    assert next_line_starting(server, "until_cancelled ended: ") in ("caller", "connection_lost")


def test_call_errors_are_one_line_with_exit_status_1(service):
    fails(re.escape(f"no such RPC 'nosuch' at provider 0 of {service}"), "call", service, "nosuch")
    fails(r"ZeroDivisionError: division by zero \(raised by the handler of RPC 'divide' at .*\)",
          "call", service, "divide", "-l", "1", "0")
    fails(r"TypeError: hello\(\) missing 2 required positional arguments.*",
          "call", service, "hello")
    fails(r"argument 'x y' is not a Python literal: .*", "call", service, "echo", "-l", "x y")
    fails(r"argument '\{' is not JSON: .*", "call", service, "echo", "--json", "{")
    fails(r"--kwarg '3=4': expected NAME=VALUE, NAME an identifier",
          "call", service, "echo", "--kwarg", "3=4")
    fails(r"--kwarg timeout: a call's own keyword; pass that argument positionally",
          "call", service, "echo", "--kwarg", "timeout=1")
    fails(r"argument --provider: 65535 is not in 0..=65534",
          "call", service, "echo", "--provider", "65535")
    fails(r"unrecognized arguments: --bogus", "call", service, "echo", "x", "--bogus")


def test_ping_prints_each_round_trip_and_a_summary(service):
    status, out, err = cli("ping", service, "-c", "3")
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == f"PING {service}: 3 engine-level round trips"
    for seq, line in enumerate(lines[1:4], 1):
        # One address: the path is that address.
        assert re.fullmatch(rf"seq={seq} via {re.escape(service)} time=\d+\.\d µs", line), line
    assert re.fullmatch(
        rf"--- {re.escape(service)}: 3 sent, 3 answered, "
        r"round trip min/avg/max = \d+\.\d/\d+\.\d/\d+\.\d µs", lines[4]), lines[4]
    assert len(lines) == 5


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ping_and_call_fail_clearly_on_a_dead_peer(protocol):
    server = Script(PROGRAMS / "cli_server.py", protocol=protocol)
    try:
        address = server.expect_line("Service running at ")
        assert cli("shutdown", address)[0] == 0
        assert server.wait() == 0, server.stderr()
    finally:
        server.kill()
        server.proc.stdout.close()
        server.proc.stderr.close()
    # The peer is gone: each command gives up within its timeout, saying why.
    for command in (["ping", address, "-c", "1"], ["call", address, "hello", "a", "b"]):
        out = fails(f"cannot connect to {re.escape(address)}: .+", *command, "--timeout-ms", "2000")
        assert "answered" not in out


def test_bad_addresses_and_protocols():
    fails(re.escape("invalid address 'nothing': expected '<protocol>://<address>', "
                    "e.g. 'tcp://127.0.0.1:7000'"), "ping", "nothing")
    fails(r"unknown protocol 'nope' \(known protocols: .*tcp.*\)", "ping", "nope://127.0.0.1:1")
    fails(r"unknown protocol 'nope' \(known protocols: .*\)", "call", "nope://x", "hello")
    fails(r"cannot connect to tcp://127\.0\.0\.1:1: .*", "call", "tcp://127.0.0.1:1", "hello")


def test_usage():
    status, out, err = cli("--help")
    assert status == 0 and "protocols" in out and "call" in out and "ping" in out, err
    status, out, err = cli("call", "--help")
    assert status == 0 and "--literal" in out and "--kwarg" in out, err
    fails(r"the following arguments are required: COMMAND")
    fails(r"argument COMMAND: invalid choice: 'bench' .*", "bench")
    fails(r"the following arguments are required: RPC", "call", "tcp://127.0.0.1:1")
    fails(r"argument --count/-c: 0 is not in 1\.\.", "ping", "tcp://127.0.0.1:1", "-c", "0")
