"""A provider: a class whose ``@remote`` methods are RPCs, registered at a
provider id under a service name, served by one engine and called from
another in the same process.

    python provider.py [PROTOCOL]
"""

import sys

import courier
from courier import Engine, Handle, provider, remote


@provider(service_name="kv")
class KeyValueStore:
    """Its RPCs are named ``kv_put`` and ``kv_get`` (service name, method)."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}

    @remote()
    def put(self, handle: Handle, key: str, value: bytes) -> None:
        self._data[key] = value
        handle.respond(len(self._data))

    @remote()
    def get(self, handle: Handle, key: str) -> None:
        # A handler that raises: its caller gets the exception, as a
        # courier.RemoteError that is also a KeyError.
        handle.respond(self._data[key])


def main(protocol: str) -> None:
    # The server gets a progress thread: this thread waits in the client
    # engine, so the server's handlers need a thread of their own.
    with (
        Engine(protocol, use_progress_thread=True) as server,
        Engine(protocol, mode=courier.client) as client,
    ):
        rpcs = server.register_provider(KeyValueStore(), provider_id=3)
        print("registered:", ", ".join(sorted(rpcs)))

        address = client.lookup(str(server.address))
        put = client.register("kv_put").on(address, provider_id=3)
        get = client.register("kv_get").on(address, provider_id=3)
        count: int = put("greeting", b"hello")
        print(f"stored {count} key(s)")

        # A non-blocking call returns a Request at once.
        request = get("greeting", blocking=False)
        value: bytes = request.wait()
        print(f"greeting = {value!r}")

        try:
            get("missing")
        except KeyError as e:  # a courier.RemoteError that is also a KeyError
            assert isinstance(e, courier.RemoteError)
            print(f"missing: the handler raised {e.type_name}: {e.remote_message}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tcp")
