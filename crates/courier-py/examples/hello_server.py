"""The PyMargo tutorial's server, with type hints: serves ``hello`` until a
client asks it to shut down.

    python hello_server.py [PROTOCOL]    # Service running at tcp://127.0.0.1:PORT

PROTOCOL is ``tcp`` (the default), ``unix``, ``quic``, ``shm`` or an alias
such as ``ofi+tcp`` (``python -m courier protocols`` lists them).
"""

import sys

from courier import Engine, Handle


def hello(handle: Handle, firstname: str, lastname: str) -> None:
    """The handler: its first argument is the request's handle, the others
    are the caller's arguments (unpickled)."""
    print(f"Hello {firstname} {lastname}!", flush=True)
    handle.respond(f"Good bye {firstname}")


def main(protocol: str) -> None:
    with Engine(protocol) as engine:
        engine.register("hello", hello)
        print(f"Service running at {engine.address}", flush=True)
        engine.enable_remote_shutdown()
        # Handlers run on the engine's own thread, whatever this one does;
        # this one only waits for the shutdown.
        engine.wait_for_finalize()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tcp")
