"""The service `python -m courier` is tested against (tests/test_cli.py):
RPCs that show what a call carried. Shut down remotely."""

from courier import Engine

with Engine("tcp") as engine:

    def hello(handle, firstname, lastname):
        handle.respond(f"Good bye {firstname}")

    def echo(handle, *args, **kwargs):
        handle.respond((args, kwargs))

    def nothing(handle):
        handle.respond(None)

    def divide(handle, a, b):
        handle.respond(a / b)

    def remaining(handle):
        handle.respond(handle.remaining)

    def until_cancelled(handle):
        # Waits (serving other requests meanwhile) until its caller gives up.
        print("until_cancelled started", flush=True)
        while not handle.is_cancelled():
            engine.sleep(0.01)
        print(f"until_cancelled ended: {handle.cancel_reason}", flush=True)

    for name, func in [("hello", hello), ("echo", echo), ("nothing", nothing),
                       ("divide", divide), ("remaining", remaining),
                       ("until_cancelled", until_cancelled)]:
        engine.register(name, func)
    engine.register("whoami", lambda handle: handle.respond(f"provider {handle.provider_id}"), 5)
    print(f"Service running at {engine.address}", flush=True)
    engine.enable_remote_shutdown()
    engine.wait_for_finalize()
