"""Courier's exception classes, and how a handler's exception travels.

A handler that raises sends its caller the text ``Python exception
<type>: <message>`` (an engine error frame, which Rust clients read as a
plain message too). The Python caller raises ``RemoteError`` with the type
name and message as attributes; when the type is a builtin exception
(``ValueError``, ``KeyError``, ...) the raised object is also an instance
of that builtin, so ``except ValueError`` works on the caller as it would
have on the server.
"""

import builtins
import logging
import pickle
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, cast

__all__ = [
    "CourierError", "TimeoutError", "RemoteError", "BulkError", "BulkTimeoutError",
    "CancelledError", "DeadlineExceededError", "BusyError", "SerializationError",
    "StreamAbortedError",
]

_log = logging.getLogger("courier")

PREFIX = "Python exception "


class CourierError(RuntimeError):
    """Base class of every error Courier raises (PyMargo's MargoException).

    A RuntimeError, as PyMargo's errors were.

    ``reach`` says whether the request that failed can have reached its
    handler: ``"not_reached"`` (never sent, or refused before any handler
    saw it), ``"unknown"`` (it may have run: a timeout, a cancellation, a
    connection lost after sending), ``"reached"`` (the handler ran: it
    raised, or finished without responding), or None for an error that is
    not about a request the engine sent. ``is_retry_safe()`` reads it.
    """

    reach: Literal["not_reached", "unknown", "reached"] | None = None

    def is_retry_safe(self, idempotent: bool = False) -> bool:
        """Whether sending the failed request again is safe: always when it
        cannot have reached its handler, otherwise only if the RPC is
        ``idempotent`` (running it twice does no harm; the caller knows).
        Courier never retries by itself."""
        if self.reach == "not_reached":
            return True
        return bool(idempotent) and self.reach is not None


class TimeoutError(CourierError, builtins.TimeoutError):
    """A call got no response within its timeout, or within the deadline
    it inherited from the request whose handler made it (also a builtin
    TimeoutError). The server was told; its handler may have started."""


class DeadlineExceededError(TimeoutError):
    """The call's deadline had passed before it was sent (the budget a
    handler's call inherited was spent): nothing was sent. Also a
    ``courier.TimeoutError`` and a builtin ``TimeoutError``."""

    def __init__(self, message: str, rpc: str | None = None, address: str | None = None) -> None:
        super().__init__(message)
        self.rpc = rpc
        self.address = address


class CancelledError(CourierError):
    """The call was cancelled: by ``Request.cancel()``, or because the
    request whose handler made it was cancelled by its own caller (or its
    deadline passed). The server was told; its handler may have started."""

    def __init__(self, message: str, rpc: str | None = None, address: str | None = None) -> None:
        super().__init__(message)
        self.rpc = rpc
        self.address = address


class StreamAbortedError(CourierError):
    """The caller aborted its request stream (``StreamCall.abort(message)``):
    what a handler's next read of its items raises, after the items sent
    before. ``message`` is the caller's; the handler may still answer."""

    def __init__(
        self, text: str, rpc: str | None = None, address: str | None = None,
        message: str | None = None,
    ) -> None:
        super().__init__(text)
        self.rpc = rpc
        self.address = address
        self.message = message


class BusyError(CourierError):
    """The server refused the request before any handler saw it (too many
    requests in flight on the connection): sending it again later is safe.
    ``reason`` is the server's word."""

    def __init__(
        self, message: str, rpc: str | None = None, address: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.rpc = rpc
        self.address = address
        self.reason = reason


class RemoteError(CourierError):
    """The remote handler failed: it raised (``type_name`` and
    ``remote_message`` say what), or a Rust handler returned an error
    (``type_name`` is None)."""

    def __init__(
        self, message: str, rpc: str | None = None, address: str | None = None,
        type_name: str | None = None, remote_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.rpc = rpc
        self.address = address
        self.type_name = type_name
        self.remote_message = remote_message


class BulkError(CourierError):
    """A bulk transfer failed or was refused, or a bulk handle cannot be
    made: ``reason`` says why (the peer refused it: no such region, it was
    dropped, a forged or stale key, a push into a read-only region, a range
    past its end; or this side's arguments are wrong), ``address`` is the
    peer that refused, if one did."""

    def __init__(self, message: str, address: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.address = address
        self.reason = message if reason is None else reason


class BulkTimeoutError(BulkError, TimeoutError):
    """A bulk transfer did not finish within its timeout (also a
    ``courier.TimeoutError`` and a builtin ``TimeoutError``)."""

    def __init__(self, message: str, address: str | None = None) -> None:
        super().__init__(message, address, "timed out")


class SerializationError(CourierError, pickle.PicklingError, builtins.TypeError):
    """A call's arguments, a handler's response or a stream item cannot be
    pickled: nothing was sent. ``what`` is ``"arguments"``, ``"response"``
    or ``"item"`` (a stream's item: the stream goes on),
    ``rpc`` the RPC, ``type_name`` the type of the value pickle refused and
    ``path`` where it is (``args[0]``, ``kwargs['name']``, ``value``, and
    ``[i]``, ``['key']``, ``.attr`` inside them). The original error is its
    ``__cause__``. Also a ``pickle.PicklingError`` and a ``TypeError``, the
    errors pickle raises itself, so code that caught those still does.

    At the caller it is raised by the call (``reach`` is ``"not_reached"``:
    the handler never runs). In a handler, ``respond()`` raises it; the
    caller then gets it as a ``RemoteError`` whose ``type_name`` is
    ``courier.SerializationError``, also when the handler catches it and
    returns without responding."""

    def __init__(
        self, message: str, what: Literal["arguments", "response", "item"] | None = None,
        rpc: str | None = None, type_name: str | None = None, path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.what = what
        self.rpc = rpc
        self.type_name = type_name
        self.path = path


for _cls in (CourierError, TimeoutError, RemoteError, BulkError, BulkTimeoutError,
             DeadlineExceededError, CancelledError, BusyError, SerializationError,
             StreamAbortedError):
    _cls.__module__ = "courier"

_TYPE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
_mixed: dict[str, type[RemoteError]] = {}


def _remote_class(type_name: str | None) -> type[RemoteError]:
    """RemoteError, mixed with the builtin exception class of that name."""
    if type_name is None or "." in type_name:
        return RemoteError
    if type_name in _mixed:
        return _mixed[type_name]
    base = getattr(builtins, type_name, None)
    cls: type[RemoteError] = RemoteError
    if isinstance(base, type) and issubclass(base, Exception) and base is not Exception:
        try:
            cls = cast(type[RemoteError],
                       type("Remote" + type_name, (RemoteError, base), {"__module__": "courier"}))
            cls("probe")
        except TypeError:
            cls = RemoteError
    _mixed[type_name] = cls
    return cls


def _split(message: str) -> tuple[str | None, str]:
    """(type name, message) from ``Python exception T: msg``, else (None, message)."""
    if not message.startswith(PREFIX):
        return None, message
    rest = message[len(PREFIX):]
    type_name, sep, text = rest.partition(": ")
    if not _TYPE.match(type_name):
        return None, message
    return type_name, text if sep else ""


def _remote_error(text: str, rpc: str, address: str, message: str) -> RemoteError:
    type_name, remote_message = _split(message)
    if type_name is None:
        summary = f"RPC {rpc!r} failed at {address}: {message}"
    else:
        summary = f"{type_name}: {remote_message} (raised by the handler of RPC {rpc!r} at {address})"
    cls = _remote_class(type_name)
    try:
        return cls(summary, rpc, address, type_name, remote_message)
    except TypeError:
        return RemoteError(summary, rpc, address, type_name, remote_message)


def _timeout_error(text: str) -> TimeoutError:
    return TimeoutError(text)


def _deadline_exceeded_error(text: str, rpc: str, address: str) -> DeadlineExceededError:
    return DeadlineExceededError(text, rpc, address)


def _cancelled_error(text: str, rpc: str, address: str) -> CancelledError:
    return CancelledError(text, rpc, address)


def _stream_aborted_error(text: str, rpc: str, address: str, message: str) -> StreamAbortedError:
    return StreamAbortedError(text, rpc, address, message)


def _busy_error(text: str, rpc: str, address: str, reason: str) -> BusyError:
    return BusyError(text, rpc, address, reason)


def _bulk_error(text: str, address: str | None, reason: str) -> BulkError:
    return BulkError(text, address, reason)


def _bulk_timeout_error(text: str, address: str | None) -> BulkTimeoutError:
    return BulkTimeoutError(text, address)


def _courier_error(text: str) -> CourierError:
    return CourierError(text)


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


def _describe_handler_error(rpc: str, exc: BaseException) -> str:
    """The text sent to the caller of a handler that raised ``exc``; the
    traceback goes to the ``courier`` logger (stderr by default)."""
    _log.warning("the handler of RPC %r raised; its caller gets the exception", rpc,
                 exc_info=(type(exc), exc, exc.__traceback__))
    text = str(exc)
    name = _type_name(exc)
    return f"{PREFIX}{name}: {text}" if text else f"{PREFIX}{name}"


# How deep, and how wide, `_unpicklable` looks for the value pickle refuses.
_SEARCH_DEPTH = 8
_SEARCH_WIDTH = 1000


def _picklable(value: object) -> bool:
    try:
        pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    except Exception:
        return False
    return True


def _children(value: object, path: str) -> Iterable[tuple[str, object]]:
    # The casts say what the exact-type tests below establish (mypy does
    # not narrow on `type(value) in (...)`).
    kind = type(value)
    if kind in (tuple, list):
        items = cast("tuple[object, ...] | list[object]", value)
        return ((f"{path}[{i}]", v) for i, v in enumerate(items))
    if kind is dict:
        mapping = cast("dict[object, object]", value)
        return ((f"{path}[{k!r}]", v) for k, v in mapping.items())
    if kind in (set, frozenset):
        members = cast("set[object] | frozenset[object]", value)
        return ((f"{path} (an item)", v) for v in members)
    attrs = getattr(value, "__dict__", None)
    if type(attrs) is dict:
        return ((f"{path}.{k}", v) for k, v in attrs.items())
    return ()


def _unpicklable(value: object, path: str, depth: int = 0) -> tuple[str, object]:
    """(path, value) of the innermost value under ``value`` that pickle
    refuses (``value`` itself when none of its parts is to blame)."""
    if depth < _SEARCH_DEPTH:
        for i, (child_path, child) in enumerate(_children(value, path)):
            if i >= _SEARCH_WIDTH:
                break
            if not _picklable(child):
                return _unpicklable(child, child_path, depth + 1)
    return path, value


def _describe_type(value: object) -> tuple[str, str]:
    cls = type(value)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    label = getattr(value, "__qualname__", None) if callable(value) else None
    return name, (f"{name} {label!r}" if isinstance(label, str) else name)


def _pickling_error(
    what: Literal["arguments", "response", "item"], rpc: str, value: object,
    exc: BaseException,
) -> SerializationError:
    """The SerializationError for ``value`` (a call's ``(args, kwargs)`` for
    ``what == "arguments"``, a response or a stream item otherwise), which
    pickle refused with ``exc``."""
    try:
        if what == "arguments":
            # The call's (args, kwargs) pair (src/pickle.rs, dump_arguments).
            args, kwargs = cast("tuple[Sequence[object], Mapping[str, object]]", value)
            found: tuple[str, object] | None = None
            for i, arg in enumerate(args):
                if not _picklable(arg):
                    found = _unpicklable(arg, f"args[{i}]")
                    break
            else:
                for key, arg in kwargs.items():
                    if not _picklable(arg):
                        found = _unpicklable(arg, f"kwargs[{key!r}]")
                        break
            path, culprit = found if found is not None else ("(args, kwargs)", value)
        else:
            path, culprit = _unpicklable(value, "value")
        type_name, described = _describe_type(culprit)
    except Exception:
        path, type_name = "?", type(value).__name__
        described = type_name
    where = {
        "arguments": f"the arguments of RPC {rpc!r}",
        "response": f"the response of RPC {rpc!r}",
        "item": f"an item of the stream of RPC {rpc!r}",
    }[what]
    message = f"cannot pickle {where}: {path} is a {described}, which pickle refused ({type(exc).__name__}: {exc})"
    err = SerializationError(message, what, rpc, type_name, path)
    err.__cause__ = exc
    if what != "response":
        err.reach = "not_reached"
    return err


def _error_text(exc: BaseException) -> str:
    """What the caller of a handler is told of ``exc`` (no logging)."""
    text = str(exc)
    name = _type_name(exc)
    return f"{PREFIX}{name}: {text}" if text else f"{PREFIX}{name}"
