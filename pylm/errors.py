"""Exceptions of pylm; see pylm_core.errors for the hierarchy."""

from pylm_core.errors import CacheFull, DecodeError, PylmError, RemoteError, WorkerLost

__all__ = ["PylmError", "DecodeError", "RemoteError", "WorkerLost", "CacheFull"]
