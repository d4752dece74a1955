"""``python -m courier``: the ``protocols``, ``call``, ``ping`` and
``shutdown`` subcommands of the Rust ``courier`` command, for Python users.

Same spellings, options, output and exit status as the Rust command where
the two can agree: every error is printed as ``courier: <message>`` on
stderr with exit status 1 (a wrong command line too); Ctrl-C exits 130.

The difference is ``call``'s arguments. A Python handler takes pickled
Python values, so ``call`` pickles what the command line says: each ARG is
a string by default (as the Rust command sends strings), a Python literal
with ``--literal`` (``42``, ``'text'``, ``[1, 2]``, ``{'k': b'v'}``), or a
JSON value with ``--json``; ``--kwarg NAME=VALUE`` adds a keyword argument,
its value read the same way. The response is printed as a string if it is
one, not at all if it is None, else as its ``repr()`` (a Python literal)
or, with ``--json``, as JSON. It speaks to Python services (whose handlers
take pickled arguments); the Rust command's ``call`` speaks to Rust ones.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import CourierError, Engine, _native, client
from ._native import Address

#: The Rust command's default for ``--timeout-ms``.
DEFAULT_TIMEOUT_MS = 10_000

EPILOG = """\
Quick start (a Python service: see docs/python.md):
  python -m courier protocols
  python -m courier call tcp://127.0.0.1:PORT hello Matthieu Dorier      # Good bye Matthieu
  python -m courier call tcp://127.0.0.1:PORT add --literal 2 40         # 42
  python -m courier call tcp://127.0.0.1:PORT put --json '{"k": [1, 2]}' --kwarg overwrite=true
  python -m courier ping tcp://127.0.0.1:PORT
  python -m courier ping 'tcp://…,shm://…,mem://…'                      # seq=1 via shm://… (the path taken)
  python -m courier shutdown tcp://127.0.0.1:PORT
"""

CALL_DESCRIPTION = """\
Call RPC at ADDR and print its response.

The ARGS are pickled as the handler's positional arguments, as a Python
caller's arguments are: strings by default; Python literals with --literal
(ast.literal_eval: numbers, 'strings', bytes, tuples, lists, dicts, sets,
True, False, None); JSON values with --json. --kwarg NAME=VALUE adds a
keyword argument, its VALUE read the same way. The response is printed as
the string it is, nothing for None, else its repr() (with --json: as JSON).

The request carries --timeout-ms to the service: its handler sees it as its
deadline (handle.remaining). Put `--` before ARGS that start with '-'.
"""


class UsageError(Exception):
    """A command line that cannot run (printed as ``courier: ...``, exit 1)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are ``courier: <message>`` with exit status
    1, as the Rust command's are (argparse's own are exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"courier: {message}\n")


def _timeout_ms(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of milliseconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: a timeout is 0 (none) or more milliseconds")
    return value


def _provider_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a provider id") from None
    if not 0 <= value <= 65534:
        raise argparse.ArgumentTypeError(f"{value} is not in 0..=65534")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not in 1..")
    return value


def _add_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout-ms", type=_timeout_ms, default=DEFAULT_TIMEOUT_MS, metavar="MS",
        help="give up after this many milliseconds (connecting, and each request); "
        f"0 waits forever (default: {DEFAULT_TIMEOUT_MS})",
    )


def _add_protocol(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--protocol", metavar="P[,P...]",
        help="the protocols this client speaks, e.g. tcp or tcp,shm. Default: the address's "
        "protocol; for an address set (tcp://…,shm://…,mem://…), every protocol of the set "
        "this build has but the in-process ones (the server's own process), so that the "
        "lookup takes the fastest path (shm on the same host). --protocol tcp takes tcp.",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m courier``."""
    parser = _Parser(
        prog="python -m courier",
        description="Call, ping and shut down Courier RPC engines from Python, and list the "
        "protocols this build knows (the Rust `courier` command's subcommands).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"courier {_native.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    commands.add_parser(
        "protocols",
        help="list every protocol this build knows: aliases, plugin, availability",
        description="List every protocol of the protocol table (the built-in one, plus "
        "$COURIER_PROTOCOLS if set): its name, its aliases, the transport plugin that "
        "implements it, how far it reaches, and whether that plugin is built into this "
        "package (\"available\") or not (\"not built in\"). Then the layers, written before "
        "a protocol's name (`chaos+…` is `chaos+tcp`, ...).",
    )

    call = commands.add_parser(
        "call", help="call an RPC on a service and print its response",
        description=CALL_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    call.add_argument("address", metavar="ADDR", help="the service's address, as it printed it")
    call.add_argument("rpc", metavar="RPC", help="the RPC's name")
    call.add_argument(
        "args", metavar="ARGS", nargs="*", default=[], help="the RPC's positional arguments"
    )
    call.add_argument(
        "--provider", type=_provider_id, default=0, metavar="N",
        help="the provider id the RPC is registered at (default: 0)",
    )
    _add_timeout(call)
    _add_protocol(call)
    encoding = call.add_mutually_exclusive_group()
    encoding.add_argument(
        "--literal", "-l", action="store_true",
        help="read each argument as a Python literal (ast.literal_eval)",
    )
    encoding.add_argument(
        "--json", action="store_true",
        help="read each argument as JSON, and print the response as JSON",
    )
    call.add_argument(
        "--kwarg", action="append", default=[], metavar="NAME=VALUE",
        help="a keyword argument (repeat for more); VALUE is read as the ARGS are",
    )

    ping = commands.add_parser(
        "ping", help="measure engine-level round trips to a service (no handler runs)",
        description="Measure engine-level round trips to the service at ADDR (no handler "
        "runs): one line per ping, then a summary. Exits 1 if any ping failed.",
    )
    ping.add_argument("address", metavar="ADDR", help="the service's address")
    ping.add_argument(
        "--count", "-c", type=_count, default=4, metavar="N",
        help="how many pings to send, one after the other (default: 4)",
    )
    _add_timeout(ping)
    _add_protocol(ping)

    shutdown = commands.add_parser(
        "shutdown", help="ask a service to shut down (it must enable remote shutdown)",
        description="Ask the service at ADDR to finalize. It must have called "
        "engine.enable_remote_shutdown(); otherwise it refuses and this exits 1.",
    )
    shutdown.add_argument("address", metavar="ADDR", help="the service's address")
    _add_timeout(shutdown)
    _add_protocol(shutdown)
    return parser


def _out(line: str) -> None:
    print(line, flush=True)


def _protocol_of(address: str) -> str:
    protocol, sep, _ = address.partition("://")
    if not sep or not protocol:
        raise UsageError(
            f"invalid address '{address}': expected '<protocol>://<address>', "
            "e.g. 'tcp://127.0.0.1:7000'"
        )
    return protocol


def _client_protocols(address: str, pinned: str | None) -> str:
    """The protocols a client engine speaks to reach ``address``: ``pinned``
    when given; the address's protocol for one address; for an address
    set, each protocol of its parts that this build has (canonical names,
    in the set's order, once each) but those that reach only within a
    process (the set's ``mem://`` part is the server's own process). A set
    none of whose protocols is usable gives its first part's protocol: the
    lookup then says what is wrong with it."""
    if pinned is not None:
        return pinned
    if "," not in address:
        return _protocol_of(address)
    table, _layers = _native._protocol_table()
    usable = {
        spelling: name
        for name, aliases, _plugin, reach, available in table
        if available and reach != "process"
        for spelling in (name, *aliases)
    }
    spoken: list[str] = []
    for part in address.split(","):
        protocol, sep, _ = part.strip().partition("://")
        canonical = usable.get(protocol) if sep else None
        if canonical is not None and canonical not in spoken:
            spoken.append(canonical)
    if not spoken:
        return _protocol_of(address.split(",", 1)[0].strip())
    return ",".join(spoken)


def _connect(address: str, timeout_ms: int, pinned: str | None = None) -> tuple[Engine, Address]:
    """A client engine for ``address`` (speaking ``_client_protocols``), and
    the looked-up address."""
    # The command names the protocol from the address itself: a
    # COURIER_PROTOCOL_OVERRIDE meant for scripts must not change it.
    os.environ.pop(_native.PROTOCOL_OVERRIDE_ENV, None)
    config: dict[str, Any] = {}
    if timeout_ms > 0:
        # Connecting, and every exchange that sets no timeout of its own
        # (shutdown); 0 keeps the engine's defaults: connect within 5 s,
        # wait for answers as long as it takes.
        config["timeouts"] = {"connect_ms": timeout_ms, "call_ms": timeout_ms}
    protocols = _client_protocols(address, pinned)
    if "," in protocols:
        # No in-process path: nothing in another process can take it.
        config["paths"] = {"in_process": False}
    engine = Engine(protocols, mode=client, config=config)
    try:
        return engine, engine.lookup(address)
    except BaseException:
        engine.finalize()
        raise


def protocols() -> int:
    """``protocols``: the Rust command's table, row for row."""
    table, layers = _native._protocol_table()

    def status(available: bool) -> str:
        return "available" if available else "not built in"

    rows = [
        [name, ", ".join(aliases) if aliases else "-", plugin, reach or "-", status(available)]
        for name, aliases, plugin, reach, available in table
    ]
    rows += [[f"{name}+…", "-", f"{plugin} (layer)", "-", status(available)]
             for name, plugin, available in layers]
    for line in _table(["protocol", "aliases", "plugin", "reach", "status"], rows):
        _out(line)
    return 0


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table with every column as wide as its widest cell (the
    Rust command's ``Table``, left-aligned)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "|" + "".join(f" {c.ljust(w)} |" for c, w in zip(cells, widths))

    rule = "|" + "".join("-" * (w + 1) + "-|" for w in widths)
    return [line(header), rule, *(line(r) for r in rows)]


def _reader(args: argparse.Namespace) -> tuple[str, Callable[[str], object]]:
    """How ARGS are read: (a name for errors, the function)."""
    if args.json:
        return "JSON", json.loads
    if args.literal:
        return "a Python literal", ast.literal_eval
    return "a string", str


def _call_arguments(args: argparse.Namespace) -> tuple[list[Any], dict[str, Any]]:
    what, read = _reader(args)

    def value(text: str, where: str) -> object:
        try:
            return read(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
            raise UsageError(f"{where} {text!r} is not {what}: {e}") from None

    positional = [value(a, "argument") for a in args.args]
    keywords: dict[str, Any] = {}
    for item in args.kwarg:
        name, sep, text = item.partition("=")
        if not sep or not name.isidentifier():
            raise UsageError(f"--kwarg {item!r}: expected NAME=VALUE, NAME an identifier")
        if name in ("timeout", "blocking"):
            raise UsageError(
                f"--kwarg {name}: a call's own keyword; pass that argument positionally"
            )
        keywords[name] = value(text, f"--kwarg {name}:")
    return positional, keywords


def _render(response: object, as_json: bool) -> str | None:
    if as_json:
        return json.dumps(response, ensure_ascii=False, default=repr)
    if response is None:
        return None
    if isinstance(response, str):
        return response
    return repr(response)


def call(args: argparse.Namespace) -> int:
    """``call``: one call, its response on stdout."""
    positional, keywords = _call_arguments(args)
    engine, address = _connect(args.address, args.timeout_ms, args.protocol)
    with engine:
        rpc = engine.register(args.rpc).on(address, args.provider)
        response = rpc(*positional, timeout=args.timeout_ms, **keywords)
    text = _render(response, args.json)
    if text is not None:
        _out(text)
    return 0


def ping(args: argparse.Namespace) -> int:
    """``ping``: ``count`` engine-level round trips, then a summary; fails
    with the last error when any ping failed."""
    engine, address = _connect(args.address, args.timeout_ms, args.protocol)
    count: int = args.count
    timeout = args.timeout_ms or None
    times: list[float] = []
    last_error: CourierError | None = None
    with engine:
        _out(f"PING {address}: {count} engine-level round trips")
        for seq in range(1, count + 1):
            try:
                rtt = address.ping(timeout)
            except CourierError as e:
                _out(f"seq={seq} error: {e}")
                last_error = e
                continue
            # The path the connection took (the part of a set, or the
            # address): it may change if the connection is opened again.
            via = address.path or "(no live connection)"
            _out(f"seq={seq} via {via} time={rtt * 1e6:.1f} µs")
            times.append(rtt)
    summary = f"--- {address}: {count} sent, {len(times)} answered"
    if times:
        low, avg, high = min(times), sum(times) / len(times), max(times)
        summary += f", round trip min/avg/max = {low * 1e6:.1f}/{avg * 1e6:.1f}/{high * 1e6:.1f} µs"
    _out(summary)
    if last_error is not None:
        lost = count - len(times)
        raise CourierError(f"{lost} of {count} pings to {address} failed: {last_error}")
    return 0


def shutdown(args: argparse.Namespace) -> int:
    """``shutdown``: asks the service to finalize."""
    engine, address = _connect(args.address, args.timeout_ms, args.protocol)
    with engine:
        address.shutdown()
    _out(f"shutdown requested: {address}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``python -m courier`` on ``argv`` (default: the process's
    arguments); returns the exit status."""
    parser = build_parser()
    # ARGS may come after options too (`call ADDR RPC --literal 1 2`), as
    # with the Rust command: argparse leaves those over, in order.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "call":
        if "--" in extra:
            at = extra.index("--")
            extra = extra[:at] + extra[at + 1:]
            options = [a for a in extra[:at] if a.startswith("-")]
        else:
            options = [a for a in extra if a.startswith("-")]
        if options:
            parser.error(f"unrecognized arguments: {' '.join(options)}")
        args.args = [*args.args, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "protocols": lambda _: protocols(),
        "call": call,
        "ping": ping,
        "shutdown": shutdown,
    }
    try:
        return commands[args.command](args)
    except (CourierError, UsageError) as e:
        print(f"courier: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"courier: {args.command} interrupted", file=sys.stderr, flush=True)
        return 130
