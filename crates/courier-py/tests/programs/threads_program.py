"""Where handlers run, seen from a whole process (for test_threads.py):
usage threads_program.py SCENARIO [MODE], MODE one of default (PyMargo's
defaults), progress (use_progress_thread=True), rpc (num_rpc_threads=2).

Scenarios:
  oneway-sleep  prints "sending", sends a one-way RPC to its own address,
                then sleeps in time.sleep; the handler prints "handler ran
                on the main thread" or "... on another thread" and ends the
                process (status 0).
  oneway-block  the same, the main thread blocked on a threading.Event
                that nothing sets.
  call          calls its own address (no timeout) an RPC whose handler
                blocks for good, after printing "calling" (for Ctrl-C).
  serve         registers a handler and waits in wait_for_finalize after
                printing "serving" (for Ctrl-C).
"""

import os
import sys
import threading
import time

from pymargo.core import Engine

MODES = {
    "default": {},
    "progress": {"use_progress_thread": True},
    "rpc": {"num_rpc_threads": 2},
}

# The longest any scenario waits: the test has failed by then anyway.
GUARD_S = 120


MAIN = threading.get_native_id()


def note(handle):
    where = "the main thread" if threading.get_native_id() == MAIN else "another thread"
    print(f"handler ran on {where}", flush=True)
    # The process's threads are all busy elsewhere: end it from here.
    os._exit(0)


never = threading.Event()


def block(handle):
    never.wait()


def main():
    scenario = sys.argv[1]
    mode = MODES[sys.argv[2] if len(sys.argv) > 2 else "default"]
    with Engine("tcp", **mode) as engine:
        if scenario.startswith("oneway"):
            f = engine.register("note", note, disable_response=True)
            print("sending", flush=True)
            f.on(engine.address)()
            if scenario == "oneway-sleep":
                time.sleep(GUARD_S)
            else:
                never.wait(GUARD_S)
            print("the handler never ran", flush=True)
            sys.exit(1)
        elif scenario == "call":
            f = engine.register("block", block)
            print("calling", flush=True)
            f.on(engine.address)()
        elif scenario == "serve":
            engine.register("block", block)
            print("serving", flush=True)
            engine.wait_for_finalize()
        else:
            raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    main()
