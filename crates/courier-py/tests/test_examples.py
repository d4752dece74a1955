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
