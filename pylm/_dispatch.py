"""What may be called from the wire, and what happens when a call fails.

One policy for every server: the method table is built once at ``start()``
from the public methods the user's subclass defines (plus ``echo``), and a
failing call is logged once with its traceback, answered with an error
envelope, and the server keeps serving.
"""

import inspect
import logging
import time
from typing import Any, Callable, Dict, Iterable, Optional

# the one encoder of the envelope's error field, re-exported for the parts
from pylm_core.errors import error_text

__all__ = ["method_table", "error_text", "ErrorReporter", "DropLog", "overrides"]

# Methods of the server classes that are hooks or plumbing, never calls.
NOT_CALLABLE = frozenset({
    "start", "stop", "handle_stream", "scatter", "gather", "change_payload",
    "set", "get", "delete", "clean", "close", "handle_feedback",
    "reply_feedback",
})


def _is_library_class(cls: type) -> bool:
    return cls is object or cls.__module__.split(".")[0] in ("pylm", "pylm_core")


def method_table(server: object,
                 always: Iterable[str] = ("echo",)) -> Dict[bytes, Callable[[Any], Any]]:
    """``{b"method": bound method}`` of what the wire may call on server:
    public callables defined by user classes in its MRO (never by pylm's
    own classes, never names starting with ``_``), plus `always`."""
    table: Dict[bytes, Callable[[Any], Any]] = {}
    for cls in type(server).__mro__:
        if _is_library_class(cls):
            continue
        for name, value in vars(cls).items():
            if name.startswith("_") or name in NOT_CALLABLE or name.encode() in table:
                continue
            if inspect.isfunction(value) or inspect.ismethoddescriptor(value):
                table[name.encode()] = getattr(server, name)
    for name in always:
        if hasattr(server, name):
            table.setdefault(name.encode(), getattr(server, name))
    return table


def overrides(obj: object, name: str, base: type) -> bool:
    """True when type(obj) defines `name` differently from `base`."""
    return getattr(type(obj), name, None) is not getattr(base, name, None)


class ErrorReporter:
    """``callable(entry, exc) -> text``: logs a failed call with its
    traceback (once) and returns the error text for the reply, with the
    traceback only when `send_tracebacks` (a server's keyword)."""

    def __init__(self, logger: logging.Logger, send_tracebacks: bool = True) -> None:
        self.logger = logger
        self.send_tracebacks = send_tracebacks

    def __call__(self, entry: Optional[str], exc: BaseException) -> str:
        self.logger.error("%s raised %s: %s", entry or "a method", type(exc).__name__,
                          exc, exc_info=(type(exc), exc, exc.__traceback__))
        return error_text(exc, with_traceback=self.send_tracebacks)


class DropLog:
    """``callable(reason)`` for dropped input, logged at WARNING at most
    `burst` times per `interval` seconds, then as a count."""

    def __init__(self, logger: logging.Logger, burst: int = 10, interval: float = 10.0) -> None:
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self.count = 0
        self._window_start = 0.0
        self._in_window = 0
        self._suppressed = 0

    def __call__(self, reason: str) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self._window_start > self.interval:
            if self._suppressed:
                self.logger.warning("%d more bad messages dropped", self._suppressed)
            self._window_start = now
            self._in_window = 0
            self._suppressed = 0
        if self._in_window < self.burst:
            self._in_window += 1
            self.logger.warning("dropped: %s", reason)
        else:
            self._suppressed += 1
