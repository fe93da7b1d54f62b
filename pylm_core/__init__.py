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

__all__ = ["DecodeError", "Frame", "PalmMessage", "get_includes", "zmq_version"]


def get_includes():
    """Directories a Cython extension that ``cimport``s pylm_core needs
    (``include_dirs`` and Cython's ``include_path``): the one holding the
    package, for ``pylm_core/*.pxd``, and the package's own, for its C
    headers.  As pyzmq's ``zmq.get_includes()``."""
    import os
    here = os.path.dirname(os.path.abspath(__file__))
    return [os.path.dirname(here), here]
