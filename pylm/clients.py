"""Client: calls servers with ``eval`` (one message) and ``job`` (a stream).

Sockets are made once per Client (a PUSH to the server's pull address and a
SUB on the last stage's pub address), on first use.  Before the first call
the client makes sure its subscription is live: with our servers by a ping
handshake, with pylm 0.14 servers by one wait (they cannot answer pings).
Every blocking call takes ``timeout=`` (seconds; None waits forever).
"""

import logging
import sys
import time
import uuid

import zmq

from pylm_core import _core
from pylm._cache import CONFIG_PROTOCOL_KEY, PROTOCOL, CacheClient
from pylm._context import context
from pylm_core.errors import RemoteError

__all__ = ["Client"]

#: Wait before the first call to a pylm 0.14 server, whose subscriptions
#: cannot be confirmed (the time pylm 0.14 itself slept).
LEGACY_JOIN_WAIT = 0.5
#: Calls a job keeps in flight; bounds every queue between client and workers.
JOB_WINDOW = 2000


def _check_payload(payload):
    if isinstance(payload, str) or not isinstance(payload, (bytes, bytearray, memoryview)):
        try:
            memoryview(payload)
        except TypeError:
            raise TypeError("payload must be bytes or bytes-like, not %s"
                            % type(payload).__name__) from None
        if isinstance(payload, str):
            raise TypeError("payload must be bytes, not str")
    return payload


class Client:
    """A client of the server (or Master) named `server_name`.

    :param server_name: must equal the `name` in the server's cache
    :param db_address: the server's cache address
    :param push_address: where calls go (default: the server's pull_address)
    :param sub_address: where replies come from (default: its pub_address;
        for a stream, the last stage's)
    :param session: prefix of cache keys, and the `pipeline` of calls
    :param logging_level: level of this client's logger
    :param this_config: do not ask the cache for addresses
    :param timeout: keyword-only; seconds for the configuration fetch and
        the subscription handshake (default 10)
    """

    def __init__(self, server_name, db_address, push_address=None, sub_address=None,
                 session=None, logging_level=logging.INFO, this_config=False, *,
                 timeout=10.0):
        self.server_name = server_name
        self.db_address = db_address
        self.session = session
        self.uuid = str(uuid.uuid4())
        self.timeout = timeout
        self.logger = logging.getLogger("pylm.client")
        self.logger.setLevel(logging_level)
        self._cache = CacheClient(db_address, server_name, timeout) if db_address else None
        self._push = self._sub = self._reader = None
        self._joined = False
        self._protocol = None
        self._closed = False
        if not this_config:
            try:
                name = self._cache.request("get", b"name").decode()
                if name != server_name:
                    raise ValueError("the server at %s is %r, not %r"
                                     % (db_address, name, server_name))
                if push_address is None:
                    push_address = self._cache.request("get", b"pull_address").decode()
                if sub_address is None:
                    sub_address = self._cache.request("get", b"pub_address").decode()
                self._protocol = self._cache.request("get", CONFIG_PROTOCOL_KEY.encode())
            except BaseException:
                self.close()
                raise
        self.push_address = push_address
        self.sub_address = sub_address

    # context manager -------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Close every socket of the client (idempotent)."""
        for sock in (self._push, self._sub):
            if sock is not None:
                sock.close(linger=0)
        self._push = self._sub = self._reader = None
        if self._cache is not None:
            self._cache.close()
        self._joined = False

    clean = close  # pylm 0.14's name

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # plumbing --------------------------------------------------------------
    def _connect(self, timeout):
        if self._push is None:
            if not self.push_address or not self.sub_address:
                raise ValueError("the client has no push_address/sub_address")
            ctx = context()
            self._push = ctx.socket(zmq.PUSH)
            self._push.setsockopt(zmq.LINGER, 1000)
            self._push.connect(self.push_address)
            self._sub = ctx.socket(zmq.SUB)
            self._sub.setsockopt(zmq.LINGER, 0)
            self._sub.setsockopt(zmq.RCVHWM, 0)
            self._sub.setsockopt_string(zmq.SUBSCRIBE, self.uuid)
            self._sub.connect(self.sub_address)
            self._reader = _core.ReplyReader(self._sub)
        if not self._joined:
            self._join(timeout)

    def _join(self, timeout):
        """Make sure the SUB receives: ping our servers until a ping comes
        back; wait once for pylm 0.14 servers."""
        if self._protocol is not None and self._protocol != PROTOCOL:
            time.sleep(LEGACY_JOIN_WAIT)
            self._joined = True
            return
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + (limit if limit is not None else 1e9)
        nonce = uuid.uuid4().hex
        ping_cache = (_core.PING_PREFIX + b":" + nonce.encode()).decode()
        interval = 0.02
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                if self._protocol is None:
                    # this_config and no answer: maybe a pylm 0.14 server
                    self._joined = True
                    return
                raise TimeoutError("no answer from %r at %s within %s s"
                                   % (self.server_name, self.push_address, limit))
            self._reader.pipeline = None
            _core.send_call(self._push, nonce.encode(), self.uuid.encode(), b"",
                            ping_cache.encode(), b"", timeout=left)
            try:
                msg = self._reader.recv_raw(timeout=min(interval, max(left, 0.001)))
            except TimeoutError:
                interval = min(interval * 2, 0.5)
                continue
            if msg.cache == ping_cache:
                # drain the other pongs of this handshake lazily: they carry
                # pipeline=nonce, which no call uses, so readers drop them
                self._joined = True
                return

    def _function(self, function):
        if isinstance(function, (list, tuple)):
            function = " ".join(function)
        if not isinstance(function, str):
            raise TypeError("function must be str or a list of str")
        return function

    def _raise_remote(self, error):
        raise RemoteError.from_wire(error)

    # calls -----------------------------------------------------------------
    def eval(self, function, payload, messages=1, cache="", *, timeout=None):
        """Send one message; return the reply payload, or a list of
        `messages` replies.  Raises TimeoutError when no reply comes within
        `timeout` seconds, pylm.RemoteError when the method raised."""
        function = self._function(function)
        _check_payload(payload)
        self._connect(timeout)
        pipeline = self.session or str(uuid.uuid4())
        self._reader.pipeline = pipeline.encode()
        _core.send_call(self._push, pipeline.encode(), self.uuid.encode(), function.encode(),
                        cache.encode(), payload, timeout=timeout)
        results = []
        deadline = None if timeout is None else time.monotonic() + timeout
        for _ in range(messages):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                payload, error = self._reader.recv(left)
            except TimeoutError:
                raise TimeoutError("no reply from %s within %s s" % (function, timeout)) from None
            if error is not None:
                self._raise_remote(error)
            results.append(payload)
        return results[0] if messages == 1 else results

    def job(self, function, generator, messages=sys.maxsize, cache="", *, timeout=None,
            window=JOB_WINDOW):
        """Send every payload the generator yields and yield the replies as
        they come, until `messages` replies arrived (or, by default, one
        for each payload sent).  At most `window` calls are in flight.
        `timeout` bounds the wait for each reply."""
        function = self._function(function)
        self._connect(timeout)
        pipeline = self.session or str(uuid.uuid4())
        stream = _core.JobStream(self._push, self._reader, generator, pipeline.encode(),
                                 self.uuid.encode(), function.encode(), cache.encode(),
                                 min(messages, 2**62), window=window, timeout=timeout,
                                 on_error=self._raise_remote)
        yield from stream

    # cache -------------------------------------------------------------------
    def _key(self, key):
        return "%s%s" % (self.session, key) if self.session else key

    def set(self, value, key=None):
        """Store value (bytes) in the server's cache; returns the key."""
        if not isinstance(value, bytes):
            raise TypeError("value must be bytes, not %s" % type(value).__name__)
        key = self._key(key) if key else ""
        return self._cache.request("set", value, key).decode()

    def get(self, key):
        """The value stored under key (b'' when absent)."""
        return self._cache.request("get", self._key(key).encode())

    def delete(self, key):
        """Remove key from the server's cache; returns the key."""
        return self._cache.request("delete", self._key(key).encode()).decode()
