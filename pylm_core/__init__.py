"""pylm_core: the compiled messaging core under pylm.

It calls libzmq's C API directly, through the very libzmq pyzmq has loaded
(resolved at import time), so that pyzmq sockets (``Socket.underlying``) and
``inproc://`` endpoints are shared between pyzmq and the core.  Nothing here
imports ``pylm``.
"""

import zmq
from zmq.backend.cython import _zmq as _pyzmq_backend

from pylm_core import _core
from pylm_core.errors import DecodeError

_core.load_libzmq(_pyzmq_backend.__file__)

from pylm_core._core import Frame, PalmMessage, zmq_version  # noqa: E402

__all__ = ["DecodeError", "Frame", "PalmMessage", "zmq_version"]
