"""A server whose handler raises (PyMargo prints it and leaves the caller
hanging; Courier raises it at the caller)."""

from pymargo.core import Engine


def divide(handle, a, b):
    handle.respond(a / b)


with Engine("tcp") as engine:
    engine.register("divide", divide)
    print(f"Service running at {engine.address}", flush=True)
    engine.enable_remote_shutdown()
    engine.wait_for_finalize()
