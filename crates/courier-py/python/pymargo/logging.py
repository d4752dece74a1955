"""PyMargo's ``pymargo.logging`` on Courier: Margo's log levels, a global
logger, each engine's ``engine.logger``, and the ``Logger`` base class of
loggers a program provides.

Messages go to a logger object with one method per level (``trace``,
``debug``, ``info``, ``warning``, ``error``, ``critical``), if their level
is at least the log level (``warning`` by default, as Margo's). Until a
program sets one, the logger is a bridge to Python's ``logging`` module:
the ``pymargo`` logger, ``trace`` at level 5 (below ``logging.DEBUG``), the
other levels at their ``logging`` namesakes, so ``logging``'s own
configuration then decides what is shown and where.
"""

import enum
import logging as _logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol, cast

__all__ = [
    "level", "Logger", "PythonLogger", "set_global_logger", "set_global_log_level",
    "get_global_logger", "get_global_log_level",
    "trace", "debug", "info", "warning", "error", "critical", "EngineLogger", "TRACE",
]


class level(enum.IntEnum):
    """Margo's log levels (``margo_log_level``, with its values)."""

    external = 0
    trace = 1
    debug = 2
    info = 3
    warning = 4
    error = 5
    critical = 6


#: The ``logging`` level of Margo's ``trace`` (``logging`` has none).
TRACE = 5

_TO_LOGGING = {
    level.trace: TRACE,
    level.debug: _logging.DEBUG,
    level.info: _logging.INFO,
    level.warning: _logging.WARNING,
    level.error: _logging.ERROR,
    level.critical: _logging.CRITICAL,
}


class _LoggerLike(Protocol):
    """What ``set_global_logger`` and ``set_logger`` take: any object with
    the six methods (a ``Logger`` or not; they check it at run time)."""

    def trace(self, msg: str, /) -> object: ...
    def debug(self, msg: str, /) -> object: ...
    def info(self, msg: str, /) -> object: ...
    def warning(self, msg: str, /) -> object: ...
    def error(self, msg: str, /) -> object: ...
    def critical(self, msg: str, /) -> object: ...


class Logger(ABC):
    """A logger for ``set_global_logger`` or ``engine.logger.set_logger``:
    one method per level, each taking the message (a ``str``)."""

    @abstractmethod
    def trace(self, msg: str) -> None:
        pass

    @abstractmethod
    def debug(self, msg: str) -> None:
        pass

    @abstractmethod
    def info(self, msg: str) -> None:
        pass

    @abstractmethod
    def warning(self, msg: str) -> None:
        pass

    @abstractmethod
    def error(self, msg: str) -> None:
        pass

    @abstractmethod
    def critical(self, msg: str) -> None:
        pass


class PythonLogger(Logger):
    """The bridge to Python's ``logging``: each message goes to the
    ``logging`` logger ``name`` at the level of the same name (``trace`` at
    level 5)."""

    def __init__(self, name: str = "pymargo") -> None:
        self._logger = _logging.getLogger(name)

    @property
    def logger(self) -> _logging.Logger:
        """The ``logging.Logger`` messages go to."""
        return self._logger

    def trace(self, msg: object) -> None:
        self._logger.log(TRACE, msg)

    def debug(self, msg: object) -> None:
        self._logger.debug(msg)

    def info(self, msg: object) -> None:
        self._logger.info(msg)

    def warning(self, msg: object) -> None:
        self._logger.warning(msg)

    def error(self, msg: object) -> None:
        self._logger.error(msg)

    def critical(self, msg: object) -> None:
        self._logger.critical(msg)


def _level(value: int) -> level:
    try:
        return level(value)
    except ValueError:
        raise ValueError(f"log level {value!r}: expected one of pymargo.logging.level "
                         f"({', '.join(l.name for l in level)})") from None


class _Sink:
    """A logger and its level, shared by the threads that log."""

    def __init__(self, logger: _LoggerLike | None, lvl: level) -> None:
        self._lock = threading.Lock()
        self.logger = logger
        self.level = lvl

    def set_logger(self, logger: _LoggerLike) -> None:
        for name in ("trace", "debug", "info", "warning", "error", "critical"):
            if not callable(getattr(logger, name, None)):
                raise TypeError(f"a logger needs a {name}(msg) method; "
                                f"{type(logger).__name__} has none")
        with self._lock:
            self.logger = logger

    def set_level(self, lvl: int) -> None:
        checked = _level(lvl)
        with self._lock:
            self.level = checked

    def log(
        self, lvl: level, msg: object, fallback: Callable[[], _LoggerLike] | None = None,
    ) -> None:
        with self._lock:
            logger, threshold = self.logger, self.level
        # `external` leaves the filtering to the logger itself.
        if threshold != level.external and lvl < threshold:
            return
        if logger is None:
            logger = fallback() if fallback is not None else PythonLogger()
        getattr(logger, lvl.name)(str(msg))


_global = _Sink(PythonLogger(), level.warning)


def set_global_logger(logger: _LoggerLike) -> None:
    """Sends the messages of ``pymargo.logging.trace`` ... ``critical``
    (and of engines without a logger of their own) to ``logger``."""
    _global.set_logger(logger)


def set_global_log_level(log_level: int) -> None:
    """Messages below ``log_level`` (a ``pymargo.logging.level``) are
    dropped; ``level.external`` passes them all to the logger."""
    _global.set_level(log_level)


def get_global_logger() -> _LoggerLike:
    """The global logger (a ``PythonLogger`` until one is set)."""
    # Never None: the global sink starts with a PythonLogger and
    # `set_logger` takes only loggers (None is for engines' sinks).
    return cast(_LoggerLike, _global.logger)


def get_global_log_level() -> level:
    """The global log level (``level.warning`` until one is set)."""
    return _global.level


def trace(msg: object) -> None:
    """Logs ``msg`` at level ``trace`` on the global logger."""
    _global.log(level.trace, msg)


def debug(msg: object) -> None:
    """Logs ``msg`` at level ``debug`` on the global logger."""
    _global.log(level.debug, msg)


def info(msg: object) -> None:
    """Logs ``msg`` at level ``info`` on the global logger."""
    _global.log(level.info, msg)


def warning(msg: object) -> None:
    """Logs ``msg`` at level ``warning`` on the global logger."""
    _global.log(level.warning, msg)


def error(msg: object) -> None:
    """Logs ``msg`` at level ``error`` on the global logger."""
    _global.log(level.error, msg)


def critical(msg: object) -> None:
    """Logs ``msg`` at level ``critical`` on the global logger."""
    _global.log(level.critical, msg)


class EngineLogger(Logger):
    """``engine.logger``: logs on behalf of one engine. Until
    ``set_logger`` gives it a logger of its own, its messages go to the
    global logger (whatever it is when they are logged), filtered by this
    engine's level (``set_log_level``, ``warning`` by default)."""

    def __init__(self) -> None:
        self._sink = _Sink(None, level.warning)

    def set_logger(self, logger: _LoggerLike) -> None:
        """Sends this engine's messages to ``logger``."""
        self._sink.set_logger(logger)

    def set_log_level(self, log_level: int) -> None:
        """Drops this engine's messages below ``log_level``."""
        self._sink.set_level(log_level)

    def _log(self, lvl: level, msg: object) -> None:
        self._sink.log(lvl, msg, fallback=get_global_logger)

    def trace(self, msg: object) -> None:
        self._log(level.trace, msg)

    def debug(self, msg: object) -> None:
        self._log(level.debug, msg)

    def info(self, msg: object) -> None:
        self._log(level.info, msg)

    def warning(self, msg: object) -> None:
        self._log(level.warning, msg)

    def error(self, msg: object) -> None:
        self._log(level.error, msg)

    def critical(self, msg: object) -> None:
        self._log(level.critical, msg)
