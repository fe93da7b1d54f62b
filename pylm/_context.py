"""The one pyzmq Context of the library, made on first use."""

from __future__ import annotations

import zmq


def context() -> zmq.Context[zmq.Socket[bytes]]:
    """pyzmq's process-wide Context (``zmq.Context.instance()``), shared with
    pylm_core through ``Context.underlying`` and with user code as
    ``pylm.parts.core.zmq_context``."""
    return zmq.Context.instance()
