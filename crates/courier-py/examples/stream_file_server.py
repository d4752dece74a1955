"""Streams files between two processes: the server of
``stream_file_client.py``. Serves two stream RPCs until a client asks it
to shut down.

    python stream_file_server.py [PROTOCOL]    # Service running at tcp://127.0.0.1:PORT

- ``upload(name)``, a client stream: the caller sends a file's chunks; the
  handler writes them under ``name`` in a directory of the server's own
  and answers the file's size and SHA-256.
- ``download(name)``, a server stream: a generator handler sends a stored
  file back in chunks, and returns (answers) its SHA-256.

Flow control runs both ways: a writer slower than its reader holds the
reader's ``send`` (or ``yield``), so neither side buffers more than the
stream's window (4 MiB by default) whatever the file's size.
"""

import hashlib
import os
import sys
import tempfile
from collections.abc import Generator

from courier import Engine, Handle

#: The size of a chunk: each is one stream item.
CHUNK = 64 * 1024


class Store:
    """Files kept in ``directory``, by name."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def path(self, name: str) -> str:
        if not name or name.startswith(".") or "/" in name or os.sep in name:
            raise ValueError(f"not a plain file name: {name!r}")
        return os.path.join(self.directory, name)

    def upload(self, handle: Handle, name: str) -> None:
        """Stores the caller's chunks as ``name``. A caller that aborts its
        stream, or gives up, leaves no file: reading its items raises."""
        path = self.path(name)
        partial = path + ".part"
        digest = hashlib.sha256()
        size = 0
        out = open(partial, "wb")
        try:
            with out:
                for chunk in handle.items():
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
            os.replace(partial, path)
        except BaseException:
            os.unlink(partial)
            raise
        print(f"stored {name}: {size} bytes", flush=True)
        handle.respond((size, digest.hexdigest()))

    def download(self, handle: Handle, name: str) -> Generator[bytes, None, str]:
        """Sends the file ``name`` in chunks; its SHA-256 is the answer. The
        next chunk is read only once the caller has room for it."""
        digest = hashlib.sha256()
        with open(self.path(name), "rb") as source:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                yield chunk
        return digest.hexdigest()


def main(protocol: str) -> None:
    with tempfile.TemporaryDirectory(prefix="courier-stream-files-") as directory, \
            Engine(protocol) as engine:
        store = Store(directory)
        engine.register("upload", store.upload)
        engine.register("download", store.download)
        print(f"Service running at {engine.address}", flush=True)
        engine.enable_remote_shutdown()
        engine.wait_for_finalize()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tcp")
