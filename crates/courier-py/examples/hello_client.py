"""The PyMargo tutorial's client, with type hints: calls ``hello`` on the
server of ``hello_server.py``, then shuts that server down.

    python hello_client.py tcp://127.0.0.1:PORT    # Good bye Matthieu
"""

import sys

import courier
from courier import Engine


def main(address: str) -> None:
    # A client engine speaks the protocol its server's address names.
    protocol = address.split("://", 1)[0]
    with Engine(protocol, mode=courier.client) as engine:
        hello = engine.register("hello")
        server = engine.lookup(address)
        # Arguments travel pickled; `timeout` (milliseconds) is the call's
        # own keyword, and becomes the handler's deadline.
        response: str = hello.on(server)("Matthieu", lastname="Dorier", timeout=10_000)
        print(response)
        server.shutdown()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} ADDRESS")
    main(sys.argv[1])
