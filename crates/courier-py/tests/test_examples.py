"""The example programs (crates/courier-py/examples), run as a user runs
them, on every protocol. `.ci/run` also type-checks them with
`mypy --strict`."""

import hashlib
import os

import pytest

from conftest import HERE, PROTOCOLS, run_script

EXAMPLES = HERE.parent / "examples"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_hello_server_and_client(scripts, protocol):
    server = scripts(EXAMPLES / "hello_server.py", protocol)
    address = server.expect_line("Service running at ")
    assert address.startswith(f"{protocol}://"), address
    status, out, err = run_script(EXAMPLES / "hello_client.py", address)
    assert (status, out) == (0, "Good bye Matthieu\n"), err
    # The client shut the server down.
    assert server.remaining_lines() == ["Hello Matthieu Dorier!"]
    assert server.wait() == 0, server.stderr()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_provider(protocol):
    status, out, err = run_script(EXAMPLES / "provider.py", protocol)
    assert status == 0, err
    assert out.splitlines() == [
        "registered: kv_get, kv_put",
        "stored 1 key(s)",
        "greeting = b'hello'",
        "missing: the handler raised KeyError: 'missing'",
    ]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bulk_sum(protocol):
    status, out, err = run_script(EXAMPLES / "bulk_sum.py", protocol)
    assert (status, out) == (0, "sum of 100000 floats: 4999950000.0\n"), err


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_asyncio_hello_server_and_client(scripts, protocol):
    server = scripts(EXAMPLES / "aio_hello_server.py", protocol)
    address = server.expect_line("Service running at ")
    status, out, err = run_script(EXAMPLES / "aio_hello_client.py", address)
    assert (status, out) == (0, "Good bye Matthieu\n100 replies\n"), err
    lines = server.remaining_lines()
    assert lines[0] == "Hello Matthieu Dorier!", lines
    assert len(lines) == 101, lines
    assert server.wait() == 0, server.stderr()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_stream_file_server_and_client(scripts, tmp_path, protocol):
    """A file of 3 MiB and a bit, streamed up in 64 KiB chunks and back:
    its SHA-256 checked both ways (by the client, and here)."""
    data = os.urandom(3 * 1024 * 1024 + 12345)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    server = scripts(EXAMPLES / "stream_file_server.py", protocol)
    address = server.expect_line("Service running at ")
    status, out, err = run_script(EXAMPLES / "stream_file_client.py", address, str(path))
    assert status == 0, err
    assert out.splitlines() == [
        f"uploaded {len(data)} bytes (sha256 {digest})",
        f"downloaded {len(data)} bytes (sha256 {digest})",
    ]
    assert server.remaining_lines() == [f"stored data.bin: {len(data)} bytes"]
    assert server.wait() == 0, server.stderr()


def view_line_where(member, condition):
    """The first view line `member` prints for which `condition(states)`
    holds (states: {address: state}); each line waits at most GUARD_S."""
    while True:
        line = member.next_line()
        if not line.startswith("view "):
            continue
        states = dict(part.split("=", 1) for part in line.split(": ", 1)[1].split())
        if condition(states):
            return states


def test_group_members_and_client(scripts, tmp_path):
    """Three members of a group file on tcp (loopback), as a user runs them
    in three terminals: the client's calls reach all three; one killed
    (SIGKILL) goes down, and the calls go on without a failure; one
    stopped with Ctrl-C leaves."""
    path = str(tmp_path / "kv.json")
    members, addresses = [], []
    for _ in range(3):
        member = scripts(EXAMPLES / "group_member.py", path)
        addresses.append(member.expect_line("Service running at "))
        members.append(member)
    for member in members:
        view_line_where(member, lambda s: all(s.get(a) == "alive" for a in addresses))
    status, out, err = run_script(EXAMPLES / "group_client.py", path, "100")
    assert status == 0, err
    lines = out.splitlines()
    assert sorted(lines[:3]) == sorted(f"{a} alive" for a in addresses)
    assert lines[3] == "3 members answered 100 calls, 0 failed"

    members[1].kill()
    for member in (members[0], members[2]):
        view_line_where(member, lambda s: s.get(addresses[1]) == "down")
    status, out, err = run_script(EXAMPLES / "group_client.py", path, "100")
    assert status == 0, err
    lines = out.splitlines()
    assert f"{addresses[1]} down" in lines[:-1] or addresses[1] not in out
    assert lines[-1] == "2 members answered 100 calls, 0 failed"

    members[2].interrupt()
    assert members[2].remaining_lines()[-1] == "left"
    assert members[2].wait() == 0, members[2].stderr()
    view_line_where(members[0], lambda s: s.get(addresses[2]) == "left")
