"""Calls an RPC whose handler never answers, and prints when it is in the
call (for the Ctrl-C test): usage blocked_client.py ADDRESS."""

import sys

from pymargo.core import Engine
import pymargo

with Engine("tcp", mode=pymargo.client) as engine:
    hold = engine.register("hold")
    address = engine.lookup(sys.argv[1])
    request = hold.on(address)(blocking=False)
    print("calling", flush=True)
    request.wait()
