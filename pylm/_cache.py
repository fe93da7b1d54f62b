"""The cache on the wire: the REP service every server runs at its
``db_address``, and the REQ side used by clients and workers.

Requests are envelopes whose `function` ends in ``.set``, ``.get`` or
``.delete``; replies are raw bytes (shared/API.md, "Cache requests").
"""

import logging
import uuid

import zmq

from pylm._context import context
from pylm.parts.messages_pb2 import PalmMessage

__all__ = ["serve_cache", "CacheClient", "CONFIG_PROTOCOL_KEY", "PROTOCOL", "PROTOCOL_PARTS",
           "batch_bytes_for"]

# Our servers preset this key; a client that finds it uses the subscription
# handshake (pylm_core PING_PREFIX) instead of pylm 0.14's fixed wait.
CONFIG_PROTOCOL_KEY = "pylm_protocol"
#: Server, Pipeline, Master, Hub...: welcomes, pings, batches both ways.
PROTOCOL = b"1"
#: A server built from parts whose publisher is a PubService: its XPUB
#: welcomes subscribers (and pings travel like calls), but calls and
#: replies are single envelopes, as parts (and pylm 0.14 workers) read them.
PROTOCOL_PARTS = b"parts"

logger = logging.getLogger("pylm.cache")

#: Batch frame size when the server does not say its limit (the core caps
#: batches at 256 KiB anyway).
UNLIMITED = 1 << 30


def batch_bytes_for(max_message_size):
    """The most bytes a batch frame to a server may hold: half the maximum
    message size its cache announces (``max_message_size``), so that a batch
    plus one more call stays under it."""
    try:
        return max(1, int(max_message_size) // 2)
    except (TypeError, ValueError):
        return UNLIMITED


def handle_cache_request(cache, frame, stats=None):
    """The reply (bytes) to one cache request frame.  `stats`, when given,
    answers the ``stats`` operation (live statistics, pylm/_stats.py)."""
    msg = PalmMessage.FromString(frame)
    op = msg.function.rpartition(".")[2]
    if op == "stats" and stats is not None:
        return stats()
    if op == "set":
        return cache.set(msg.payload, msg.cache or None).encode()
    if op == "get":
        value = cache.get(msg.payload.decode())
        if value is None:
            return b""
        return value if isinstance(value, bytes) else str(value).encode()
    if op == "delete":
        return cache.delete(msg.payload.decode()).encode()
    raise LookupError("no cache operation %r" % msg.function)


def serve_cache(rep, control, cache, limit, drop_log, stats=None):
    """Answer cache requests on `rep` until `limit` were served or `control`
    is readable.  A bad request is answered with empty bytes (REP must
    answer) and logged through drop_log.  `stats`: ``callable() -> bytes``,
    the reply to a ``stats`` request."""
    poller = zmq.Poller()
    poller.register(rep, zmq.POLLIN)
    poller.register(control, zmq.POLLIN)
    served = 0
    while served < limit:
        events = dict(poller.poll())
        if control in events:
            return
        if rep not in events:
            continue
        frames = rep.recv_multipart(copy=True)
        try:
            if len(frames) != 1:
                raise ValueError("a cache request of %d frames" % len(frames))
            reply = handle_cache_request(cache, frames[0], stats)
        except Exception as exc:  # bad input never stops the service
            drop_log("cache request: %s: %s" % (type(exc).__name__, exc))
            reply = b""
        rep.send(reply)
        served += 1


class CacheClient:
    """REQ side of the cache, for clients and workers.

    :param db_address: the server's cache address
    :param server_name: used as the `function` prefix
    :param timeout: seconds to wait for each reply (None: forever);
        after a timeout the REQ socket is remade, so the client stays usable
    """

    def __init__(self, db_address, server_name, timeout=10.0):
        self.db_address = db_address
        self.server_name = server_name
        self.timeout = timeout
        self._sock = None

    def _socket(self):
        if self._sock is None:
            self._sock = context().socket(zmq.REQ)
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.connect(self.db_address)
        return self._sock

    def request(self, op, payload, key="", timeout=None):
        """Send one cache request; the raw reply bytes."""
        timeout = self.timeout if timeout is None else timeout
        msg = PalmMessage(pipeline=str(uuid.uuid4()), function="%s.%s" % (self.server_name, op),
                          cache=key, payload=payload)
        sock = self._socket()
        sock.send(msg.SerializeToString())
        if not sock.poll(None if timeout is None else int(timeout * 1000), zmq.POLLIN):
            self.close()
            raise TimeoutError("no answer from the cache at %s within %s s"
                               % (self.db_address, timeout))
        return sock.recv()

    def close(self):
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
