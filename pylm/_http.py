"""The HTTP server under every HTTP part: a bounded pool of threads and
bounded reads.

HttpService and HttpGateway (pylm.parts) and DebugServer (pylm.remote.server)
are standard-library HTTP servers (http.server, wsgiref).  socketserver's
ThreadingMixIn starts a thread for each connection, so that a crowd of
clients (or of half-open connections) makes as many threads.
:class:`PooledServerMixIn` serves them with a pool of at most
`max_concurrent` threads instead:

- A connection is accepted only when a thread of the pool is free.  The
  others wait in the kernel's listen backlog, `max_queued` connections long;
  past that the kernel leaves new handshakes unanswered and clients retry
  (as TCP does) until there is room.  Nothing is refused with a 503: a
  client that waits gets its answer, and a busy server spends no thread on
  refusals.
- A request must arrive whole (request line, headers, body) within
  `read_timeout` seconds of the connection being accepted, or of the
  previous answer on a kept-alive connection; a kept-alive connection that
  sends nothing for :data:`KEEPALIVE_IDLE` seconds is closed, and so is one
  that just got its answer while connections wait for a thread.  A client
  slower than that has its connection shut down for reading, which frees
  its thread.  Writes to a client time out after `read_timeout` too.
- Bodies are bounded (:data:`MAX_REQUEST_BYTES` by default, 413 above); the
  handlers check the length before they read.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import socketserver
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, Optional, Set, Tuple

from pylm_core import _core

__all__ = ["PooledServerMixIn", "body_length", "linger", "MAX_REQUEST_BYTES", "MAX_CONCURRENT",
           "MAX_QUEUED", "READ_TIMEOUT", "KEEPALIVE_IDLE"]

#: Largest request body read (413 above it): a body becomes one message
#: (pylm_core/consts.pxi).
MAX_REQUEST_BYTES = _core.MAX_MESSAGE_SIZE_
#: Requests served at once by one HTTP server (threads of its pool).
MAX_CONCURRENT = 16
#: Connections waiting in the listen backlog for a thread of the pool.
MAX_QUEUED = 64
#: Seconds a client has to send a whole request (and each write to it may take).
READ_TIMEOUT = 30.0
#: Seconds a kept-alive connection may stay silent before its next request.
KEEPALIVE_IDLE = 5.0

#: ``(status, text)`` of an answer that refuses a request.
Refusal = Tuple[int, bytes]

if TYPE_CHECKING:
    # what the mixin is mixed into, for the type checker (at run time the
    # mixin's base is object: it must come before the server class)
    _MixedInto = socketserver.TCPServer
else:
    _MixedInto = object


class PooledServerMixIn(_MixedInto):
    """Mix in before a socketserver.TCPServer subclass (HTTPServer,
    WSGIServer): connections are served by a pool of at most
    `max_concurrent` daemon threads, accepted only when one is free (see
    the module's docstring).

    Handlers call :meth:`expect_request` / :meth:`request_read` around the
    reading of a request (the first request's deadline is set when the
    connection is accepted), :meth:`next_request` before the next request
    of a kept-alive connection, and :meth:`keep_alive` to decide whether to
    keep a connection alive.  ``busy`` and ``most_busy`` count the
    connections being served now and at most so far.

    Daemon threads rather than a ThreadPoolExecutor: the executor's
    threads are joined at interpreter exit, and one held by a client would
    hold the exit up.
    """

    def __init__(self, server_address: Tuple[str, int],
                 handler_class: Any, *,
                 max_concurrent: int = MAX_CONCURRENT, max_queued: int = MAX_QUEUED,
                 read_timeout: float = READ_TIMEOUT,
                 logger: Optional[logging.Logger] = None) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1, not %r" % (max_concurrent,))
        self.max_concurrent = max_concurrent
        self.request_queue_size = max(1, max_queued)     # the listen backlog
        self.read_timeout = read_timeout
        self.keepalive_idle = KEEPALIVE_IDLE
        self.logger = logger if logger is not None else logging.getLogger("pylm.http")
        self.busy = 0
        self.most_busy = 0
        self._slots = threading.Semaphore(max_concurrent)
        self._lock = threading.Lock()
        self._work: queue.SimpleQueue[Optional[Tuple[socket.socket, Any]]] = \
            queue.SimpleQueue()
        self._threads = 0
        self._idle = 0
        # connections accepted and not yet closed; connection -> time its
        # request must be in by
        self._active: Set[socket.socket] = set()
        self._deadlines: Dict[socket.socket, float] = {}
        self._closing = False
        self._inline = False
        self._poll_interval = 0.5
        super().__init__(server_address, handler_class)

    # accepting ---------------------------------------------------------------------
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._poll_interval = poll_interval
        super().serve_forever(poll_interval)

    def service_actions(self) -> None:
        self._expire()

    def get_request(self) -> Tuple[socket.socket, Any]:
        """Accept a connection once a thread of the pool is free."""
        while not self._slots.acquire(timeout=self._poll_interval):
            self._expire()
            if self._closing:
                raise OSError("the HTTP server is closing")
        try:
            request, client_address = super().get_request()
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._active.add(request)
            self.busy = len(self._active)
            self.most_busy = max(self.most_busy, self.busy)
        self.expect_request(request, self.read_timeout)
        return request, client_address

    def process_request(self, request: socket.socket,  # type: ignore[override]
                        client_address: Any) -> None:
        """Hand the connection to a thread of the pool (in this thread
        within handle_request())."""
        if self._inline:
            self._serve(request, client_address)
            self._slots.release()
            return
        with self._lock:
            spawn = self._idle == 0
            if spawn:
                self._threads += 1
            else:
                self._idle -= 1
        if spawn:
            try:
                threading.Thread(target=self._pool_thread, daemon=True,
                                 name="pylm-http-%d" % self.server_address[1]).start()
            except BaseException:
                with self._lock:
                    self._threads -= 1
                raise
        self._work.put((request, client_address))

    def handle_request(self) -> None:
        """Serve one connection, in this thread."""
        self._inline = True
        try:
            super().handle_request()
        finally:
            self._inline = False

    def _pool_thread(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            self._serve(*item)
            with self._lock:
                self._idle += 1     # before the slot frees: the next one reuses this thread
            self._slots.release()

    def _serve(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self._forget(request)
            super().shutdown_request(request)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        # socketserver calls this only for a connection it did not hand to
        # process_request (refused by verify_request, or process_request failed)
        self._forget(request)
        super().shutdown_request(request)
        self._slots.release()

    def _forget(self, request: socket.socket) -> None:
        with self._lock:
            self._active.discard(request)
            self._deadlines.pop(request, None)
            self.busy = len(self._active)

    def handle_error(self, request: socket.socket,  # type: ignore[override]
                     client_address: Any) -> None:
        """Log (instead of socketserver's print to stderr): a client that
        went away or was too slow (OSError) at DEBUG, anything else as an
        error."""
        if isinstance(sys.exc_info()[1], OSError):
            self.logger.debug("HTTP connection from %s failed", client_address, exc_info=True)
        else:
            self.logger.error("HTTP connection from %s failed", client_address, exc_info=True)

    # deadlines ---------------------------------------------------------------------
    def expect_request(self, request: socket.socket, seconds: float) -> None:
        """Shut `request` (a connection) down for reading unless
        :meth:`request_read` is called within `seconds`."""
        with self._lock:
            if request in self._active:
                self._deadlines[request] = time.monotonic() + seconds

    def request_read(self, request: socket.socket) -> None:
        """The request on `request` was read whole: no deadline any more."""
        with self._lock:
            self._deadlines.pop(request, None)

    def next_request(self, rfile: Any, request: socket.socket) -> bool:
        """Wait on a kept-alive connection for the start of its next
        request (at most `keepalive_idle` s): True once it started (its
        deadline is then `read_timeout` again), False when the connection
        closed or stayed silent."""
        self.expect_request(request, min(self.keepalive_idle, self.read_timeout))
        try:
            started = bool(rfile.peek(1))
        except OSError:             # socket.timeout included
            return False
        self.expect_request(request, self.read_timeout)
        return started

    def keep_alive(self) -> bool:
        """Whether a connection may stay open after its answer: not within
        handle_request() (one request, then it returns), nor while every
        thread of the pool is busy and a connection waits for one (closing
        this one gives the waiting one its thread)."""
        if self._inline:
            return False
        with self._lock:
            if len(self._active) < self.max_concurrent:
                return True
        try:
            readable, _, _ = select.select([self.socket], [], [], 0)
        except (OSError, ValueError):
            return True
        return not readable

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            late = [request for request, deadline in self._deadlines.items() if deadline <= now]
            for request in late:
                del self._deadlines[request]
        for request in late:
            try:
                peer = request.getpeername()
                request.shutdown(socket.SHUT_RD)    # the blocked read returns: the thread is free
            except OSError:
                continue
            self.logger.info("HTTP: closed the connection from %s: no whole request "
                             "within the time allowed", peer[0])

    # closing -----------------------------------------------------------------------
    def shutdown(self) -> None:
        self._closing = True
        super().shutdown()

    def server_close(self) -> None:
        """Stop accepting, and end the connections still served (their
        blocked reads return), so that the pool's threads end."""
        self._closing = True
        super().server_close()
        with self._lock:
            active = list(self._active)
            threads, self._threads = self._threads, 0
        for request in active:
            try:
                request.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for _ in range(threads):
            self._work.put(None)


def body_length(value: Optional[str], limit: int, required: bool = True
                ) -> Tuple[Optional[int], Optional[Refusal]]:
    """Check a request's Content-Length (`value`, None when absent) against
    `limit`: ``(length, None)``, or ``(None, (status, text))`` for the
    answer that refuses it without reading the body: 411 no length (when
    `required`; else the length is 0), 400 not a decimal number, 413 more
    than `limit` bytes."""
    if value is None or not value.strip():
        if required:
            return None, (411, b"a body with a Content-Length is required")
        return 0, None
    value = value.strip()
    if not (value.isascii() and value.isdigit()):
        return None, (400, b"bad Content-Length")
    length = int(value)
    if length > limit:
        return None, (413, b"body of %d bytes; at most %d accepted" % (length, limit))
    return length, None


def linger(connection: socket.socket, most: int = 1 << 20, seconds: float = 1.0) -> None:
    """Before closing a connection whose request body was not read: stop
    writing and read what the client still sends (up to `most` bytes or
    `seconds`), so that closing does not reset the connection before the
    client read the answer (a close with unread data sends a TCP reset)."""
    try:
        connection.shutdown(socket.SHUT_WR)
        connection.settimeout(seconds)
        deadline = time.monotonic() + seconds
        while most > 0 and time.monotonic() < deadline:
            chunk = connection.recv(min(most, 65536))
            if not chunk:
                break
            most -= len(chunk)
    except OSError:
        pass

