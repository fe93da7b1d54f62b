"""Connections: parts that connect to their address (services bind), and
:class:`HttpConnection`, the outbound part to HTTP workers
(``pylm.remote.server``)."""

from __future__ import annotations

import collections
import functools
import http.client
import os
import queue
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Deque, List, Optional, Tuple, Type, Union
from urllib.parse import urlsplit

import zmq

from pylm.errors import DecodeError, PylmError
from pylm.parts.core import (HTTP_TIMEOUT, MAX_MESSAGE_SIZE, BypassInbound, BypassOutbound,
                             Inbound, Outbound, PartFailed, _to_bytes,
                             error_reply)
from pylm.parts.core import _OutboundExchange
from pylm.parts.messages_pb2 import PalmMessage
from pylm.security import KeyPath

if TYPE_CHECKING:
    import logging

    from pylm._cache import Store
    from pylm._runtime import Runtime
    from pylm.security import Socket

#: What a POST to an HTTP worker gave: status, reason, body.
_Answer = Tuple[int, str, bytes]

__all__ = ["RepConnection", "SubConnection", "PullConnection", "PushConnection",
           "PushBypassConnection", "PullBypassConnection", "HttpConnection", "HttpStatusError",
           "HttpResponseTooLarge"]

#: Bytes read at a time from an HTTP worker's answer.
_READ_CHUNK = 65536

class RepConnection(Inbound):
    """Connects a REP socket to `listen_address`: each request is routed,
    and answered with ``reply_feedback()``."""

    def __init__(self, name: Union[str, bytes], listen_address: str,
                 broker_address: str = "inproc://broker", logger: Optional[logging.Logger] = None,
                 cache: Optional[Store] = None, messages: int = sys.maxsize,
                 **keys: Any) -> None:
        super().__init__(name, listen_address, zmq.REP, reply=True,
                         broker_address=broker_address, logger=logger, cache=cache,
                         messages=messages, **keys)


class SubConnection(Inbound):
    """Subscribes to topic `previous` of the PUB at `listen_address`."""

    def __init__(self, name: Union[str, bytes], listen_address: str, previous: str,
                 broker_address: str = "inproc://broker", logger: Optional[logging.Logger] = None,
                 cache: Optional[Store] = None, messages: int = sys.maxsize,
                 **keys: Any) -> None:
        super().__init__(name, listen_address, zmq.SUB, reply=False,
                         broker_address=broker_address, logger=logger, cache=cache,
                         messages=messages, **keys)
        self.previous = previous

    def _make_socket(self, rt: Runtime) -> Socket:
        return rt.socket(zmq.SUB, connect=self.listen_address, security=self._security,
                         MAXMSGSIZE=MAX_MESSAGE_SIZE, SUBSCRIBE=self.previous.encode())


class PullConnection(Inbound):
    """Connects a PULL socket to `listen_address`."""

    def __init__(self, name: Union[str, bytes], listen_address: str,
                 broker_address: str = "inproc://broker", logger: Optional[logging.Logger] = None,
                 cache: Optional[Store] = None, messages: int = sys.maxsize,
                 **keys: Any) -> None:
        super().__init__(name, listen_address, zmq.PULL, reply=False,
                         broker_address=broker_address, logger=logger, cache=cache,
                         messages=messages, **keys)


class PushConnection(Outbound):
    """Connects a PUSH socket to `listen_address`."""

    def __init__(self, name: Union[str, bytes], listen_address: str,
                 broker_address: str = "inproc://broker", logger: Optional[logging.Logger] = None,
                 cache: Optional[Store] = None, messages: int = sys.maxsize,
                 **keys: Any) -> None:
        super().__init__(name, listen_address, zmq.PUSH, reply=False,
                         broker_address=broker_address, logger=logger, cache=cache,
                         messages=messages, **keys)


class PushBypassConnection(BypassOutbound):
    """A PUSH connected to `listen_address` that user code sends on
    (``send()``), beside the Router: logs, metrics."""

    def __init__(self, name: Union[str, bytes], listen_address: str,
                 logger: Optional[logging.Logger] = None, messages: int = sys.maxsize,
                 cache: Optional[Store] = None, **keys: KeyPath) -> None:
        super().__init__(name, listen_address, zmq.PUSH, reply=False, bind=False,
                         logger=logger, cache=cache, messages=messages, **keys)


class PullBypassConnection(BypassInbound):
    """A PULL connected to `listen_address`, read beside the Router: each
    message goes to ``recv()`` (which drops it unless overridden)."""

    def __init__(self, name: Union[str, bytes], listen_address: str,
                 logger: Optional[logging.Logger] = None, messages: int = sys.maxsize,
                 cache: Optional[Store] = None, **keys: KeyPath) -> None:
        super().__init__(name, listen_address, zmq.PULL, reply=False, bind=False,
                         logger=logger, cache=cache, messages=messages, **keys)


def _drain_fd(fd: int) -> None:
    """Empty a non-blocking wake-up pipe."""
    try:
        while os.read(fd, 4096):
            pass
    except OSError:         # BlockingIOError: empty
        pass


class HttpStatusError(PylmError):
    """An HTTP worker answered with an error status and no error envelope."""


class HttpResponseTooLarge(PylmError):
    """An HTTP worker's answer is longer than the connection reads
    (``max_response_bytes``): announced so, or sent without a length
    (chunked, or until the connection closes) and running past it."""


class HttpConnection(Outbound):
    """An outbound part to an HTTP worker (``pylm.remote.server``): each
    message is POSTed to the URL `listen_address`, and the answer (an
    envelope) is its feedback.

    Up to `max_workers` requests run at once, in a thread pool, over a pool
    of kept-alive connections; the loop is never blocked.  A request that
    fails has as feedback the envelope with its ``error`` set, so that a
    client waiting for it raises pylm.RemoteError: no connection, an error
    status (HttpStatusError), no answer within `timeout` seconds (to
    connect, for each read, and for the whole body), an answer longer than
    `max_response_bytes` (HttpResponseTooLarge; never read further, the
    connection is dropped).
    """

    def __init__(self, name: Union[str, bytes], listen_address: str, reply: bool = True,
                 broker_address: str = "inproc://broker", logger: Optional[logging.Logger] = None,
                 cache: Optional[Store] = None, max_workers: int = 4,
                 messages: int = sys.maxsize, *, timeout: float = HTTP_TIMEOUT,
                 max_response_bytes: int = MAX_MESSAGE_SIZE) -> None:
        super().__init__(name, listen_address, None, reply=reply,  # type: ignore[arg-type]
                         broker_address=broker_address, logger=logger, cache=cache,
                         messages=messages)
        url = urlsplit(listen_address)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("HttpConnection needs an http(s):// URL, not %r" % listen_address)
        self.url = listen_address
        self.max_workers = max_workers
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self._connection_class: Type[http.client.HTTPConnection] = (
            http.client.HTTPSConnection if url.scheme == "https"
                                  else http.client.HTTPConnection)
        self._host, self._port = url.hostname, url.port
        self._path = (url.path or "/") + ("?" + url.query if url.query else "")
        self._executor: Optional[ThreadPoolExecutor] = None
        self._connections: queue.LifoQueue[http.client.HTTPConnection] = queue.LifoQueue()
        self._lock = threading.Lock()
        self._results: Deque[Tuple[_OutboundExchange, bytes, Future[_Answer]]] = \
            collections.deque()
        self._wake: Optional[Tuple[int, int]] = None
        self._closed = True
        self._inflight = 0

    # lifecycle -----------------------------------------------------------------------
    def _open(self, rt: Runtime, runner: Any) -> None:
        super()._open(rt, runner)       # no socket: listen_to stays None
        self._inflight = 0
        self._results.clear()
        wake = self._wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=self.max_workers,
                                            thread_name_prefix="pylm-http-%s" % self._label)
        runner._watch(wake[0], self._on_wake, zmq.POLLIN)

    def _make_socket(self, rt: Runtime) -> None:  # type: ignore[override]
        return None

    def _close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            assert self._wake is not None and self._executor is not None   # opened
            for fd in self._wake:
                os.close(fd)
            self._wake = None
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None
        self._close_connections()

    def _close_connections(self) -> None:
        while True:
            try:
                self._connections.get_nowait().close()
            except queue.Empty:
                return

    def _idle(self) -> bool:
        return self._inflight == 0 and not self._results

    def _backlog_size(self) -> int:
        return self._inflight

    # routing -------------------------------------------------------------------------
    def _submit(self, data: Any, done: Optional[Tuple[Any, ...]]) -> None:
        exchange = self._take(data, done)
        if exchange is None:
            return
        try:
            bodies = [frames[-1] for frames in self._prepare(data)]
        except Exception as exc:
            self._failed(exchange, exc)
            return
        if not bodies:
            self._finish(exchange, self._reply_feedback())
            return
        exchange.remaining = len(bodies)
        assert self._executor is not None       # the Router gives only to an open part
        for body in bodies:
            self._inflight += 1
            future = self._executor.submit(self._post, body)
            future.add_done_callback(functools.partial(self._completed, exchange, body))
        self._check_backlog()

    def _reply_feedback(self) -> Optional[bytes]:
        try:
            return _to_bytes(self._call_hook("reply_feedback", self.reply_feedback))
        except PartFailed:
            return None

    def _completed(self, exchange: _OutboundExchange, body: bytes,
                   future: Future[_Answer]) -> None:
        # in a pool thread: hand the result to the loop and wake it
        with self._lock:
            if self._closed:
                return
            self._results.append((exchange, body, future))
            assert self._wake is not None           # not closed
            try:
                os.write(self._wake[1], b"x")
            except BlockingIOError:
                pass        # the loop has a wake-up pending already

    def _on_wake(self, events: int) -> None:
        assert self._wake is not None               # polled only while open
        _drain_fd(self._wake[0])
        results = self._results
        while results:
            exchange, body, future = results.popleft()
            self._inflight -= 1
            feedback: Any = self._feedback_of(body, future)
            if self.reply:
                try:
                    feedback = self._call_hook("_translate_to_broker",
                                               self._translate_to_broker, feedback)
                    self._call_hook("handle_feedback", self.handle_feedback, feedback)
                except PartFailed:
                    pass
            exchange.remaining -= 1
            if exchange.remaining == 0:
                self._finish(exchange, self._reply_feedback())
        self._check_backlog()

    def _feedback_of(self, body: bytes, future: Future[_Answer]) -> bytes:
        """The envelope (bytes) a request brought back, or the request's
        envelope with the error that stopped it."""
        try:
            status, reason, data = future.result()
        except Exception as exc:
            self.logger.error("%s: POST to %s failed: %s: %s", self._label, self.url,
                              type(exc).__name__, exc)
            return error_reply(_parse(body), exc)
        if status == 200:
            return data
        answer = _parse(data)
        if answer is not None and answer.error:
            return data     # the worker's own error envelope
        error = HttpStatusError("HTTP %d %s from %s: %s" % (
            status, reason, self.url, data[:200].decode("utf-8", "replace")))
        self.logger.error("%s: %s", self._label, error)
        return error_reply(_parse(body), error)

    # in the pool's threads -----------------------------------------------------------
    def _post(self, body: bytes) -> _Answer:
        """POST body; ``(status, reason, data)``.  A kept-alive connection
        the server closed meanwhile is retried once on a new one."""
        for attempt in (0, 1):
            try:
                conn, reused = self._connections.get_nowait(), True
            except queue.Empty:
                conn, reused = self._connection_class(self._host, self._port,
                                                      timeout=self.timeout), False
            response = None
            try:
                conn.request("POST", self._path, body=body,
                             headers={"Content-Type": "application/octet-stream"})
                response = conn.getresponse()
                data = self._read_body(response)
            except BaseException as exc:
                # the response holds the socket open (its file) until closed
                if response is not None:
                    response.close()
                conn.close()
                if reused and attempt == 0 and isinstance(exc, (
                        http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
                    continue
                raise
            if response.will_close:
                conn.close()
            else:
                with self._lock:
                    closed = self._closed
                if closed:
                    conn.close()
                else:
                    self._connections.put(conn)
            return response.status, response.reason, data
        raise AssertionError("unreachable")

    def _read_body(self, response: http.client.HTTPResponse) -> bytes:
        """The body of `response`: HttpResponseTooLarge past
        `max_response_bytes` (announced, or read so far), TimeoutError when
        it takes longer than `timeout` s in all.  Read with one system call
        at a time (``read1``), so that a worker trickling its answer is cut
        off at the deadline; each call is bounded by the socket's timeout."""
        limit = self.max_response_bytes
        if response.length is not None and response.length > limit:
            raise HttpResponseTooLarge("the answer from %s has %d bytes; at most %d are read"
                                       % (self.url, response.length, limit))
        deadline = time.monotonic() + self.timeout
        chunks: List[bytes] = []
        size = 0
        while True:
            chunk = response.read1(min(_READ_CHUNK, limit + 1 - size))
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise HttpResponseTooLarge("the answer from %s runs past %d bytes"
                                           % (self.url, limit))
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise TimeoutError("the answer from %s took more than %g s"
                                   % (self.url, self.timeout))
        data = b"".join(chunks)
        if response.length:         # the worker closed before its Content-Length
            raise http.client.IncompleteRead(data, response.length)
        response.read()             # b"": marks the response done, the connection reusable
        return data


def _parse(data: bytes) -> Optional[PalmMessage]:
    try:
        return PalmMessage.FromString(data)
    except (DecodeError, TypeError):
        return None
