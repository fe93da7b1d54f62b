"""Exceptions of pylm and pylm_core, importable and picklable without the
extension (pylm.errors re-exports them).

Hierarchy (builtins in brackets are extra bases, so plain ``except`` clauses
written for them keep working)::

    PylmError
      DecodeError [ValueError]     bytes that are not a PALM envelope
      RemoteError                  a server method raised; carries the remote
                                   exception's type, message and traceback text
      WorkerLost                   a message took down too many workers
    TimeoutError (builtin)         a client call got no reply in time

pyzmq's own exceptions (``zmq.ZMQError``) are not wrapped.
"""

import json

__all__ = ["PylmError", "DecodeError", "RemoteError", "WorkerLost"]


class PylmError(Exception):
    """Base class of pylm's exceptions."""


class DecodeError(PylmError, ValueError):
    """The bytes given are not a valid PALM envelope; the message says why."""


class RemoteError(PylmError):
    """A server-side method raised.

    :param remote_type: name of the remote exception class
    :param remote_message: ``str()`` of the remote exception
    :param remote_traceback: the formatted remote traceback
    """

    def __init__(self, remote_type, remote_message, remote_traceback=""):
        super().__init__(remote_type, remote_message, remote_traceback)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback

    def __str__(self):
        return "%s: %s" % (self.remote_type, self.remote_message)

    @classmethod
    def from_wire(cls, text):
        """Rebuild from the envelope's ``error`` field: JSON with type,
        message and traceback (pylm._dispatch.error_text), or, from a server
        that writes plain text, ``"Type: message"``."""
        try:
            fields = json.loads(text)
            return cls(fields["type"], fields["message"], fields.get("traceback", ""))
        except (ValueError, KeyError, TypeError):
            rtype, _, rmsg = text.partition(": ")
            return cls(rtype, rmsg, "")


class WorkerLost(PylmError):
    """The message was in flight on workers that died, too many times."""
