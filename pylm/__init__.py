"""pylm: clusters of high-performance Python micro-services over ZeroMQ.

A drop-in replacement for pylm 0.14 (see shared/API.md of the project) on a
messaging core written in Cython (``pylm_core``).
"""

import logging

__version__ = "0.15.0.dev0"

# Library code adds no handlers of its own; applications configure logging.
logging.getLogger("pylm").addHandler(logging.NullHandler())
