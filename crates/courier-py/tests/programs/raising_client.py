"""Calls divide(1, 0) and reports what was raised."""

import sys

from pymargo.core import Engine
import pymargo

with Engine("tcp", mode=pymargo.client) as engine:
    divide = engine.register("divide")
    address = engine.lookup(sys.argv[1])
    assert divide.on(address)(6, 3) == 2.0
    try:
        divide.on(address)(1, 0)
    except ZeroDivisionError as e:
        print(f"raised {type(e).__name__}: {e.remote_message}")
    address.shutdown()
