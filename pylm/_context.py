"""The one pyzmq Context of the library, made on first use."""

import zmq


def context():
    """pyzmq's process-wide Context (``zmq.Context.instance()``), shared with
    pylm_core through ``Context.underlying`` and with user code as
    ``pylm.parts.core.zmq_context``."""
    return zmq.Context.instance()
