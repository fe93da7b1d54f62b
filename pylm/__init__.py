"""pylm: clusters of high-performance Python micro-services over ZeroMQ.

A drop-in replacement for pylm 0.14 (see shared/API.md of the project) on a
messaging core written in Cython (``pylm_core``).  Servers are in
``pylm.servers``, the client in ``pylm.clients``; the exceptions below are
also in ``pylm.errors``.
"""

import logging

from pylm_core.errors import CacheFull, DecodeError, PylmError, RemoteError, WorkerLost

__version__ = "0.15.0.dev0"
__all__ = ["__version__", "PylmError", "DecodeError", "RemoteError", "WorkerLost",
           "CacheFull"]

# Library code adds no handlers of its own; applications configure logging.
logging.getLogger("pylm").addHandler(logging.NullHandler())
