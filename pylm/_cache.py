"""The cache on the wire: the REP service every server runs at its
``db_address``, and the REQ side used by clients and workers.

Requests are envelopes whose `function` ends in ``.set``, ``.get`` or
``.delete``; replies are raw bytes (shared/API.md, "Cache requests").

What a remote request may not do (issue 12):

- ``set`` or ``delete`` a configuration key: the names in
  :data:`CONFIG_KEYS` (on every server, preset or not: a client must never
  find an address a stranger stored) and every key the server preset
  (``_config()`` of the server classes, ``ServerTemplate.preset_cache``,
  ``CacheService(protected_keys=...)``).  The server's own code
  (``self.cache.set``) is not restricted.
- ``set`` past the cache's bound: ``cache_max_entries`` entries or
  ``cache_max_bytes`` bytes (keys plus values) stored by remote requests.
  Only what remote requests stored counts (the server's own keys never
  do); overwriting a key with a value no bigger, and deleting, always work.

A refused request is logged (rate-limited, through the server's DropLog)
and counted (:attr:`CacheHandler.refused`).  How it is answered depends on
the request's `stage`, the version of the cache protocol the client reads:

- ``stage`` 0 (what pylm 0.14 clients send): one frame, empty bytes, as for
  any request the service cannot serve; pylm 0.14 reads one frame.
- ``stage`` :data:`ERROR_REPLIES` (our :class:`CacheClient`): two frames,
  ``[b"", error]`` where `error` is ``RemoteError.to_wire()`` with the code
  ``PROTECTED_KEY`` or ``CACHE_FULL`` (pylm_core.errors); a value is always
  one frame, so the client tells an error from any value.  It raises
  PermissionError or pylm.CacheFull.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, NoReturn, Optional, Set

import zmq

if TYPE_CHECKING:
    from typing import Protocol

    from pylm.security import Security, Socket

    class Store(Protocol):
        """What a server's cache is (pylm.persistence.kv.DictDB or alike)."""

        def get(self, key: str) -> Optional[bytes]: ...
        def set(self, value: bytes, key: Optional[str] = None) -> str: ...
        def delete(self, key: str) -> str: ...

from pylm._local import LOCAL_KEYS
from pylm._context import context
from pylm.parts.messages_pb2 import PalmMessage
from pylm_core.errors import CACHE_FULL, PROTECTED_KEY, CacheFull, RemoteError

__all__ = ["serve_cache", "CacheClient", "CacheHandler", "CONFIG_PROTOCOL_KEY", "CONFIG_KEYS",
           "PROTOCOL", "PROTOCOL_PARTS", "CACHE_MAX_ENTRIES", "CACHE_MAX_BYTES",
           "ERROR_REPLIES", "batch_bytes_for"]

# Our servers preset this key; a client that finds it uses the subscription
# handshake (pylm_core PING_PREFIX) instead of pylm 0.14's fixed wait.
CONFIG_PROTOCOL_KEY = "pylm_protocol"
#: Server, Pipeline, Master, Hub...: welcomes, pings, batches both ways.
PROTOCOL = b"1"
#: A server built from parts whose publisher is a PubService: its XPUB
#: welcomes subscribers (and pings travel like calls), but calls and
#: replies are single envelopes, as parts (and pylm 0.14 workers) read them.
PROTOCOL_PARTS = b"parts"

#: Configuration keys no remote request may set or delete, on any server.
CONFIG_KEYS = frozenset({
    "name", CONFIG_PROTOCOL_KEY, "max_message_size", "db_address", "pull_address",
    "pub_address", "sub_address", "worker_pull_address", "worker_push_address",
    "worker_router_address", *LOCAL_KEYS})
#: Default bound of a server's cache (what remote requests stored): entries...
CACHE_MAX_ENTRIES = 100_000
#: ...and bytes (keys plus values).
CACHE_MAX_BYTES = 256 << 20
#: The `stage` of a cache request whose client reads two-frame error
#: replies (our CacheClient); pylm 0.14 clients send 0.
ERROR_REPLIES = 1
#: Seconds between two recounts of the remote entries (see CacheHandler).
RECOUNT_INTERVAL = 1.0

logger = logging.getLogger("pylm.cache")

#: Batch frame size when the server does not say its limit (the core caps
#: batches at 256 KiB anyway).
UNLIMITED = 1 << 30


def batch_bytes_for(max_message_size: Any) -> int:
    """The most bytes a batch frame to a server may hold: half the maximum
    message size its cache announces (``max_message_size``), so that a batch
    plus one more call stays under it."""
    try:
        return max(1, int(max_message_size) // 2)
    except (TypeError, ValueError):
        return UNLIMITED


def handle_cache_request(cache: Store, msg: PalmMessage,
                         stats: Optional[Callable[[], bytes]] = None) -> bytes:
    """The reply (bytes) to one cache request (a decoded envelope).
    `stats`, when given, answers the ``stats`` operation (live statistics,
    pylm/_stats.py)."""
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


def _size(key: str, value: Any) -> int:
    """What an entry counts against cache_max_bytes: key plus value."""
    try:
        n = memoryview(value).nbytes
    except TypeError:
        n = len(str(value).encode())
    return len(key.encode()) + n


class _Refused(Exception):
    """A request the rules refuse; `code` says which rule."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class CacheHandler:
    """Answers the cache requests of one server under its rules: protected
    keys and the bound (see the module docstring).  Used from one thread
    (the cache service's).

    :param cache: the server's cache (a DictDB or alike)
    :param protected_keys: the keys the server preset; a set the owner may
        add to later (ServerTemplate.preset_cache), or any iterable
    :param max_entries: the most entries remote requests may store
    :param max_bytes: the most bytes (keys plus values) they may store
    :param drop_log: ``callable(reason)`` for bad and refused requests
    :param stats: ``callable() -> bytes``, the reply to a ``stats``
        request (None: the server keeps no live statistics)
    """

    def __init__(self, cache: Store, protected_keys: Iterable[str] = (),
                 max_entries: int = CACHE_MAX_ENTRIES, max_bytes: int = CACHE_MAX_BYTES,
                 drop_log: Optional[Callable[[str], None]] = None,
                 stats: Optional[Callable[[], bytes]] = None) -> None:
        self.cache = cache
        self.protected_keys: Set[str] = protected_keys if isinstance(protected_keys, set) \
            else set(protected_keys)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.drop_log = drop_log
        self.stats = stats
        #: requests refused by the rules
        self.refused = 0
        self._sizes: Dict[str, int] = {}    # key -> size, of what remote requests stored
        self._bytes = 0
        self._recounted = float("-inf")

    def is_protected(self, key: str) -> bool:
        return key in CONFIG_KEYS or key in self.protected_keys

    def answer(self, frames: List[bytes]) -> List[bytes]:
        """The reply frames to one request: a value (one frame), b"" for a
        bad request, and for a refused one see the module docstring."""
        try:
            if len(frames) != 1:
                raise ValueError("a cache request of %d frames" % len(frames))
            msg = PalmMessage.FromString(frames[0])
        except Exception as exc:    # bad input never stops the service
            self._log("cache request: %s: %s" % (type(exc).__name__, exc))
            return [b""]
        try:
            return [self._serve(msg)]
        except _Refused as exc:
            self.refused += 1
            self._log("cache request refused: %s" % exc)
            if msg.stage != ERROR_REPLIES:
                return [b""]
            error = RemoteError(CacheFull.__name__ if exc.code == CACHE_FULL
                                else PermissionError.__name__, str(exc), "", exc.code)
            return [b"", error.to_wire().encode()]
        except Exception as exc:
            self._log("cache request: %s: %s" % (type(exc).__name__, exc))
            return [b""]

    def _log(self, reason: str) -> None:
        if self.drop_log is not None:
            self.drop_log(reason)

    def _serve(self, msg: PalmMessage) -> bytes:
        op = msg.function.rpartition(".")[2]
        if op == "set":
            key = msg.cache
            if key and self.is_protected(key):
                raise _Refused(PROTECTED_KEY, "%r is a configuration key of the server: a "
                               "remote set is refused" % key)
            size = _size(key or "-" * 36, msg.payload)     # a new key is a UUID
            self._make_room(key, size)
            key = handle_cache_request(self.cache, msg).decode()
            self._account(key, size)
            return key.encode()
        if op == "delete":
            key = msg.payload.decode()
            if self.is_protected(key):
                raise _Refused(PROTECTED_KEY, "%r is a configuration key of the server: a "
                               "remote delete is refused" % key)
            reply = handle_cache_request(self.cache, msg)
            self._account(key, None)
            return reply
        return handle_cache_request(self.cache, msg, self.stats)

    def _fits(self, key: Optional[str], size: int) -> bool:
        old = self._sizes.get(key) if key else None
        entries = len(self._sizes) + (old is None)
        total = self._bytes - (old or 0) + size
        return (old is not None or entries <= self.max_entries) and \
            (total <= self.max_bytes or size <= (old or 0))

    def _make_room(self, key: Optional[str], size: int) -> None:
        """Return when `key` may be set to a value of `size`; _Refused when
        the bound says no.  At the bound the remote entries are recounted
        first (at most once a RECOUNT_INTERVAL): the server's own code may
        have deleted or replaced some."""
        if self._fits(key, size):
            return
        now = time.monotonic()
        if now - self._recounted >= RECOUNT_INTERVAL:
            self._recounted = now
            self._recount()
            if self._fits(key, size):
                return
        raise _Refused(CACHE_FULL, "the cache is full (at most %d entries and %d bytes from "
                       "remote requests): the set of %d bytes is refused"
                       % (self.max_entries, self.max_bytes, size))

    def _account(self, key: str, size: Optional[int]) -> None:
        """Record that `key` now holds `size` bytes (None: deleted)."""
        self._bytes -= self._sizes.pop(key, 0)
        if size is not None:
            self._sizes[key] = size
            self._bytes += size

    def _recount(self) -> None:
        for key in list(self._sizes):
            value = self.cache.get(key)
            self._account(key, None if value is None else _size(key, value))


def serve_cache(rep: Socket, control: Socket, handler: CacheHandler, limit: int) -> None:
    """Answer cache requests on `rep` with `handler` (a CacheHandler) until
    `limit` were served or `control` is readable."""
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
        rep.send_multipart(handler.answer(rep.recv_multipart(copy=True)))
        served += 1


def _refusal(text: str, db_address: str) -> Exception:
    """The exception for a refused request's error frame."""
    error = RemoteError.from_wire(text)
    message = "the cache at %s: %s" % (db_address, error.remote_message)
    if error.code == CACHE_FULL:
        return CacheFull(message)
    if error.code == PROTECTED_KEY:
        return PermissionError(message)
    return error


class CacheClient:
    """REQ side of the cache, for clients and workers.

    :param db_address: the server's cache address
    :param server_name: used as the `function` prefix
    :param timeout: seconds to wait for each reply (None: forever);
        after a timeout the REQ socket is remade, so the client stays usable
    :param security: the caller's :class:`pylm.security.Security`: with a
        server key the REQ is a CURVE client
    """

    def __init__(self, db_address: str, server_name: str, timeout: Optional[float] = 10.0,
                 security: Optional[Security] = None) -> None:
        self.db_address = db_address
        self.server_name = server_name
        self.timeout = timeout
        self.security = security
        self._sock: Optional[Socket] = None

    def _socket(self) -> Socket:
        if self._sock is None:
            self._sock = context().socket(zmq.REQ)
            self._sock.setsockopt(zmq.LINGER, 0)
            if self.security is not None:
                self.security.apply(self._sock, connect=self.db_address)
            self._sock.connect(self.db_address)
        return self._sock

    def request(self, op: str, payload: Any, key: str = "",
                timeout: Optional[float] = None) -> bytes:
        """Send one cache request; the raw reply bytes.  A request the
        server refuses raises PermissionError (a configuration key) or
        pylm.CacheFull (the bound); a pylm 0.14 server never refuses."""
        timeout = self.timeout if timeout is None else timeout
        msg = PalmMessage(pipeline=str(uuid.uuid4()), function="%s.%s" % (self.server_name, op),
                          stage=ERROR_REPLIES, cache=key, payload=payload)
        sock = self._socket()
        deadline = None if timeout is None else time.monotonic() + timeout
        # A REQ blocks in send while it has no peer (a CURVE server that
        # refused our handshake tears the connection down): the send is
        # bounded by the same timeout as the answer.
        if not self._wait(sock, zmq.POLLOUT, deadline):
            self._timed_out(timeout)
        sock.send(msg.SerializeToString(), zmq.DONTWAIT)
        if not self._wait(sock, zmq.POLLIN, deadline):
            self._timed_out(timeout)
        frames = sock.recv_multipart()
        if len(frames) == 2:
            raise _refusal(frames[1].decode("utf-8", "replace"), self.db_address)
        return frames[0]

    @staticmethod
    def _wait(sock: Socket, event: int, deadline: Optional[float]) -> bool:
        """True when `sock` is ready for `event` before `deadline`
        (monotonic seconds; None: no limit)."""
        if deadline is None:
            return bool(sock.poll(None, event))
        return bool(sock.poll(max(0, int((deadline - time.monotonic()) * 1000)), event))

    def _timed_out(self, timeout: Optional[float]) -> NoReturn:
        """Drop the REQ (its state is stuck mid-request) and raise."""
        self.close()
        raise TimeoutError("no answer from the cache at %s within %s s%s"
                           % (self.db_address, timeout, self._hint()))

    def _hint(self) -> str:
        """Why a server that runs may not answer: CURVE refuses silently."""
        if self.security is not None and self.security.server_key is not None:
            return ("; a CURVE server refuses wrong server keys and keys it does not "
                    "authorize: check server_key/secret_key")
        return ("; a CURVE server refuses plain peers: give server_key (and secret_key) "
                "if it uses keys")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
