#!/usr/bin/env python3
"""Writes the committed seed corpus (fuzz/corpus/<target>/): small valid
inputs of each target's layout, so a short run starts from real frames.
Rerun after a change of the wire format: python3 fuzz/make_seeds.py"""
import os, struct

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = dict(hello=1, request=2, response=3, error=4, shutdown=5, ping=6, pong=7)

def rpc_id(name):
    h = 0xcbf29ce484222325
    for b in name.encode():
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h

def header(kind, rpc="", seq=1, flags=0, status=0, provider=0):
    return struct.pack("<BBBBHHQQ", 1, KINDS[kind], flags, status, provider, 0,
                       rpc_id(rpc) if rpc else 0, seq)

def prefixed(msg):
    return struct.pack("<I", len(msg)) + msg

def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

frames = {
    "hello": header("hello") + b"unix:///tmp/x.sock",
    "request_echo": header("request", "echo", 7) + b"payload",
    "request_typed": header("request", "typed", 8) + b"\x05hello",
    "oneway": header("request", "oneway", 9, flags=1) + b"x",
    "error": header("error", "echo", 3, status=2) + b"why",
    "ping": header("ping", seq=4),
    "shutdown": header("shutdown", seq=5),
}
for name, f in frames.items():
    put("frame_decode", name, f)

stream = b"CRR\x01" + b"".join(prefixed(f) for f in frames.values())
put("deframer", "stream_big_max", b"\xff\x07" + stream)
put("deframer", "stream_small_max", b"\x20\x03" + stream)
put("deframer", "bad_preamble", b"\xff\x01GET / HTTP/1.1\r\n\r\n")
put("deframer", "huge_prefix", b"\xff\x01CRR\x01\xff\xff\xff\xff")
put("stream_receiver", "stream", stream)
put("stream_receiver", "half_frame", b"CRR\x01" + struct.pack("<I", 24) + b"\x01\x02")

def dispatch(*msgs):
    return b"".join(struct.pack("<H", len(m)) + m for m in msgs)

for name in ("request_echo", "request_typed", "oneway", "error", "ping", "shutdown"):
    put("engine_dispatch", name, dispatch(frames[name]))
put("engine_dispatch", "fail_and_silent",
    dispatch(header("request", "fail", 10), header("request", "silent", 11),
             header("request", "nope", 12), header("request", "oneway", 13)))
put("engine_dispatch", "second_hello", dispatch(frames["hello"]))
