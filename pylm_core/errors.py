"""Exceptions of pylm and pylm_core, importable and picklable without the
extension (pylm.errors re-exports them).

Hierarchy (builtins in brackets are extra bases, so plain ``except`` clauses
written for them keep working)::

    PylmError
      DecodeError [ValueError]     bytes that are not a PALM envelope
      RemoteError                  a server method raised; carries the remote
                                   exception's type, message and traceback text
      WorkerLost                   a message took down too many workers
      CacheFull [PermissionError]  a server's cache refused a remote set: its
                                   bound (entries or bytes) is reached
    PermissionError (builtin)      a server refused a remote set/delete of one
                                   of its configuration keys
    TimeoutError (builtin)         a client call got no reply in time

pyzmq's own exceptions (``zmq.ZMQError``) are not wrapped.
"""

import json
import traceback
from typing import Dict

__all__ = ["PylmError", "DecodeError", "RemoteError", "WorkerLost", "CacheFull", "error_text",
           "NO_METHOD", "BAD_FUNCTION", "WORKER_LOST", "PROTECTED_KEY", "CACHE_FULL"]


class PylmError(Exception):
    """Base class of pylm's exceptions."""


class DecodeError(PylmError, ValueError):
    """The bytes given are not a valid PALM envelope; the message says why."""


#: Codes of the errors the library itself answers with (RemoteError.code),
#: so that a reader decides by the code, never by the message's text.
NO_METHOD = "no_method"          # this server serves no method of that name
BAD_FUNCTION = "bad_function"    # the entry at `stage` is no "server.method" of ours
WORKER_LOST = "worker_lost"      # the message took down too many workers
PROTECTED_KEY = "protected_key"  # a remote set/delete of a server's configuration key
CACHE_FULL = "cache_full"        # a remote set past the cache's bound


class RemoteError(PylmError):
    """A server-side method raised.

    The envelope's error field (field 15) carries it as JSON, written by
    :meth:`to_wire` and read by :meth:`from_wire` only::

        {"type": "ValueError", "message": "...", "traceback": "...",
         "code": "no_method"}

    ``code`` is there only for the errors the library answers with itself
    (the constants above); a user method's exception has none.

    :param remote_type: name of the remote exception class
    :param remote_message: ``str()`` of the remote exception
    :param remote_traceback: the formatted remote traceback
    :param code: one of the codes above, or ``""``
    """

    def __init__(self, remote_type: str, remote_message: str, remote_traceback: str = "",
                 code: str = "") -> None:
        super().__init__(remote_type, remote_message, remote_traceback, code)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.code = code

    def __str__(self) -> str:
        return "%s: %s" % (self.remote_type, self.remote_message)

    @classmethod
    def from_exception(cls, exc: BaseException, code: str = "",
                       with_traceback: bool = True) -> "RemoteError":
        """The RemoteError that reports `exc`: type, message and, unless
        `with_traceback` is false (a server's ``send_tracebacks=False``),
        its formatted traceback."""
        tb = ""
        if with_traceback:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(type(exc).__name__, str(exc), tb, code)

    def to_wire(self) -> str:
        """The text of the envelope's error field."""
        fields: Dict[str, str] = {"type": self.remote_type, "message": self.remote_message,
                  "traceback": self.remote_traceback}
        if self.code:
            fields["code"] = self.code
        return json.dumps(fields)

    @classmethod
    def from_wire(cls, text: str) -> "RemoteError":
        """Rebuild from the envelope's error field (:meth:`to_wire`), or,
        from a server that writes plain text, ``"Type: message"``."""
        try:
            fields = json.loads(text)
            return cls(fields["type"], fields["message"], fields.get("traceback", ""),
                       fields.get("code", ""))
        except (ValueError, KeyError, TypeError):
            rtype, _, rmsg = text.partition(": ")
            return cls(rtype, rmsg, "")


def error_text(exc: BaseException, code: str = "", with_traceback: bool = True) -> str:
    """The error field reporting exception `exc` (RemoteError.to_wire);
    its traceback is left empty when `with_traceback` is false."""
    return RemoteError.from_exception(exc, code, with_traceback).to_wire()


class WorkerLost(PylmError):
    """The message was in flight on workers that died, too many times."""


class CacheFull(PylmError, PermissionError):
    """A server's cache refused a remote ``set``: it holds as many entries,
    or as many bytes, as its bound allows (``cache_max_entries``,
    ``cache_max_bytes``).  Overwriting a key with a value no bigger, or
    deleting keys, still works.  A PermissionError, like the refusal of a
    configuration key, so one ``except PermissionError`` catches both."""
