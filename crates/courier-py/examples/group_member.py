"""A member of a group, found through a group file: serves ``whoami`` and
prints its view of the group each time it changes, until Ctrl-C, when it
leaves the group.

    python group_member.py FILE [PROTOCOL]   # Service running at tcp://127.0.0.1:PORT

The first member creates the group and FILE; the others join through the
members FILE lists (docs/python.md, "Groups"). Run three, kill one with
``kill -9``: the others print it ``down``; Ctrl-C one: ``left``.
"""

import sys

from courier import Engine, Group, Handle, View

#: Faster than the defaults (a death is known in about 1.5 s instead of 5).
OPTIONS = {"probe_period_ms": 200, "probe_timeout_ms": 100, "suspect_to_down_ms": 1000}


def describe(view: View) -> str:
    """One line: the version, then each member and its state."""
    members = " ".join(f"{m.address}={m.state}" for m in view.members)
    return f"view {view.version}: {members}"


def main(path: str, protocol: str) -> None:
    with Engine(protocol) as engine:
        me = str(engine.address)

        def whoami(handle: Handle, x: int) -> None:
            handle.respond((me, x))

        engine.register("whoami", whoami)
        group = Group.open(engine, path, OPTIONS)
        print(f"Service running at {group.address}", flush=True)
        view = group.view()
        try:
            while True:
                print(describe(view), flush=True)
                # The membership and the handlers run on the engine's own
                # thread; this one only waits for the view to change.
                view = group.wait_for_change(view.version)
        except KeyboardInterrupt:
            group.leave()
            print("left", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "tcp")
