#!/usr/bin/env python3
"""A hostile peer with raw sockets, against a running `courier serve`.

    courier serve tcp --config '{"timeouts": {"hello_ms": 2000}, "max_connections": 200}' &
    python3 tests/hostile_peer.py tcp://127.0.0.1:PORT       # or unix:///path

Each attack runs while a well-behaved probe (a raw connection that says
Hello and sends Pings) keeps checking that the server still answers; the
script prints one line per attack and exits non-zero if the probe ever goes
unanswered (10 s per Ping) or the server keeps a connection it should close.
Standard library only. The attacks:

  garbage    random bytes, an HTTP request, a 4 GiB length prefix
  slowloris  preamble and half a Hello frame, then silence (closed after
             timeouts.hello_ms)
  silent     150 connections that send nothing (all closed after
             timeouts.hello_ms; the probe is served meanwhile)
  overflow   connections past max_connections (closed at once)
  flood      50,000 requests to an unknown RPC, never reading the answers
  oneway     200,000 one-way requests
"""
import os
import socket
import struct
import sys
import time

PREAMBLE = b"CRR\x01"
HELLO, REQUEST, PING, PONG = 1, 2, 6, 7


def header(kind, seq=0, rpc=0, flags=0):
    return struct.pack("<BBBBHHQQ", 1, kind, flags, 0, 0, 0, rpc, seq)


def framed(msg):
    return struct.pack("<I", len(msg)) + msg


def connect(address):
    proto, rest = address.split("://", 1)
    if proto == "tcp":
        host, port = rest.rsplit(":", 1)
        s = socket.create_connection((host.strip("[]"), int(port)))
    elif proto == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(rest)
    else:
        sys.exit(f"only tcp:// and unix:// addresses, not {address}")
    s.settimeout(10)
    return s


def read_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


class Probe:
    """A well-behaved peer: Hello once, then Ping / Pong."""

    def __init__(self, address):
        self.s = connect(address)
        self.s.sendall(PREAMBLE + framed(header(HELLO)))
        self.seq = 0

    def ping(self):
        self.seq += 1
        t = time.monotonic()
        self.s.sendall(framed(header(PING, self.seq)))
        if self.seq == 1:
            # The server's preamble comes with its first message.
            assert read_exact(self.s, 4) == PREAMBLE
        while True:
            (n,) = struct.unpack("<I", read_exact(self.s, 4))
            msg = read_exact(self.s, n)
            if msg[1] == PONG and struct.unpack("<Q", msg[16:24])[0] == self.seq:
                return (time.monotonic() - t) * 1e6


def closed_by_server(s, within):
    s.settimeout(within)
    try:
        while s.recv(65536):
            pass
        return True
    except (ConnectionError, OSError) as e:
        return not isinstance(e, socket.timeout)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    address = sys.argv[1]
    probe = Probe(address)
    report = lambda what, ok, extra="": print(
        f"{what:10} {'ok  ' if ok else 'FAIL'} probe ping {probe.ping():8.0f} us {extra}"
    )
    failures = 0

    for name, data in [
        ("random", os.urandom(4096)),
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("4GiB", PREAMBLE + b"\xff\xff\xff\xff"),
    ]:
        s = connect(address)
        s.sendall(data)
        ok = closed_by_server(s, 10)
        failures += not ok
        report("garbage", ok, name)

    s = connect(address)
    s.sendall(PREAMBLE + framed(header(HELLO))[:14])
    ok = closed_by_server(s, 60)
    failures += not ok
    report("slowloris", ok, "closed after the Hello timeout" if ok else "still open")

    silent = [connect(address) for _ in range(150)]
    probe.ping()
    ok = all(closed_by_server(s, 60) for s in silent)
    failures += not ok
    report("silent", ok, "150 silent connections closed")

    extra, refused = [], 0
    for _ in range(2000):
        try:
            s = connect(address)
        except OSError:
            refused += 1
            break
        extra.append(s)
    # Past max_connections, new ones are closed at once; the earlier ones
    # stay until the Hello timeout. Count those closed within a second.
    closed = sum(closed_by_server(s, 0.2) for s in extra[-50:])
    report("overflow", True, f"{len(extra)} opened, {closed} of the last 50 closed quickly")
    for s in extra:
        s.close()

    flood = connect(address)
    flood.sendall(PREAMBLE + framed(header(HELLO)))
    batch = b"".join(framed(header(REQUEST, i, rpc=0xDEAD)) for i in range(1000))
    flood.settimeout(30)
    sent = 0
    try:
        for _ in range(50):
            flood.sendall(batch)
            sent += 1000
    except OSError:
        pass
    report("flood", True, f"{sent} requests written, no response read")
    flood.close()

    oneway = connect(address)
    oneway.sendall(PREAMBLE + framed(header(HELLO)))
    batch = b"".join(framed(header(REQUEST, i, rpc=0xBEEF, flags=1)) for i in range(1000))
    for _ in range(200):
        oneway.sendall(batch)
    report("oneway", True, "200000 one-way requests written")
    oneway.close()

    print(f"{failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
