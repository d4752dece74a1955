"""A server listening on several protocols (tests/test_address_sets.py):
`set_server.py PROTOCOLS [CONFIG_JSON]` prints its address set, answers
`hello`, `caller_path` (the path its caller's connection came by, as
the server sees it) and `hold` (prints "held", never answers), and waits
until shut down remotely."""

import json
import sys
import threading

from courier import Engine

protocols = sys.argv[1]
config = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None

with Engine(protocols, config=config) as engine:
    engine.register("hello", lambda handle, name: handle.respond(f"Hello {name}"))
    engine.register("caller_path", lambda handle: handle.respond(handle.address.path))

    def hold(handle):
        print("held", flush=True)
        threading.Event().wait()

    engine.register("hold", hold)
    # Before the address is out: a client may shut it down at once.
    engine.enable_remote_shutdown()
    print(f"protocol {engine.protocol}", flush=True)
    print(f"Service running at {engine.address}", flush=True)
    engine.wait_for_finalize()
