"""Services: parts that bind their address (connections connect).

Every part here is served by the server's one loop (pylm.parts.core), but
for the HTTP server of :class:`HttpService`, which runs in a thread of its
own and hands each request to the loop over inproc.
"""

from __future__ import annotations

import logging
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import TYPE_CHECKING, Any, Iterable, Iterator, List, Optional, Tuple, Type, Union

import zmq

from pylm._cache import CACHE_MAX_BYTES, CACHE_MAX_ENTRIES, CacheHandler
from pylm._http import (MAX_CONCURRENT, MAX_QUEUED, MAX_REQUEST_BYTES, READ_TIMEOUT,
                        PooledServerMixIn, body_length, linger)
from pylm._context import context
from pylm._stream import DefaultStream
from pylm.parts.core import (HTTP_TIMEOUT, MAX_MESSAGE_SIZE, READ_BATCH, BypassInbound, Inbound,
                             Outbound, _to_bytes, _to_message)
from pylm.persistence.kv import DictDB
from pylm.security import KeyPath
from pylm_core import _core

if TYPE_CHECKING:
    from pylm._cache import Store
    from pylm._runtime import Runtime
    from pylm.security import Socket

__all__ = ["RepService", "PullService", "PushService", "PubService", "WorkerPushService",
           "WorkerPullService", "PushPullService", "RepBypassService", "HttpService",
           "CacheService"]


class RepService(Inbound):
    """Binds a REP socket: each request is routed, and answered with
    ``reply_feedback()`` (the outbound's feedback when registered with
    ``block=True``)."""

    def __init__(self, name: Union[str, bytes], listen_address: str,
                 broker_address: str = "inproc://broker", logger: Optional[logging.Logger] = None,
                 cache: Optional[Store] = None, messages: int = sys.maxsize,
                 **keys: KeyPath) -> None:
        super().__init__(name, listen_address, zmq.REP, reply=True,
                         broker_address=broker_address, bind=True, logger=logger,
                         cache=cache, messages=messages, **keys)


class PullService(Inbound):
    """Binds a PULL socket (clients PUSH to it)."""

    def __init__(self, name: Union[str, bytes], listen_address: str,
                 broker_address: str = "inproc://broker", logger: Optional[logging.Logger] = None,
                 cache: Optional[Store] = None, messages: int = sys.maxsize,
                 **keys: KeyPath) -> None:
        super().__init__(name, listen_address, zmq.PULL, reply=False,
                         broker_address=broker_address, bind=True, logger=logger,
                         cache=cache, messages=messages, **keys)


class PushService(Outbound):
    """Binds a PUSH socket (workers PULL from it)."""

    def __init__(self, name: Union[str, bytes], listen_address: str,
                 broker_address: str = "inproc://broker", logger: Optional[logging.Logger] = None,
                 cache: Optional[Store] = None, messages: int = sys.maxsize,
                 **keys: KeyPath) -> None:
        super().__init__(name, listen_address, zmq.PUSH, reply=False,
                         broker_address=broker_address, bind=True, logger=logger,
                         cache=cache, messages=messages, **keys)


class PubService(DefaultStream, Outbound):
    """Binds a PUB socket and publishes each message under the topic
    ``handle_stream`` gives it.

    The socket is our servers' XPUB (pylm._runtime.Runtime.publisher): a
    slow subscriber holds messages in the part, and the Router stops
    reading the inbound parts that feed it (back-pressure), instead of
    losing them.

    :param pipelined: publish to the next stage (topic `server`,
        ``stage += 1``) instead of to the client (topic ``message.client``)
    :param server: name of the server, the topic when pipelined
    :param hold_replies: a message whose topic no one subscribes to yet is
        held, at most this many at once, and published when its
        subscription arrives (as by the servers of pylm.servers;
        pylm_core/subscriptions.pyx)
    :param hold_seconds: ... and for at most this long; ``held_dropped``
        counts those dropped past either bound
    """

    def __init__(self, name: Union[str, bytes], listen_address: str,
                 broker_address: str = "inproc://broker", logger: Optional[logging.Logger] = None,
                 cache: Optional[Store] = None, messages: int = sys.maxsize,
                 pipelined: bool = False, server: Optional[str] = None, *,
                 hold_replies: int = _core.HOLD_REPLIES,
                 hold_seconds: float = _core.HOLD_SECONDS, **keys: KeyPath) -> None:
        if hold_replies < 0 or hold_seconds < 0:
            raise ValueError("hold_replies and hold_seconds must not be negative")
        super().__init__(name, listen_address, zmq.PUB, reply=False,
                         broker_address=broker_address, bind=True, logger=logger,
                         cache=cache, messages=messages, **keys)
        # pylm 0.14: the topic of a pipelined server (None when it is not)
        self.name = server  # type: ignore[assignment]
        self.pipelined = pipelined
        self.hold_replies = hold_replies
        self.hold_seconds = hold_seconds
        self._held = _core.Subscriptions(hold_replies, hold_seconds)

    @property
    def held_dropped(self) -> int:
        """Held messages dropped past hold_seconds or hold_replies."""
        return self._held.held_dropped

    def _open(self, rt: Runtime, runner: Any) -> None:
        super()._open(rt, runner)
        self._held = _core.Subscriptions(self.hold_replies, self.hold_seconds)
        if self.hold_replies:
            runner._tick(self, _core.HOLD_TICK_MS_)

    def _on_tick(self) -> bool:
        self._held.on_timer()
        self._send_released()
        return False

    def _send_released(self) -> None:
        for topic, data in self._held.released():
            super()._send([topic, data])

    def _read_subscriptions(self) -> None:
        """Take in the subscription messages waiting on the socket."""
        for _ in range(READ_BATCH):
            try:
                frames = self.listen_to.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._answer(frames)

    def _send(self, frames: List[bytes]) -> None:
        topic, data = frames
        legacy = _core.is_legacy_reply(data)
        if legacy:
            # what libzmq knows of the old client's SUBs (see Subscriptions)
            self._read_subscriptions()
        if self._held.offer(topic, data, legacy):
            super()._send(frames)

    def _make_socket(self, rt: Runtime) -> Socket:
        return rt.publisher(self.listen_address, MAX_MESSAGE_SIZE, security=self._security)

    def _listen_events(self) -> int:
        # subscriptions arrive here; reading them keeps libzmq's queue of
        # them from growing
        return zmq.POLLIN

    def _answer(self, frames: List[bytes]) -> None:
        """A subscription message: messages held for it go now."""
        self._held.note(frames[0])
        self._send_released()

    def _prepare(self, data: Any) -> Iterator[List[bytes]]:
        message = _to_message(self._translate_from_broker(data))
        for scattered in self.scatter(message):
            streamed = self.handle_stream(scattered)
            if streamed is None:
                continue
            topic: Any          # a subclass's handle_stream may give bytes or None
            out: Any
            topic, out = streamed
            if out is None:
                continue
            topic = topic.encode("utf-8") if isinstance(topic, str) else (topic or b"")
            yield [topic, _to_bytes(out)]  # type: ignore[list-item]  # out is not None


class WorkerPushService(PushService):
    """The PUSH to workers: messages go out as the Router gives them."""

    def _translate_from_broker(self, message_data: Any) -> Any:
        return message_data

    def _translate_to_broker(self, message_data: Any) -> Any:
        return message_data


class WorkerPullService(PullService):
    """The PULL from workers: results are routed as they come (no cache
    key is added)."""

    def _translate_to_broker(self, message_data: Any) -> Any:
        return message_data

    def _translate_from_broker(self, message_data: Any) -> Any:
        return message_data


class PushPullService(Outbound):
    """An outbound part to workers over PUSH (bound at `push_address`) and
    PULL (bound at `pull_address`): each message is pushed and the answer
    pulled before the next; the answers are its feedback."""

    def __init__(self, name: Union[str, bytes], push_address: str, pull_address: str,
                 broker_address: str = "inproc://broker", logger: Optional[logging.Logger] = None,
                 cache: Optional[Store] = None, messages: int = sys.maxsize,
                 **keys: KeyPath) -> None:
        super().__init__(name, push_address, zmq.PUSH, reply=True,
                         broker_address=broker_address, bind=True, logger=logger,
                         cache=cache, messages=messages, **keys)
        self.push_address = push_address
        self.pull_address = pull_address
        self.push: Any = None       # the sockets, once open
        self.pull: Any = None

    def _listen_events(self) -> int:
        return 0        # answers come on the PULL socket

    def _open(self, rt: Runtime, runner: Any) -> None:
        super()._open(rt, runner)
        self.push = self.listen_to
        self.pull = rt.socket(zmq.PULL, bind=self.pull_address, security=self._security,
                              MAXMSGSIZE=MAX_MESSAGE_SIZE)
        runner._watch(self.pull, self._on_pull, zmq.POLLIN)

    def _on_pull(self, events: int) -> None:
        while True:
            try:
                frames = self.pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._answer(frames)


class RepBypassService(BypassInbound):
    """A REP socket served beside the Router; ``recv()`` answers each
    request (with b'' unless overridden)."""

    def __init__(self, name: Union[str, bytes], listen_address: str,
                 logger: Optional[logging.Logger] = None, cache: Optional[Store] = None,
                 messages: int = sys.maxsize, **keys: KeyPath) -> None:
        super().__init__(name, listen_address, zmq.REP, reply=True, bind=True, logger=logger,
                         cache=cache, messages=messages, **keys)


class CacheService(RepBypassService):
    """The server's cache at `listen_address` (its ``db_address``) for
    clients and workers: envelopes whose function ends in ``.set``,
    ``.get`` or ``.delete``, answered with raw bytes (shared/API.md).

    Remote requests obey the rules of pylm._cache: no ``set``/``delete``
    of the configuration keys (pylm._cache.CONFIG_KEYS and
    `protected_keys`), no ``set`` past the bound.  Registered with a
    ServerTemplate, the keywords default to the template's (its
    ``preset_cache`` keys are protected).

    :param protected_keys: keyword-only; keys a remote request may not
        set or delete (a set may grow while the service runs)
    :param cache_max_entries: keyword-only; the most entries remote sets
        may store
    :param cache_max_bytes: keyword-only; the most bytes (keys plus
        values) they may store
    """

    def __init__(self, name: Union[str, bytes], listen_address: str,
                 logger: Optional[logging.Logger] = None, cache: Optional[Store] = None,
                 messages: int = sys.maxsize, *, protected_keys: Iterable[str] = (),
                 cache_max_entries: int = CACHE_MAX_ENTRIES,
                 cache_max_bytes: int = CACHE_MAX_BYTES, **keys: KeyPath) -> None:
        store = DictDB() if cache is None else cache
        super().__init__(name, listen_address, logger=logger, cache=store, messages=messages,
                         **keys)
        self.handler = CacheHandler(store, protected_keys, cache_max_entries,
                                    cache_max_bytes, drop_log=self._drop)

    def _drop(self, reason: str) -> None:
        if self._drops is not None:
            self._drops(reason)

    def recv(self) -> bytes:  # type: ignore[override]
        """Answer one cache request; a bad one gets b'' (a refused one:
        see pylm._cache)."""
        frames: List[bytes] = self.listen_to.recv_multipart()
        self.listen_to.send_multipart(self.handler.answer(frames))
        return frames[-1]


# -- HTTP ------------------------------------------------------------------------

class _PooledHTTPServer(PooledServerMixIn, HTTPServer):
    allow_reuse_address = True


class _Handler(BaseHTTPRequestHandler):
    """What the HTTP parts share: bounded bodies, answers with a length
    (keep-alive), the deadlines of pylm._http, the part's logger.  `owner`
    (the part) is set on the subclass each part makes."""

    protocol_version = "HTTP/1.1"
    server_version = "pylm"
    owner: Any = None
    server: _PooledHTTPServer

    def setup(self) -> None:
        self.timeout = self.server.read_timeout  # type: ignore[misc]  # each socket operation
        super().setup()

    def handle(self) -> None:
        """The requests of one connection, the next one only while it is
        kept alive, starts within KEEPALIVE_IDLE s and arrives within
        `read_timeout` s (pylm._http)."""
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection:
            if not self.server.next_request(self.rfile, self.connection):
                return
            self.handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:
        self.owner.logger.debug("http %s: %s", self.address_string(), format % args)

    def handle_expect_100(self) -> bool:
        # refuse a body too long before the client sends it
        _, refusal = body_length(self.headers.get("Content-Length"),
                                 self.owner.max_request_bytes, required=False)
        if refusal is not None:
            self.answer(*refusal, close=True)
            return False
        return super().handle_expect_100()

    def read_body(self, required: bool) -> Optional[bytes]:
        """The request body, or None once the error was answered (411 no
        length or a Transfer-Encoding, 400 bad length or short body, 413
        too long: pylm._http.body_length)."""
        if "Transfer-Encoding" in self.headers:
            self.answer(411, b"Transfer-Encoding is not supported; send Content-Length",
                        close=True)
            return None
        n, refusal = body_length(self.headers.get("Content-Length"),
                                 self.owner.max_request_bytes, required)
        if refusal is not None:
            self.answer(*refusal, close=True)
            return None
        assert n is not None                # no refusal: a length
        body = self.rfile.read(n)
        if len(body) < n:
            self.answer(400, b"body shorter than its Content-Length", close=True)
            return None
        self.server.request_read(self.connection)
        return body

    def answer(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
               close: bool = False) -> None:
        """Send the answer; `close` when the request was not read whole
        (the connection is closed after lingering).  A connection is not
        kept alive either when the server says so (pylm._http: others wait
        for a thread, or it serves one request)."""
        ending = close or not self.server.keep_alive()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if ending:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        if close:
            self.wfile.flush()
            linger(self.connection)


class _HttpRunner:
    """An HTTP server (bound when made) for a part, served in a thread of
    the server's Runtime by a pool of `max_concurrent` threads (pylm._http),
    shut down when the loop ends."""

    def __init__(self, owner: Any, host: str, port: int,
                 handler_class: Type[BaseHTTPRequestHandler]) -> None:
        handler = type(handler_class.__name__, (handler_class,), {"owner": owner})
        self.server = _PooledHTTPServer((host, port), handler,
                                        max_concurrent=owner.max_concurrent,
                                        max_queued=owner.max_queued,
                                        read_timeout=owner.read_timeout, logger=owner.logger)
        self.thread: Optional[threading.Thread] = None

    @property
    def address(self) -> Tuple[Any, ...]:
        return self.server.server_address[:2]

    def start(self, rt: Runtime, name: str) -> None:
        self.thread = rt.thread(self.server.serve_forever, name, 0.1)

    def close(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()


def _ask_loop(address: str, frames: List[bytes], timeout: Optional[float],
              identity: Optional[bytes] = None) -> Optional[List[bytes]]:
    """Send frames to the ROUTER of a part at inproc `address` and wait for
    its answer (its frames), or None after `timeout` seconds.  Each call has
    a DEALER of its own: HTTP threads share no socket."""
    sock = context().socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        if identity is not None:
            sock.setsockopt(zmq.IDENTITY, identity)
        sock.connect(address)
        sock.send_multipart(frames)
        if not sock.poll(None if timeout is None else int(timeout * 1000), zmq.POLLIN):
            return None
        return sock.recv_multipart()
    finally:
        sock.close(linger=0)


class _ServiceHandler(_Handler):

    def do_POST(self) -> None:
        body = self.read_body(required=True)
        if body is None:
            return
        frames = _ask_loop(self.owner.listen_address, [b"", body], self.owner.timeout)
        if frames is None:
            self.answer(504, b"no answer within %g s" % self.owner.timeout)
            return
        self.answer(int(frames[-2]), frames[-1], "application/octet-stream")

    def do_GET(self) -> None:
        self.answer(405, b"POST an envelope", close=True)


class HttpService(Inbound):
    """An inbound part that is an HTTP server at `hostname`:`port`: the
    body of each POST is an envelope, routed as any inbound message, and
    the answer is ``reply_feedback()`` (the outbound's feedback with
    ``block=True``).  400 for a body that is no envelope, 500 when a part
    failed on it, 504 when no answer came in `timeout` seconds; 411, 400
    and 413 for a body without a length, with a bad one, or longer than
    `max_request_bytes` (refused before it is read).

    The HTTP server runs in a thread, with a pool of `max_concurrent`
    threads for the connections (pylm._http: more connections wait in a
    listen backlog of `max_queued`; a client has `read_timeout` seconds to
    send its request); requests reach the loop over inproc and are served
    one at a time (the feedback hooks are per part, as in pylm 0.14).
    ``self.address`` is the bound (host, port) once running.
    """

    def __init__(self, name: Union[str, bytes], hostname: str, port: int,
                 broker_address: str = "inproc://broker", logger: Optional[logging.Logger] = None,
                 cache: Optional[Store] = None, messages: int = sys.maxsize, *,
                 max_request_bytes: int = MAX_REQUEST_BYTES,
                 max_concurrent: int = MAX_CONCURRENT, max_queued: int = MAX_QUEUED,
                 read_timeout: float = READ_TIMEOUT, timeout: float = HTTP_TIMEOUT) -> None:
        super().__init__(name, "inproc://pylm-http-service-%s" % uuid.uuid4().hex, zmq.ROUTER,
                         reply=True, broker_address=broker_address, bind=True, logger=logger,
                         cache=cache, messages=messages)
        self.hostname = hostname
        self.port = port
        self.max_request_bytes = max_request_bytes
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.read_timeout = read_timeout
        self.timeout = timeout
        self.address: Optional[Tuple[Any, ...]] = None
        self._http: Optional[_HttpRunner] = None

    def _open(self, rt: Runtime, runner: Any) -> None:
        super()._open(rt, runner)
        self._http = _HttpRunner(self, self.hostname, self.port, _ServiceHandler)
        self.address = self._http.address
        self._http.start(rt, "%s-http" % self._label)
        self.logger.info("%s: HTTP at %s:%d", self._label, *self.address)

    def _close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def debug(self) -> Any:
        """Run the service alone in the foreground (pylm 0.14): start()."""
        return self.start()

    def _reject(self, prefix: List[bytes], exc: BaseException) -> None:
        self._drops("%s: %s" % (self._label, exc))
        self._send_reply(prefix, str(exc).encode(), 400)

    def _send_reply(self, prefix: List[bytes], data: bytes, status: int) -> None:
        try:
            self.listen_to.send_multipart(prefix + [str(status).encode(), data], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self._drops("%s: reply not sent: %s" % (self._label, exc))

