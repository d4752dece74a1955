"""Calls ``whoami`` on the members of a group (see group_member.py): reads
the group's view from its group file, prints it, then makes N idempotent
group calls and says which members answered.

    python group_client.py FILE [N] [PROTOCOL]
"""

import sys

import courier
from courier import Engine, Group, GroupFunction


def main(path: str, calls: int, protocol: str) -> None:
    with Engine(protocol, mode=courier.client) as engine:
        view = Group.view_from_file(engine, path, timeout=5000)
        for member in view.members:
            print(member.address, member.state)
        whoami = GroupFunction(engine, view.live(), "whoami", timeout=10_000, idempotent=True)
        answered: set[str] = set()
        for i in range(calls):
            who, x = whoami(i)
            assert x == i
            answered.add(who)
        stats = whoami.stats()
        print(f"{len(answered)} members answered {stats['succeeded']} calls, {stats['failed']} failed")


if __name__ == "__main__":
    main(
        sys.argv[1],
        int(sys.argv[2]) if len(sys.argv) > 2 else 100,
        sys.argv[3] if len(sys.argv) > 3 else "tcp",
    )
