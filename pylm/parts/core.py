"""The low-level API (shared/API.md, "Low-level API"): the Router and the
four kinds of parts a :class:`pylm.parts.servers.ServerTemplate` is built
from.

One loop per server, the one every pylm server runs: this Router is a
subclass of ``pylm_core``'s Router, whose C loop polls (in one zmq_poll,
without the GIL, in the thread that calls ``start()``) the socket of every
part plus a control socket (for ``stop()``), and calls the handler of the
part whose socket is ready.  The routing table (each part's ``target``,
``block``, the backlog pauses) lives in the core too; this class keeps
pylm 0.14's registration API.  Parts are sets of handlers, not threads: the
Router calls them directly (no internal hop, nothing lock-stepped), and a
part waiting for a peer (a REQ outbound, an HTTP worker) never holds the
loop up.  Master and Hub are built from C parts on the same Router.  Threads appear only
where a blocking library needs them: the HTTP servers of HttpService and
HttpGateway (a bounded pool of threads each, pylm._http; each request
reaches the loop over an inproc DEALER), and the
request pool of HttpConnection (results come back through a queue and a
wake-up pipe the loop polls).

The path of one message, with the hooks pylm 0.14 users override:

1. an :class:`Inbound` part reads an envelope from its socket;
   ``scatter(message)`` turns it into zero or more messages, each passed
   through ``_translate_to_broker(message)`` and given to the Router;
2. the Router hands it to the outbound part named by the inbound's
   ``route`` (no route: the message ends here);
3. the :class:`Outbound` part applies ``_translate_from_broker(data)`` and
   its own ``scatter`` and sends each result on its socket; with
   ``reply=True`` it waits (the loop goes on) for each answer, passes it
   through ``_translate_to_broker`` to ``handle_feedback``; when done,
   ``reply_feedback()`` is the outbound's *feedback*;
4. the feedback is routed once more, to the outbound named by the
   outbound's own ``route``, and, for an inbound registered with
   ``block=True``, given back to the inbound's ``handle_feedback``; a
   non-blocking inbound gets :data:`ACK` at once instead;
5. an inbound with ``reply=True`` (REP sockets) answers its peer with
   ``reply_feedback()`` once every message it scattered got its feedback,
   and reads nothing else meanwhile.

Bypass parts (:class:`BypassInbound`, :class:`BypassOutbound`) run beside
the routing: their sockets are served by the same loop, or (HTTP servers)
by a thread of their own, but their messages never go through the Router.

Every part also runs alone, as in pylm 0.14 (``part.start()``, on a core
Router of its own): an inbound part sends each message it routes to the
broker at its ``broker_address`` over a REQ (one frame, the envelope; the
broker is a bound REP or ROUTER) and takes the answer as its feedback; an
outbound part reads the messages to send from a REP connected there (the
broker is a bound REQ, or a ROUTER sending ``[identity, b'', data]``) and
answers each with its feedback.  The same hooks and plumbing serve both:
the link to the broker is one more part in the loop.

``zmq_context`` is the pyzmq Context of the library, made on first use.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading
import uuid
from typing import (TYPE_CHECKING, Any, Callable, Deque, Dict, Iterator, List, Optional,
                    Tuple, Union)

import zmq

import pylm_core  # noqa: F401  (binds the core to pyzmq's libzmq)
from pylm_core import _core
from pylm._context import context
from pylm._dispatch import DropLog, error_text
from pylm._runtime import Runtime, StopHandle
from pylm.errors import DecodeError, PylmError
from pylm.parts.messages_pb2 import PalmMessage
from pylm.security import SERVE, KeyPath, Refusals, Security, zap_acquire, zap_release

if TYPE_CHECKING:
    from pylm._cache import Store
    from pylm.security import Socket

__all__ = ["Router", "Inbound", "Outbound", "BypassInbound", "BypassOutbound",
           "zmq_context", "ACK"]

#: The feedback an inbound part gets when it does not block (and what a
#: REP part with no route answers its peer): pylm 0.14's acknowledgement.
ACK = _core.ACK
#: Largest message a part's socket accepts from outside (pylm_core/consts.pxi).
MAX_MESSAGE_SIZE = _core.MAX_MESSAGE_SIZE_
#: Seconds an HTTP request may wait for its answer: from the loop (the HTTP
#: services, 504 after) or from a worker (HttpConnection).
HTTP_TIMEOUT = 60.0
#: Messages read from one ready socket before the loop polls again.
READ_BATCH = 256
#: How long the socket of a part run alone may still send its last
#: answers once start() returns (ms).
ALONE_LINGER_MS = 1000
#: Messages an outbound part may hold (unsent or unanswered) before the
#: Router stops reading inbound sockets; reading resumes at half of it.
BACKLOG_LIMIT = 10_000

_END = object()         # a scatter generator is exhausted


def __getattr__(name: str) -> Any:
    # PEP 562: the Context is made when user code first asks for it, not at
    # import (pylm 0.14 made one at import).
    if name == "zmq_context":
        return context()
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def __dir__() -> List[str]:
    return sorted(list(globals()) + ["zmq_context"])


def _to_bytes(obj: Any) -> Optional[bytes]:
    """What a hook returned, as the bytes to send: an envelope is
    serialized, bytes-like objects pass, None means nothing."""
    if obj is None or type(obj) is bytes:
        return obj
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    serialized: bytes = obj.SerializeToString()
    return serialized


def _to_message(data: Any) -> Any:
    """An envelope from what a hook returned: envelopes pass, bytes are parsed."""
    if hasattr(data, "SerializeToString"):
        return data
    return PalmMessage.FromString(data)


def error_reply(message: Any, exc: BaseException, with_traceback: bool = True) -> bytes:
    """The envelope answering `message` with the error `exc` (b'' when there
    is no envelope to answer): pylm clients raise it as RemoteError.  The
    traceback is left out unless `with_traceback`."""
    if message is None or not hasattr(message, "SerializeToString"):
        return b""
    reply = PalmMessage()
    try:
        reply.CopyFrom(message)
    except TypeError:       # an envelope of another class (protobuf's)
        reply.ParseFromString(message.SerializeToString())
    reply.error = error_text(exc, with_traceback=with_traceback)
    return reply.SerializeToString()


class PartFailed(PylmError):
    """A part's hook raised while a message was on its way; the message was
    dropped (or answered with this error)."""


# -- the Router ----------------------------------------------------------------

class _Route:
    __slots__ = ("part", "route", "block", "log")

    def __init__(self, part: _Part, route: str, block: bool, log: str) -> None:
        self.part = part
        self.route = route
        self.block = block
        self.log = log


class Router(_core.Router):
    """The routing table and the loop of a server built from parts.

    pylm 0.14's constructor is kept; `inbound_address` and
    `outbound_address` are only recorded (parts are called directly, not
    over sockets).

    :param logger: logger of the server
    :param cache: the server's cache
    :param messages: start() returns once this many messages were routed
        (and the messages under way have arrived)
    :param security: keyword-only; the server's
        :class:`pylm.security.Security`, applied to every part's socket
        (a part with keys of its own uses those)

    ``send_tracebacks`` (set by ServerTemplate): whether the error replies
    of its parts carry tracebacks.
    """

    send_tracebacks = True

    def __init__(self, inbound_address: str = "inproc://inbound",
                 outbound_address: str = "inproc://outbound",
                 logger: Optional[logging.Logger] = None, cache: Optional[Store] = None,
                 messages: int = sys.maxsize, *, security: Optional[Security] = None) -> None:
        self.inbound_address = inbound_address
        self.outbound_address = outbound_address
        self.logger = logger if logger is not None else logging.getLogger("pylm.parts.router")
        self.cache = cache
        self.messages = messages
        # pylm 0.14's tables: bytes name -> {'route': bytes, 'block'?, 'log'}
        self.inbound_components: Dict[bytes, Dict[str, Any]] = {}
        self.outbound_components: Dict[bytes, Dict[str, Any]] = {}
        self._inbound: Dict[str, _Route] = {}
        self._outbound: Dict[str, _Route] = {}
        self._bypass: Dict[str, _Part] = {}
        self._stopper = StopHandle()
        self.security = security
        self._refusals = Refusals(self.logger)
        self.routed = 0
        #: set while start() serves: every part is open (sockets bound)
        self.ready = threading.Event()

    # registration ------------------------------------------------------------
    def register_inbound(self, name: str, route: str = "", block: bool = False, log: str = "", *,
                         part: Optional[Inbound] = None) -> None:
        """Route the messages of inbound part `name` to outbound `route`;
        with `block`, the part gets the outbound's feedback back."""
        self.inbound_components[name.encode()] = {"route": route.encode(), "block": block,
                                                  "log": log}
        if part is not None:
            self._adopt(part)
            self._inbound[name] = _Route(part, route, block, log)

    def register_outbound(self, name: str, route: str = "", log: str = "", *,
                          part: Optional[Outbound] = None) -> None:
        """Register outbound part `name`; its feedback goes on to `route`."""
        self.outbound_components[name.encode()] = {"route": route.encode(), "log": log}
        if part is not None:
            self._adopt(part)
            self._outbound[name] = _Route(part, route, False, log)

    def register_bypass(self, name: str, *, part: _Part) -> None:
        """A part served beside the routing."""
        self._adopt(part)
        self._bypass[name] = part

    def _adopt(self, part: _Part) -> None:
        """A registered part with keys of its own takes the server's for
        those it does not give (parts that make no ZeroMQ socket, such as
        HttpGateway, have none)."""
        join = getattr(part, "_join_server", None)
        if join is not None:
            join(self.security)

    # lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Serve every registered part until `messages` messages were routed
        or stop() is called.  A part failing (not a user hook: those are
        logged) stops the server and is raised here."""
        self._link()
        with Runtime(self._stopper, self.logger, self.security, self._refusals) as rt:
            self._serve(rt)

    @property
    def refused(self) -> int:
        """Handshakes the CURVE sockets of the parts refused (pylm.security)."""
        return self._refusals.count

    def stop(self) -> None:
        """Make start() return; safe from any thread."""
        self._stopper.stop()

    def cleanup(self) -> None:
        """pylm 0.14 closed its sockets here; ours close when start() returns."""

    def _link(self) -> None:
        """Fill the core's routing table: each part's target and block."""
        for table, kind in ((self._inbound, "inbound"), (self._outbound, "outbound")):
            for name, entry in table.items():
                if entry.route and entry.route not in self._outbound:
                    raise ValueError("%s part %r routes to %r, which is no registered "
                                     "outbound part" % (kind, name, entry.route))
        for table in (self._inbound, self._outbound):
            for name, entry in table.items():
                part = entry.part
                part.target = self._outbound[entry.route].part if entry.route else None
                part.block = entry.block
                part._entry = entry
                part._key = name

    def _serve(self, rt: Runtime) -> None:
        self.routed = 0
        self.reset()
        routed_parts = [e.part for e in self._inbound.values()] + \
                       [e.part for e in self._outbound.values()]
        opened = []
        try:
            # bypass parts first: the cache answers workers from the start
            for part in list(self._bypass.values()) + routed_parts:
                part._open(rt, self)
                opened.append(part)
            for part in routed_parts:
                self.add(part, part.target)
            for name, entry in self._inbound.items():
                self.logger.info("inbound %s routes to %s%s", name, entry.route or "nothing",
                                 " (blocking)" if entry.block else "")
            for name, entry in self._outbound.items():
                if entry.route:
                    self.logger.info("outbound %s routes its feedback to %s", name, entry.route)
            self.ready.set()
            self.run(rt.control(), rt.wakeup_fd)
        finally:
            self.ready.clear()
            for part in reversed(opened):
                try:
                    part._close()
                except Exception:
                    self.logger.exception("closing part %s", getattr(part, "_key", part))
            self.reset()

    def route(self, part: Any, data: Any, exchange: Any = None) -> Optional[bytes]:
        """Route one message of inbound `part` (logged when registered with
        `log`); see pylm_core's Router.route."""
        entry = part._entry
        if entry is not None and entry.log:
            self.logger.debug("%s: %s", entry.part._key, entry.log)
        return super().route(part, data, exchange)


# -- parts ---------------------------------------------------------------------

class _Part(_core.Part):
    """What every part has: pylm 0.14's attributes and the socket.  The
    core Part holds its routing entry: ``target`` and ``block``.

    Security keywords (keyword-only, on every part class): `secret_key`,
    `server_key`, `authorized_keys`, as on servers (pylm.security).  A part
    in a ServerTemplate gets the template's; keys given to the part itself
    are for its socket alone (those it does not give are still the
    template's), and for a part run alone (``start()``, ``send()``), which
    otherwise takes them from the ``PYLM_*`` environment.
    """

    _key: Optional[str] = None          # the name the part was registered under
    _entry: Optional[_Route] = None     # its routing entry

    def __init__(self, name: Union[str, bytes], listen_address: str, socket_type: int,
                 reply: bool = True, bind: bool = False,
                 logger: Optional[logging.Logger] = None, cache: Optional[Store] = None,
                 messages: int = sys.maxsize, *, secret_key: KeyPath = None,
                 server_key: KeyPath = None, authorized_keys: KeyPath = None) -> None:
        # bytes (pylm 0.14's); Any: PubService serves it as its topic (str)
        self.name: Any = name.encode("utf-8") if isinstance(name, str) else name
        self.listen_address = listen_address
        self.socket_type = socket_type
        self.reply = reply
        self.bind = bind
        self.logger = logger if logger is not None else logging.getLogger("pylm.parts")
        self.cache = cache
        self.messages = messages
        self.last_message: Any = b""
        self._stopper = StopHandle()
        self._alone = False     # served by start(), not by a server
        # set when the part opens (a server starts, or send() is first called)
        self.listen_to: Any = None      # its socket
        self._runner: Any = None        # the Router serving it
        self._drops: Any = None         # its DropLog
        self._security: Optional[Security] = None
        # the part's own key settings (secret, server, authorized), if any
        self._keys: Optional[Tuple[KeyPath, KeyPath, KeyPath]] = None
        if secret_key is not None or server_key is not None or authorized_keys is not None:
            self._keys = (secret_key, server_key, authorized_keys)
            self._security = Security.for_server(*self._keys)

    def _join_server(self, security: Optional[Security]) -> None:
        """Registered in a server whose security is `security`: keys the
        part does not give are the server's (a part with its own secret
        key still checks the server's authorized keys), not the
        environment's."""
        if self._keys is not None and security is not None:
            self._security = Security.for_server(*self._keys, defaults=security)

    def _alone_security(self) -> Security:
        """The part's security when it runs alone: its own keys, else the
        environment's."""
        if self._security is None:
            self._security = Security.for_server()
        return self._security

    @property
    def _label(self) -> Any:
        if self._key:
            return self._key
        return self.name.decode() if isinstance(self.name, bytes) else str(self.name)

    def _make_socket(self, rt: Runtime) -> Socket:
        """The part's socket, bound or connected to listen_address."""
        where: Dict[str, Any] = {"bind" if self.bind else "connect": self.listen_address}
        return rt.socket(self.socket_type, security=self._security,
                         MAXMSGSIZE=MAX_MESSAGE_SIZE, **where)

    def _open(self, rt: Runtime, runner: Any) -> None:
        self._runner = runner
        self._drops = DropLog(self.logger)
        self.listen_to = self._make_socket(rt)

    def _close(self) -> None:
        """Sockets are closed by the Runtime; parts with threads or pools
        stop them here."""

    def _idle(self) -> bool:
        return True

    def cleanup(self) -> None:
        """pylm 0.14 closed the part's sockets here; ours close when the
        server stops."""

    # alone (pylm 0.14's start()) -------------------------------------------------
    def start(self) -> Any:
        """Serve this part alone, without a server (pylm 0.14): its own
        socket, and (routed parts) a socket to the broker at
        `broker_address`, on a core Router of its own, until `messages`
        messages were read or stop() is called.  Returns the part's name."""
        if self.messages <= 0:
            return self.name
        self._serve_alone()
        return self.name

    def stop(self) -> None:
        """Make start() return; safe from any thread."""
        self._stopper.stop()

    def _broker_link(self) -> Optional[_Part]:
        """The part that talks to the broker while this one runs alone
        (None: the part has no broker)."""
        return None

    def _serve_alone(self) -> None:
        """The loop of start(): this part and its broker link, the link
        the part's target (an inbound part) or the part the link's (an
        outbound part).  With its own keys, or the ``PYLM_*`` environment's."""
        security = self._alone_security()
        link = self._broker_link()
        parts = [self] if link is None else [link, self]
        with Runtime(self._stopper, self.logger, security) as rt:
            runner = _core.Router()
            opened: List[_Part] = []
            self._alone = True
            try:
                for part in parts:
                    part._open(rt, runner)
                    opened.append(part)
                if link is not None:
                    self._link_alone(runner, link)
                runner.run(rt.control(), rt.wakeup_fd)
            finally:
                self._alone = False
                for part in reversed(opened):
                    part._close_alone()

    def _link_alone(self, runner: Any, link: _Part) -> None:
        """Put this part and its broker link in the alone loop's table."""

    def _close_alone(self) -> None:
        """Close what start() opened: the part's threads, and its socket
        with a linger, so that its last answer still leaves (a server's
        sockets close with linger 0 when it stops)."""
        try:
            self._close()
        finally:
            sock, self.listen_to = self.listen_to, None
            if sock is not None and not sock.closed:
                sock.close(linger=ALONE_LINGER_MS)

    def _call_hook(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args); a hook that raises is logged (once, with traceback)
        and re-raised as PartFailed for the caller to handle."""
        try:
            return fn(*args)
        except Exception as exc:
            self.logger.exception("%s: %s raised", self._label, what)
            raise PartFailed("part %s: %s raised %s: %s"
                             % (self._label, what, type(exc).__name__, exc)) from exc


class _InboundExchange:
    """One message an inbound part read, on its way through the Router."""

    __slots__ = ("part", "prefix", "message", "scattered")

    def __init__(self, part: Inbound, prefix: List[bytes], message: Any) -> None:
        self.part = part
        self.prefix = prefix
        self.message = message
        self.scattered: Any = None     # what scatter() returned, as an iterator


class Inbound(_Part):
    """A part that reads messages from outside and hands them to the Router.

    :param name: name of the part
    :param listen_address: ZeroMQ address of the outside peer(s)
    :param socket_type: ZeroMQ socket type (``zmq.PULL``, ``zmq.REP``...)
    :param reply: the socket answers each message (REP): with
        ``reply_feedback()``, once the message's feedback came back
    :param broker_address: the broker a part run alone (``start()``)
        talks to: a REQ there for an inbound part, a REP for an outbound
        one (a server's parts ignore it)
    :param bind: bind listen_address instead of connecting to it
    :param logger: logger
    :param cache: the server's cache
    :param messages: read at most this many messages
    """

    def __init__(self, name: Union[str, bytes], listen_address: str, socket_type: int,
                 reply: bool = True, broker_address: str = "inproc://broker", bind: bool = False,
                 logger: Optional[logging.Logger] = None, cache: Optional[Store] = None,
                 messages: int = sys.maxsize, **keys: KeyPath) -> None:
        super().__init__(name, listen_address, socket_type, reply, bind, logger, cache,
                         messages, **keys)
        self.broker_address = broker_address
        self._read = 0
        self._exchanges = 0

    # hooks (pylm 0.14) -----------------------------------------------------------
    def _translate_to_broker(self, message: Any) -> Any:
        """The message as the Router gets it (an envelope or bytes; None
        drops it).  By default a message without a cache key gets a new
        UUID there."""
        if not message.cache:
            message.cache = str(uuid.uuid4())
        return message

    def _translate_from_broker(self, message_data: Any) -> Any:
        """Kept from pylm 0.14 for subclasses; the Router does not call it."""
        return message_data

    def scatter(self, message_data: Any) -> Iterator[Any]:
        """The messages (a generator) to route for one message read."""
        yield message_data

    def handle_feedback(self, message_data: Any) -> None:
        """The feedback of one routed message: the outbound's reply when
        the part blocks, ACK otherwise."""
        self.last_message = message_data

    def reply_feedback(self) -> Any:
        """What a replying socket answers, after the last feedback."""
        return self.last_message

    # plumbing ----------------------------------------------------------------------
    def _open(self, rt: Runtime, runner: Any) -> None:
        super()._open(rt, runner)
        self._read = 0
        self._exchanges = 0
        runner._watch(self.listen_to, self._on_events, zmq.POLLIN, owner=self, inbound=True)

    def _idle(self) -> bool:
        return self._exchanges == 0

    def _on_events(self, events: int) -> None:
        sock = self.listen_to
        runner = self._runner
        for _ in range(READ_BATCH):
            if runner._paused(sock):
                return
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            self._read += 1
            if self._read >= self.messages:
                runner._pause(sock, "messages")
            self._received(frames)
            if self._alone:
                self._alone_check()

    def _received(self, frames: List[bytes]) -> None:
        """One message read from the socket (all its frames)."""
        prefix, data = frames[:-1], frames[-1]
        try:
            message = PalmMessage.FromString(data)
        except DecodeError as exc:
            self._reject(prefix, exc)
            return
        self._begin(prefix, message)

    def _reject(self, prefix: List[bytes], exc: BaseException) -> None:
        """What is read is no envelope: dropped (a replying socket answers b'')."""
        self._drops("%s: %s" % (self._label, exc))
        if self.reply:
            self._send_reply(prefix, b"", 400)

    def _begin(self, prefix: List[bytes], message: Any) -> None:
        exchange = _InboundExchange(self, prefix, message)
        self._exchanges += 1
        if self.reply:
            # a replying socket takes the next message after this answer
            self._runner._pause(self.listen_to, "reply")
        try:
            exchange.scattered = iter(self._call_hook("scatter", self.scatter, message))
        except PartFailed as exc:
            self._fail(exchange, exc)
            return
        self._advance(exchange)

    def _advance(self, exchange: _InboundExchange) -> None:
        runner = self._runner
        while True:
            try:
                scattered = next(exchange.scattered, _END)
                if scattered is _END:
                    break
                data = _to_bytes(self._call_hook("_translate_to_broker",
                                                 self._translate_to_broker, scattered))
            except PartFailed as exc:
                self._fail(exchange, exc)
                return
            except Exception as exc:        # scatter's generator raised
                self.logger.exception("%s: scatter raised", self._label)
                self._fail(exchange, exc)
                return
            if data is None:
                continue
            feedback = runner.route(self, data, exchange)
            if feedback is None:        # a blocking route: _resume() follows
                return
            self._feedback(feedback)
        self._finish(exchange)

    def _feedback(self, feedback: Any) -> None:
        try:
            self._call_hook("handle_feedback", self.handle_feedback, feedback)
        except PartFailed:
            pass

    def _resume(self, exchange: _InboundExchange, feedback: Optional[bytes]) -> None:
        """The feedback of a blocking route came back (None: it failed)."""
        if feedback is None:
            where = self._entry.route if self._entry is not None else "the broker"
            self._fail(exchange, PartFailed("part %s: the message routed to %s failed"
                                            % (self._label, where)))
            return
        self._feedback(feedback)
        self._advance(exchange)

    def _finish(self, exchange: _InboundExchange) -> None:
        if self.reply:
            try:
                reply = _to_bytes(self._call_hook("reply_feedback", self.reply_feedback))
            except PartFailed as exc:
                self._fail(exchange, exc)
                return
            self._send_reply(exchange.prefix, b"" if reply is None else reply, 200)
        self._done(exchange)

    def _fail(self, exchange: _InboundExchange, exc: BaseException) -> None:
        if isinstance(exc, PartFailed) and exc.__cause__ is not None:
            exc = exc.__cause__         # the peer is told what the hook raised
        if self.reply:
            self._send_reply(exchange.prefix, error_reply(
                exchange.message, exc, getattr(self._runner, "send_tracebacks", True)), 500)
        self._done(exchange)

    def _done(self, exchange: _InboundExchange) -> None:
        self._exchanges -= 1
        if self.reply:
            self._runner._resume(self.listen_to, "reply")
        if self._alone:
            self._alone_check()

    def _alone_check(self) -> None:
        """Run alone, start() returns once `messages` were read and went
        through (answered, rejected or delivered)."""
        if self._exchanges == 0 and self._read >= self.messages:
            self.stop()

    # alone ---------------------------------------------------------------------------
    def _broker_link(self) -> Optional[_Part]:
        return _BrokerRequest(self)

    def _link_alone(self, runner: Any, link: _Part) -> None:
        # each message waits for the broker's answer, its feedback (REQ)
        runner.add(link, None)
        runner.add(self, link)
        self.block = True

    def _send_reply(self, prefix: List[bytes], data: bytes, status: int) -> None:
        """Answer the peer of a replying socket (`status` is an HTTP-like
        code, for parts that can tell their peer)."""
        try:
            self.listen_to.send_multipart(prefix + [data], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self._drops("%s: reply not sent: %s" % (self._label, exc))


class _OutboundExchange:
    """One message the Router gave an outbound part."""

    __slots__ = ("done", "frames", "data", "remaining")

    def __init__(self, done: Optional[Tuple[Any, ...]], data: Any) -> None:
        self.done = done            # (fn, *args) called with the feedback
        self.data = data            # what the Router gave
        self.frames: Optional[Iterator[List[bytes]]] = None   # the frames to send
        self.remaining = 0          # answers still to come (HttpConnection)


class Outbound(_Part):
    """A part that sends the messages the Router gives it to the outside,
    and with `reply` waits for an answer to each.

    Parameters as :class:`Inbound`.  Messages are sent without blocking the
    loop: while the peer is not there (or its queue is full) they wait in
    the part, and past BACKLOG_LIMIT of them the Router stops reading.
    """

    def __init__(self, name: Union[str, bytes], listen_address: str, socket_type: int,
                 reply: bool = True, broker_address: str = "inproc://broker", bind: bool = False,
                 logger: Optional[logging.Logger] = None, cache: Optional[Store] = None,
                 messages: int = sys.maxsize, **keys: KeyPath) -> None:
        super().__init__(name, listen_address, socket_type, reply, bind, logger, cache,
                         messages, **keys)
        self.broker_address = broker_address
        # exchanges waiting for the busy one; frames waiting for the socket;
        # the exchange waiting for an answer
        self._queue: Deque[_OutboundExchange] = collections.deque()
        self._outq: Deque[List[bytes]] = collections.deque()
        self._busy: Optional[_OutboundExchange] = None
        self._taken = 0
        self._over = False

    # hooks (pylm 0.14) -----------------------------------------------------------
    def _translate_to_broker(self, message: Any) -> Any:
        """An answer read from the socket, as handle_feedback gets it."""
        return message

    def _translate_from_broker(self, message: Any) -> Any:
        """The data the Router gives (serialized envelope), before parsing."""
        return message

    def scatter(self, message_data: Any) -> Iterator[Any]:
        """The messages (a generator) to send for one message routed here."""
        yield message_data

    def handle_feedback(self, message_data: Any) -> None:
        """One answer read from the socket (with `reply`)."""
        self.last_message = message_data

    def reply_feedback(self) -> Any:
        """The feedback of a message, once all its answers came."""
        return self.last_message

    # plumbing ----------------------------------------------------------------------
    def _open(self, rt: Runtime, runner: Any) -> None:
        super()._open(rt, runner)
        self._queue.clear()
        self._outq.clear()
        self._busy = None
        self._taken = 0
        self._over = False
        if self.listen_to is not None:
            runner._watch(self.listen_to, self._on_events, self._listen_events())

    def _listen_events(self) -> int:
        """What the loop polls listen_to for (POLLOUT is added while
        messages wait for the socket)."""
        return zmq.POLLIN if self.reply else 0

    def _idle(self) -> bool:
        return self._busy is None and not self._queue and not self._outq

    def _prepare(self, data: Any) -> Iterator[List[bytes]]:
        """The frames to send (a generator) for one routed message."""
        data = self._translate_from_broker(data)
        message = _to_message(data)
        for scattered in self.scatter(message):
            out = _to_bytes(scattered)
            if out is not None:
                yield [out]

    def _take(self, data: Any, done: Optional[Tuple[Any, ...]]) -> Optional[_OutboundExchange]:
        """A new exchange for a routed message, or None when the part is
        past its `messages` (the message is dropped, its feedback None)."""
        self._taken += 1
        exchange = _OutboundExchange(done, data)
        if self._taken > self.messages:
            self._drops("%s: past its limit of %d messages" % (self._label, self.messages))
            self._finish(exchange, None)
            return None
        return exchange

    def _submit(self, data: Any, done: Optional[Tuple[Any, ...]]) -> None:
        """The Router gives this part a message; `done` is ``(fn, *args)``,
        called with the feedback (None when the part failed on it)."""
        exchange = self._take(data, done)
        if exchange is None:
            return
        self._queue.append(exchange)
        if self._busy is None:
            self._pump()
        elif len(self._queue) >= BACKLOG_LIMIT:
            self._check_backlog()

    def _pump(self) -> None:
        while self._queue and self._busy is None:
            exchange = self._queue.popleft()
            try:
                exchange.frames = iter(self._prepare(exchange.data))
            except Exception as exc:
                self._failed(exchange, exc)
                continue
            self._step(exchange)
        self._check_backlog()

    def _step(self, exchange: _OutboundExchange) -> None:
        """Send the exchange's messages; with `reply`, one at a time, each
        after the answer to the previous one."""
        try:
            assert exchange.frames is not None      # set by _pump
            for frames in exchange.frames:
                self._send(frames)
                if self.reply:
                    self._busy = exchange
                    return
        except Exception as exc:
            self._failed(exchange, exc)
            return
        try:
            feedback = _to_bytes(self._call_hook("reply_feedback", self.reply_feedback))
        except PartFailed:
            feedback = None
        self._finish(exchange, feedback)

    def _failed(self, exchange: _OutboundExchange, exc: BaseException) -> None:
        if isinstance(exc, DecodeError):
            self._drops("%s: %s" % (self._label, exc))
        elif not isinstance(exc, PartFailed):
            self.logger.error("%s: dropped a message: %s: %s", self._label,
                              type(exc).__name__, exc, exc_info=exc)
        self._finish(exchange, None)

    def _finish(self, exchange: _OutboundExchange, feedback: Optional[bytes]) -> None:
        if exchange.done is not None:
            fn, *args = exchange.done
            self._runner._post(fn, *args, feedback)

    def _send(self, frames: List[bytes]) -> None:
        if not self._outq:
            try:
                self.listen_to.send_multipart(frames, zmq.NOBLOCK)
                return
            except zmq.Again:
                pass
            except zmq.ZMQError as exc:
                self._drops("%s: not sent: %s" % (self._label, exc))
                return
        self._outq.append(frames)
        if len(self._outq) == 1:
            self._runner._want(self.listen_to, zmq.POLLOUT, True)
        elif len(self._outq) >= BACKLOG_LIMIT:
            self._check_backlog()

    def _flush(self) -> None:
        outq = self._outq
        while outq:
            try:
                self.listen_to.send_multipart(outq[0], zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError as exc:
                self._drops("%s: not sent: %s" % (self._label, exc))
            outq.popleft()
        if not outq:
            self._runner._want(self.listen_to, zmq.POLLOUT, False)
        self._check_backlog()

    def _backlog_size(self) -> int:
        return len(self._queue) + len(self._outq)

    def _check_backlog(self) -> None:
        size = self._backlog_size()
        if not self._over and size >= BACKLOG_LIMIT:
            self._over = True
            self._runner.backlog(self, True)
        elif self._over and size <= BACKLOG_LIMIT // 2:
            self._over = False
            self._runner.backlog(self, False)

    def _on_events(self, events: int) -> None:
        if events & zmq.POLLOUT:
            self._flush()
        if events & zmq.POLLIN:
            for _ in range(READ_BATCH):
                try:
                    frames = self.listen_to.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                except zmq.ZMQError as exc:
                    if exc.errno == zmq.EFSM:     # a REQ has its answer: nothing more
                        break
                    raise
                self._answer(frames)

    def _answer(self, frames: List[bytes]) -> None:
        """An answer read from the socket: the feedback of the busy exchange."""
        exchange = self._busy
        if exchange is None:
            self._drops("%s: an answer nobody waits for" % self._label)
            return
        self._busy = None
        try:
            feedback = self._call_hook("_translate_to_broker", self._translate_to_broker,
                                       frames[-1])
            self._call_hook("handle_feedback", self.handle_feedback, feedback)
        except PartFailed as exc:
            self._failed(exchange, exc)
        else:
            self._step(exchange)
        self._pump()


    # alone ---------------------------------------------------------------------------
    def _broker_link(self) -> Optional[_Part]:
        return _BrokerReply(self)

    def _link_alone(self, runner: Any, link: _Part) -> None:
        # the link reads the broker's messages and waits for their
        # feedback; the loop ends once `messages` went through, sent
        runner.add(self, None)
        runner.add(link, self)
        link.block = True
        runner.messages = self.messages


class BypassInbound(_Part):
    """A part that reads from outside without the Router: each time its
    socket is readable the loop calls ``recv()``.

    Parameters as :class:`Inbound`, without `broker_address`.
    """

    def __init__(self, name: Union[str, bytes], listen_address: str, socket_type: int,
                 reply: bool = True, bind: bool = False,
                 logger: Optional[logging.Logger] = None, cache: Optional[Store] = None,
                 messages: int = sys.maxsize, **keys: KeyPath) -> None:
        super().__init__(name, listen_address, socket_type, reply, bind, logger, cache,
                         messages, **keys)
        self._read = 0

    def recv(self, reply_data: Optional[bytes] = None) -> bytes:
        """Read one message (and answer `reply_data`, or b'', when the
        socket replies); returns the message."""
        message_data: bytes = self.listen_to.recv()
        if self.reply:
            self.listen_to.send(b"" if reply_data is None else reply_data)
        return message_data

    def _open(self, rt: Runtime, runner: Any) -> None:
        super()._open(rt, runner)
        self._read = 0
        runner._watch(self.listen_to, self._on_events, zmq.POLLIN)

    def _on_events(self, events: int) -> None:
        try:
            self.recv()
        except Exception as exc:
            self.logger.error("%s: recv() raised %s: %s", self._label, type(exc).__name__,
                              exc, exc_info=exc)
            if self.reply:      # a REP socket must answer before it reads again
                try:
                    self.listen_to.send(b"", zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
        self._read += 1
        if self._read >= self.messages:
            self._runner._pause(self.listen_to, "messages")
            if self._alone:
                self._runner._quit()



class BypassOutbound(_Part):
    """A socket to the outside that user code sends on (``send()``),
    without the Router.  Its socket is made on first use, or when the
    server starts, and closed with the server (or by ``cleanup()``).

    Parameters as :class:`Outbound`, without `broker_address`.
    """

    def __init__(self, name: Union[str, bytes], listen_address: str, socket_type: int,
                 reply: bool = True, bind: bool = False,
                 logger: Optional[logging.Logger] = None, cache: Optional[Store] = None,
                 messages: int = sys.maxsize, **keys: KeyPath) -> None:
        super().__init__(name, listen_address, socket_type, reply, bind, logger, cache,
                         messages, **keys)
        self._own = False
        self._zap_domain: Optional[str] = None

    def _open(self, rt: Runtime, runner: Any) -> None:
        if self.listen_to is not None and self._own:
            self.cleanup()
        super()._open(rt, runner)

    def _close(self) -> None:
        self.listen_to = None   # closed by the Runtime

    def start(self) -> Any:
        """Run alone (pylm 0.14): make the socket send() uses (bound or
        connected now, so peers find it) and return the part's name; user
        code then calls send(), and cleanup() at the end."""
        if self.listen_to is None:
            self.listen_to, self._own = self._own_socket(), True
        return self.name

    def send(self, message_data: Any) -> Optional[bytes]:
        """Send message_data; with `reply`, wait for and return the answer."""
        if self.listen_to is None:
            self.listen_to, self._own = self._own_socket(), True
        self.listen_to.send(_to_bytes(message_data))
        if self.reply:
            answer: bytes = self.listen_to.recv()
            return answer
        return None

    def _own_socket(self) -> Socket:
        """The socket send() makes outside a running server: plain, or
        CURVE with the part's keys (or the environment's); a bound CURVE
        socket takes the process's ZAP authenticator until cleanup()
        (its refusals are not counted: no server runs)."""
        sock = context().socket(self.socket_type)
        sock.setsockopt(zmq.LINGER, 0)
        security = self._alone_security()
        where = {"bind" if self.bind else "connect": self.listen_address}
        if security.role(**where) == SERVE:
            zap_acquire(security.domain, security.provider())
            self._zap_domain = security.domain
        security.apply(sock, **where)
        if self.bind:
            sock.bind(self.listen_address)
        else:
            sock.connect(self.listen_address)
        return sock

    def cleanup(self) -> None:
        """Close a socket made by send() outside a running server."""
        if self._own and self.listen_to is not None:
            self.listen_to.close(linger=0)
            self.listen_to = None
            self._own = False
        if self._zap_domain is not None:
            zap_release(self._zap_domain)
            self._zap_domain = None


# -- the broker links of parts run alone ---------------------------------------

def _identity(part: _Part) -> Dict[str, Any]:
    """The socket identity of `part`'s broker link: its name (pylm 0.14's;
    a ROUTER broker sees which part speaks), none for a part without one."""
    name = part.name.encode("utf-8") if isinstance(part.name, str) else part.name
    return {"IDENTITY": name} if name else {}


class _BrokerRequest(Outbound):
    """The REQ, connected to `broker_address`, an inbound part run alone
    sends each message it routes on (one frame: the serialized envelope);
    the broker's answer is the message's feedback."""

    def __init__(self, part: Inbound) -> None:
        super().__init__(part.name, part.broker_address, zmq.REQ, reply=True,
                         logger=part.logger)
        self._security = part._security
        self._key = part._label

    def _make_socket(self, rt: Runtime) -> Socket:
        return rt.socket(zmq.REQ, connect=self.listen_address, security=self._security,
                         MAXMSGSIZE=MAX_MESSAGE_SIZE, **_identity(self))

    def _prepare(self, data: Any) -> Iterator[List[bytes]]:
        yield [data]


class _BrokerReply(Inbound):
    """The REP, connected to `broker_address`, an outbound part run alone
    reads its messages from (one frame each, as routed: the part's
    ``_translate_from_broker`` gets it); each is answered with the part's
    feedback (b'' when the part failed on it)."""

    def __init__(self, part: Outbound) -> None:
        super().__init__(part.name, part.broker_address, zmq.REP, reply=True,
                         logger=part.logger, messages=part.messages)
        self._security = part._security
        self._key = part._label

    def _make_socket(self, rt: Runtime) -> Socket:
        return rt.socket(zmq.REP, connect=self.listen_address, security=self._security,
                         MAXMSGSIZE=MAX_MESSAGE_SIZE, **_identity(self))

    def _received(self, frames: List[bytes]) -> None:
        self._begin(frames[:-1], frames[-1])

    def _translate_to_broker(self, message: Any) -> Any:
        return message
