"""HTTP workers: the other end of :class:`pylm.parts.connections.HttpConnection`.

Subclass :class:`RequestHandler` with one method per callable, as for a
Worker; :class:`WSGIApplication` makes it a WSGI application (for any WSGI
server), and :class:`DebugServer` serves that with the standard library's
wsgiref, for tests and development::

    class MyHandler(RequestHandler):
        def foo(self, payload):
            return payload + b" processed online"

    app = WSGIApplication(MyHandler)            # for gunicorn, uwsgi...
    DebugServer("localhost", 8888, MyHandler).serve_forever()

The request is a POST whose body is an envelope; the method named by its
``function`` (``server.method``, the entry at ``stage``) is called with
the payload, and the answer is the envelope with the result as payload:
200.  A method that raises is logged and answered 500 with the envelope
carrying the error (a pylm client raises it as RemoteError); a method
that does not exist, 404 likewise.  A body that is no envelope is 400, one
without a length 411, one over ``max_request_bytes`` 413 (not read), any
other HTTP method 405.

DebugServer serves with a bounded pool of threads and bounded reads
(pylm._http): at most `max_concurrent` requests at once (one without
``threaded=True``), the others waiting in a listen backlog of
`max_queued`; a client has `read_timeout` seconds to send its request.
"""

from __future__ import annotations

import io
import logging
from collections import namedtuple
from typing import (TYPE_CHECKING, Any, Callable, Dict, FrozenSet, Iterable, List, Optional,
                    Tuple, Type)
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

from pylm._dispatch import error_text, method_table
from pylm._http import (MAX_CONCURRENT, MAX_QUEUED, MAX_REQUEST_BYTES, READ_TIMEOUT,
                        PooledServerMixIn, body_length, linger)
from pylm_core.errors import BAD_FUNCTION, NO_METHOD, RemoteError
from pylm.errors import DecodeError
from pylm.parts.messages_pb2 import PalmMessage

__all__ = ["Request", "RequestHandler", "WSGIApplication", "DebugServer"]

logger = logging.getLogger("pylm.remote")

Request = namedtuple("Request", "method data")

_STATUS = {200: "200 OK", 400: "400 Bad Request", 404: "404 Not Found",
           405: "405 Method Not Allowed", 411: "411 Length Required",
           413: "413 Request Entity Too Large", 500: "500 Internal Server Error"}

#: RequestHandler subclass -> names callable from the wire
_methods_of: Dict[type, FrozenSet[str]] = {}


def _not_served(code: str, message: str) -> RemoteError:
    """The error answering a call this worker serves no method for."""
    return RemoteError("LookupError", message, "", code)


class RequestHandler:
    """One HTTP request to an HTTP worker; subclass it with the methods
    (``method(payload) -> bytes``) the wire may call.

    :param environ: the WSGI environ of the request

    Attributes: ``request`` (``Request(method, data)``), ``message`` (the
    envelope, once ``handle()`` parsed it), ``environ``.
    """

    #: Largest body read, in bytes (413 above it, before reading).
    max_request_bytes = MAX_REQUEST_BYTES

    def __init__(self, environ: WSGIEnvironment) -> None:
        self.environ = environ
        self.message: Optional[PalmMessage] = None
        self._refused: Optional[Tuple[int, bytes]] = None   # when the body was not read
        method = (environ.get("REQUEST_METHOD") or "GET").upper()
        data = self._read_body(environ) if method == "POST" else b""
        self.request = Request(method=method, data=data)

    def _read_body(self, environ: WSGIEnvironment) -> bytes:
        n, self._refused = body_length(environ.get("CONTENT_LENGTH"), self.max_request_bytes)
        if self._refused is not None:
            return b""
        assert n is not None                    # no refusal: a length
        data: bytes = environ["wsgi.input"].read(n)
        if len(data) < n:
            self._refused = (400, b"body shorter than its Content-Length")
        return data

    @classmethod
    def _callable_names(cls) -> FrozenSet[str]:
        names = _methods_of.get(cls)
        if names is None:
            own = set(dir(RequestHandler))
            names = frozenset(name.decode() for name in
                              method_table(cls.__new__(cls), always=())
                              if name.decode() not in own)
            _methods_of[cls] = names
        return names

    def _method(self, message: PalmMessage) -> Callable[[Any], Any]:
        """The bound method `message` calls; when there is none, a
        RemoteError for a LookupError with its code (pylm_core.errors)."""
        entries = message.function.split(" ")
        if not 0 <= message.stage < len(entries):
            raise _not_served(BAD_FUNCTION, "stage %d is past the end of function %r"
                              % (message.stage, message.function))
        entry = entries[message.stage]
        name = entry.partition(".")[2]
        if not name:
            raise _not_served(BAD_FUNCTION, "function %r is not 'server.method'" % entry)
        if name not in self._callable_names():
            raise _not_served(NO_METHOD, "no method %r on this worker" % entry)
        method: Callable[[Any], Any] = getattr(self, name)
        return method

    def handle(self) -> Tuple[str, bytes]:
        """``(status, body)`` of the answer (status as WSGI wants it)."""
        status, body = self._handle()
        return _STATUS[status], body

    def _handle(self) -> Tuple[int, bytes]:
        if self.request.method != "POST":
            return 405, b"POST an envelope"
        if self._refused is not None:
            return self._refused
        try:
            message = PalmMessage.FromString(self.request.data)
        except DecodeError as exc:
            return 400, str(exc).encode()
        self.message = message
        try:
            method = self._method(message)
        except RemoteError as exc:
            message.error = exc.to_wire()
            return 404, message.SerializeToString()
        try:
            message.payload = method(message.payload)
        except Exception as exc:
            logger.error("%s raised %s: %s", message.function, type(exc).__name__, exc,
                         exc_info=exc)
            message.error = error_text(exc)
            return 500, message.SerializeToString()
        return 200, message.SerializeToString()


class WSGIApplication:
    """A WSGI application that answers each request with
    ``handler(environ).handle()``.

    :param handler: a RequestHandler subclass
    """

    def __init__(self, handler: Type[RequestHandler]) -> None:
        self.handler = handler

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        status, body = self.handler(environ).handle()
        start_response(status, [("Content-Type", "application/octet-stream"),
                                ("Content-Length", str(len(body)))])
        return [body]


class _PooledWSGIServer(PooledServerMixIn, WSGIServer):
    """wsgiref's server on the pool of pylm._http."""

    max_request_bytes = MAX_REQUEST_BYTES   # the handler's, set by DebugServer


class _PooledRequestHandler(WSGIRequestHandler):
    """wsgiref's handler for DebugServer: the body (when its length is
    within the bound) is read before the application runs, within the
    request's deadline; logging goes to ``pylm.remote`` (DEBUG) instead of
    every request to stderr."""

    server: _PooledWSGIServer

    def setup(self) -> None:
        self.timeout = self.server.read_timeout  # type: ignore[misc]  # each socket operation
        super().setup()
        self._unread = False        # a body was left unread: linger before closing
        self._socket_rfile: Any = None  # the connection's file, once the body was read

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        length = self.headers.get("Content-Length")
        n, refusal = body_length(length, self.server.max_request_bytes, required=False)
        if refusal is None:
            assert n is not None                # no refusal: a length
            body = self.rfile.read(n)
            self.server.request_read(self.connection)
            self._socket_rfile, self.rfile = self.rfile, io.BytesIO(body)
        # else refused by the RequestHandler without reading (400, 413)
        self._unread = refusal is not None or "Transfer-Encoding" in self.headers
        return True

    def finish(self) -> None:
        super().finish()
        if self._socket_rfile is not None:
            self._socket_rfile.close()
        if self._unread:
            linger(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


class DebugServer:
    """`handler` (a RequestHandler subclass) served over HTTP by wsgiref,
    with a bounded pool of threads (pylm._http).

    :param host: address to bind
    :param port: port to bind (0: a free one; see ``address``)
    :param handler: the RequestHandler subclass
    :param threaded: keyword-only; up to `max_concurrent` requests at once
        instead of one at a time
    :param max_concurrent: keyword-only; threads of the pool when threaded
    :param max_queued: keyword-only; connections that wait for a thread in
        the listen backlog
    :param read_timeout: keyword-only; seconds a client has to send its
        request (its connection is shut down after)
    :param max_request_bytes: keyword-only; largest body read (413 above);
        None: the handler's ``max_request_bytes``
    """

    def __init__(self, host: str, port: int, handler: Type[RequestHandler], *,
                 threaded: bool = False, max_concurrent: int = MAX_CONCURRENT,
                 max_queued: int = MAX_QUEUED, read_timeout: float = READ_TIMEOUT,
                 max_request_bytes: Optional[int] = None) -> None:
        if max_request_bytes is not None:
            handler = type(handler.__name__, (handler,),
                           {"max_request_bytes": max_request_bytes})
        self.application = WSGIApplication(handler)
        self.httpd = _PooledWSGIServer((host, port), _PooledRequestHandler,
                                       max_concurrent=max_concurrent if threaded else 1,
                                       max_queued=max_queued, read_timeout=read_timeout,
                                       logger=logger)
        self.httpd.max_request_bytes = handler.max_request_bytes
        self.httpd.set_app(self.application)

    @property
    def address(self) -> Tuple[Any, ...]:
        """The bound ``(host, port)``."""
        return self.httpd.server_address[:2]

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until shutdown() (from another thread)."""
        self.httpd.serve_forever(poll_interval)

    def handle_request(self) -> None:
        """Serve one request."""
        self.httpd.handle_request()

    def shutdown(self) -> None:
        """Make serve_forever() return."""
        self.httpd.shutdown()

    def server_close(self) -> None:
        """Close the listening socket."""
        self.httpd.server_close()

    close = server_close

    def __enter__(self) -> DebugServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server_close()
