"""Gateways: HTTP in front of a cluster of workers.

A server built with the three parts here answers ``GET/POST /<method>``
with what the workers make of the request body::

    HTTP --> HttpGateway --inproc--> GatewayRouter --> (route) --> workers
    HTTP <-- HttpGateway <--inproc-- GatewayRouter <-- GatewayDealer <-- workers

:class:`HttpGateway` (a bypass part: an HTTP server with a pool of
threads, pylm._http) gives each request a DEALER of its own, connected to
the :class:`GatewayRouter`'s ROUTER (an inbound part); the envelope's
``client`` is that DEALER's identity.  Results routed to the
:class:`GatewayDealer` (an outbound part) are sent back through the
GatewayRouter's socket to that identity.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from typing import TYPE_CHECKING, Any, Iterator, List, Optional, Tuple, Type, Union
from urllib.parse import urlsplit

import zmq

from pylm._runtime import Runtime, StopHandle
from pylm.errors import DecodeError, RemoteError
from pylm.parts.core import Inbound, Outbound, _to_bytes, _to_message
from pylm.parts.messages_pb2 import PalmMessage
from pylm._http import MAX_CONCURRENT, MAX_QUEUED, MAX_REQUEST_BYTES, READ_TIMEOUT
from pylm.parts.services import HTTP_TIMEOUT, _ask_loop, _Handler, _HttpRunner
from pylm_core.errors import NO_METHOD

if TYPE_CHECKING:
    from pylm._cache import Store

__all__ = ["GatewayRouter", "GatewayDealer", "HttpGateway"]

#: Identity of pylm 0.14's GatewayDealer socket: a 4-frame message from it
#: on the GatewayRouter's socket is ``[dealer, target, b'', data]``.
DEALER_IDENTITY = b"dealer"

_METHOD_PATH = re.compile(r"/([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)/?")


class GatewayRouter(Inbound):
    """The gateway's inbound part: a ROUTER bound at `listen_address`
    (inproc) that HTTP requests come in on; each is routed with a new
    cache key."""

    def __init__(self, name: Union[str, bytes] = "gateway_router",
                 listen_address: str = "inproc://gateway_router",
                 broker_address: str = "inproc://broker", cache: Optional[Store] = None,
                 logger: Optional[logging.Logger] = None, messages: int = sys.maxsize) -> None:
        super().__init__(name or "gateway_router", listen_address, zmq.ROUTER, reply=False,
                         broker_address=broker_address, bind=True, logger=logger, cache=cache,
                         messages=messages)

    def _translate_to_broker(self, message: Any) -> Any:
        message.cache = str(uuid.uuid4())
        return message

    def _received(self, frames: List[bytes]) -> None:
        if len(frames) == 4 and frames[0] == DEALER_IDENTITY:
            # an answer from a dealer socket (pylm 0.14's GatewayDealer)
            self._deliver(frames[1:])
            return
        super()._received(frames)

    def _deliver(self, frames: List[bytes]) -> None:
        """Send ``[identity, b'', data]`` to the request waiting for it (a
        request that gave up is gone: ROUTER drops it)."""
        try:
            self.listen_to.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self._drops("%s: answer not delivered: %s" % (self._label, exc))


class GatewayDealer(Outbound):
    """The gateway's outbound part: sends each result to the HTTP request
    named by its ``client``, through the GatewayRouter bound at
    `listen_address` in the same server (run alone, ``start()``: over a
    DEALER connected to it, as pylm 0.14's did)."""

    def __init__(self, name: Union[str, bytes] = "",
                 listen_address: str = "inproc://gateway_router",
                 broker_address: str = "inproc://broker", cache: Optional[Store] = None,
                 logger: Optional[logging.Logger] = None, messages: int = sys.maxsize) -> None:
        super().__init__(name or "gateway_dealer", listen_address, zmq.DEALER, reply=False,
                         broker_address=broker_address, logger=logger, cache=cache,
                         messages=messages)
        self._gateway: Optional[GatewayRouter] = None

    def _translate_from_broker(self, message: Any) -> Any:
        """``(target, message)``: the request to answer, and the answer."""
        return message.client, message

    def _make_socket(self, rt: Runtime) -> Any:
        if not self._alone:
            return None     # answers go out on the GatewayRouter's socket
        # alone, as pylm 0.14's: a DEALER to the GatewayRouter, whose
        # messages it tells apart by this identity
        return rt.socket(zmq.DEALER, connect=self.listen_address, security=self._security,
                         IDENTITY=DEALER_IDENTITY)

    def _open(self, rt: Runtime, runner: Any) -> None:
        super()._open(rt, runner)
        self._gateway = None
        if self._alone:
            return
        gateways = [entry.part for entry in runner._inbound.values()
                    if isinstance(entry.part, GatewayRouter)
                    and entry.part.listen_address == self.listen_address]
        if not gateways:
            raise ValueError("GatewayDealer %s needs a GatewayRouter at %s in the same server"
                             % (self._label, self.listen_address))
        self._gateway = gateways[0]

    def _prepare(self, data: Any) -> Iterator[List[bytes]]:
        target, message = self._translate_from_broker(_to_message(data))
        target = target.encode("utf-8") if isinstance(target, str) else target
        for scattered in self.scatter(message):
            out = _to_bytes(scattered)
            if out is not None:
                yield [target, b"", out]

    def _send(self, frames: List[bytes]) -> None:
        if self._gateway is None:       # alone: on its own DEALER
            super()._send(frames)
        else:
            self._gateway._deliver(frames)


class _GatewayHandler(_Handler):

    def do_GET(self) -> None:
        self._call(body_required=False)

    def do_POST(self) -> None:
        self._call(body_required=True)

    def _call(self, body_required: bool) -> None:
        function = self.owner._function(self.path)
        if function is None:
            self.answer(404, b"not a method: %s" % self.path.encode("utf-8", "replace"),
                        close=True)
            return
        body = self.read_body(body_required)
        if body is None:
            return
        status, data = self.owner._call(function, body)
        self.answer(status, data, "text/plain" if status == 200 else
                    "text/plain; charset=utf-8")


class HttpGateway:
    """The gateway's HTTP server (a bypass part, run in a thread): ``GET``
    or ``POST /<method>`` sends the body (empty for a GET without one) to
    ``_.<method>`` (or ``/server.method`` as given) through the
    GatewayRouter at `listen_address`, and answers with the payload the
    workers return.

    Answers: 200 the payload; 404 a path that names no method, or a method
    the workers do not have; 500 the method raised (the text says what);
    411/400/413 a POST without a length, a bad or short body, a body over
    `max_request_bytes` (refused before it is read); 504 no answer within
    `timeout` seconds.  The gateway keeps serving after any of them.
    ``self.address`` is the bound (host, port) once running (``port=0``
    picks a free one).

    At most `max_concurrent` requests are served at once, by a pool of
    threads; more connections wait in a listen backlog of `max_queued`, and
    a client has `read_timeout` seconds to send its request (pylm._http).
    """

    def __init__(self, name: str = "", listen_address: str = "inproc://gateway_router",
                 hostname: str = "", port: int = 8888, cache: Optional[Store] = None,
                 logger: Optional[logging.Logger] = None, *,
                 max_request_bytes: int = MAX_REQUEST_BYTES,
                 max_concurrent: int = MAX_CONCURRENT, max_queued: int = MAX_QUEUED,
                 read_timeout: float = READ_TIMEOUT, timeout: float = HTTP_TIMEOUT) -> None:
        self.name = name
        self.listen_address = listen_address
        self.hostname = hostname
        self.port = port
        self.cache = cache
        self.logger = logger if logger is not None else logging.getLogger("pylm.parts.gateway")
        self.max_request_bytes = max_request_bytes
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.read_timeout = read_timeout
        self.timeout = timeout
        self.handler: Type[_Handler] = _GatewayHandler
        self.address: Optional[Tuple[Any, ...]] = None
        self._http: Optional[_HttpRunner] = None
        self._stopper = StopHandle()

    # as a part of a server ---------------------------------------------------------
    def _open(self, rt: Runtime, runner: Any) -> None:
        http = self._http = _HttpRunner(self, self.hostname, self.port, self.handler)
        self.address = http.address
        http.start(rt, "%s-http" % (self.name or "gateway"))
        self.logger.info("HTTP gateway at %s:%d", *http.address)

    def _close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def _idle(self) -> bool:
        return True

    # alone -------------------------------------------------------------------------
    def start(self) -> None:
        """Serve HTTP until stop() (the GatewayRouter runs elsewhere, in a
        server of this process)."""
        with Runtime(self._stopper, self.logger) as rt:
            self._open(rt, None)
            try:
                poller = zmq.Poller()
                control = rt.control()
                poller.register(control, zmq.POLLIN)
                if rt.wakeup_fd >= 0:
                    poller.register(rt.wakeup_fd, zmq.POLLIN)
                while control not in dict(poller.poll()):
                    pass
            finally:
                self._close()

    def stop(self) -> None:
        self._stopper.stop()

    def debug(self) -> None:
        """Serve one HTTP request, then return."""
        runner = _HttpRunner(self, self.hostname, self.port, self.handler)
        try:
            runner.server.handle_request()
        finally:
            runner.close()

    # the HTTP side -----------------------------------------------------------------
    @staticmethod
    def _function(path: str) -> Optional[str]:
        """``server.method`` named by a request path, or None."""
        match = _METHOD_PATH.fullmatch(urlsplit(path).path)
        if match is None:
            return None
        name = match.group(1)
        return name if "." in name else "_." + name

    def _call(self, function: str, payload: bytes) -> Tuple[int, bytes]:
        """``(status, body)`` for one request."""
        identity = uuid.uuid4().hex
        message = PalmMessage(pipeline=str(uuid.uuid4()), client=identity, stage=0,
                              function=function, payload=payload)
        frames = _ask_loop(self.listen_address, [b"", message.SerializeToString()],
                           self.timeout, identity=identity.encode())
        if frames is None:
            return 504, b"no answer from the workers within %g s" % self.timeout
        try:
            reply = PalmMessage.FromString(frames[-1])
        except DecodeError:
            return 502, b"the workers answered with something that is no envelope"
        if reply.error:
            error = RemoteError.from_wire(reply.error)
            text = str(error).encode("utf-8", "replace")
            if error.code == NO_METHOD:
                return 404, text
            self.logger.info("%s failed: %s", function, error)
            return 500, text
        return 200, reply.payload
