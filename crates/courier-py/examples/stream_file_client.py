"""Streams a file to the server of ``stream_file_server.py`` and back,
checking its SHA-256 both ways, then shuts that server down.

    python stream_file_client.py tcp://127.0.0.1:PORT FILE

The upload is a client stream (``call.send(chunk)`` for each chunk, then
``call.finish()`` for the server's answer); the download a server stream
(``for chunk in call``, then ``call.finish()``). Leaving a ``with`` block
before ``finish()`` (an exception, Ctrl-C) cancels the stream, and the
server keeps no partial file.
"""

import hashlib
import os
import sys

import courier
from courier import Engine

#: The size of a chunk: each is one stream item.
CHUNK = 64 * 1024


def main(address: str, path: str) -> None:
    protocol = address.split("://", 1)[0]
    name = os.path.basename(path)
    with Engine(protocol, mode=courier.client) as engine:
        server = engine.lookup(address)
        upload = engine.register("upload").on(server)
        download = engine.register("download").on(server)

        sent = hashlib.sha256()
        # `timeout` (milliseconds) bounds the whole stream.
        with upload.stream(name, timeout=60_000) as call, open(path, "rb") as source:
            while chunk := source.read(CHUNK):
                sent.update(chunk)
                call.send(chunk)  # waits while the server has no room for it
            size: int
            stored: str
            size, stored = call.finish()
        if stored != sent.hexdigest():
            sys.exit(f"upload: the server stored sha256 {stored}, not {sent.hexdigest()}")
        print(f"uploaded {size} bytes (sha256 {stored})")

        received = hashlib.sha256()
        got = 0
        with download.stream(name, timeout=60_000) as call:
            for chunk in call:
                received.update(chunk)
                got += len(chunk)
            served: str = call.finish()
        if not served == received.hexdigest() == sent.hexdigest():
            sys.exit(f"download: sha256 {received.hexdigest()}, the server's {served}")
        print(f"downloaded {got} bytes (sha256 {served})")
        server.shutdown()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} ADDRESS FILE")
    main(sys.argv[1], sys.argv[2])
