"""Serves "hold" (keeps its handles, never answers) and the seed's "hello"; prints its
address and, for each request, the RPC's name."""

from pymargo.core import Engine

held = []


def hold(handle):
    held.append(handle)
    print("held", flush=True)


def hello(handle, firstname, lastname):
    handle.respond(f"Good bye {firstname}")


with Engine("tcp") as engine:
    engine.register("hold", hold)
    engine.register("hello", hello)
    print(f"Service running at {engine.address}", flush=True)
    engine.enable_remote_shutdown()
    engine.wait_for_finalize()
