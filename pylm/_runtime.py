"""Start, stop and clean-up of a running server, written once.

A server's ``start()`` enters a :class:`Runtime`: it makes and binds the
sockets, runs helper loops (the cache service) in threads, runs the main
loop in the calling thread, and on the way out stops every loop, joins the
threads, closes every socket (``linger=0``, but for publishers: see
:data:`PUBLISH_LINGER_MS`) and re-raises the first
failure of any part.  ``stop()`` may be called from any thread or from a
SIGTERM/SIGINT handler.

Security is applied here, for every socket a server makes
(:meth:`Runtime.socket`): with the server's :class:`pylm.security.Security`
a bound socket serves CURVE (after the process's ZAP authenticator took the
server's domain, and with a monitor that counts refused handshakes), a
connected one is a CURVE client when a server key is known; inproc
endpoints stay plain.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import uuid
from types import FrameType, TracebackType
from typing import (TYPE_CHECKING, Any, Callable, Dict, List, Literal, Optional, Tuple, Type,
                    Union)

import zmq

from pylm._context import context
from pylm.security import REFUSAL_EVENTS, SERVE, Refusals, Security, zap_acquire, zap_release
from pylm_core import _core

if TYPE_CHECKING:
    from pylm.security import Socket

__all__ = ["Runtime", "StopHandle"]

#: How long a closed PUB/XPUB socket may still flush what is queued (ms).
#: A drain-stop publishes its last batch just before the sockets close; with
#: linger 0 libzmq would drop that batch if the subscriber had not read it yet.
PUBLISH_LINGER_MS = 1000
_PUBLISHERS = (zmq.PUB, zmq.XPUB)
#: Queue limit of a publisher (pylm_core/consts.pxi says why).
PUB_HWM = _core.PUB_HWM_


class StopHandle:
    """stop() for a server, usable before, during and after start().

    Each loop gets its own bound inproc PULL (its control socket); stop()
    pushes one message to each and sets a flag read before a loop starts.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._endpoints: List[str] = []
        self.stopping = False

    def control_socket(self) -> Socket:
        sock = context().socket(zmq.PULL)
        endpoint = "inproc://pylm-control-%s" % uuid.uuid4().hex
        sock.bind(endpoint)
        with self._lock:
            self._endpoints.append(endpoint)
            stopping = self.stopping
        if stopping:
            self._poke(endpoint)
        return sock

    def reset(self) -> None:
        with self._lock:
            self._endpoints = []
            self.stopping = False

    def forget(self, sock: Socket) -> None:
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        with self._lock:
            if endpoint in self._endpoints:
                self._endpoints.remove(endpoint)

    @staticmethod
    def _poke(endpoint: str) -> None:
        push = context().socket(zmq.PUSH)
        try:
            push.connect(endpoint)
            push.send(b"stop", zmq.DONTWAIT)
        except zmq.ZMQError:
            pass
        finally:
            push.close(linger=100)

    def stop(self) -> None:
        with self._lock:
            self.stopping = True
            endpoints = list(self._endpoints)
        for endpoint in endpoints:
            self._poke(endpoint)


class Runtime:
    """The sockets, threads and signal handlers of one ``start()``.

    :param security: the server's :class:`pylm.security.Security` (None:
        plain sockets)
    :param refusals: the server's :class:`pylm.security.Refusals`, counting
        refused handshakes on its CURVE sockets (None: a new one)
    """

    def __init__(self, stopper: StopHandle, logger: logging.Logger,
                 security: Optional[Security] = None,
                 refusals: Optional[Refusals] = None) -> None:
        self.stopper = stopper
        self.logger = logger
        self.security = security
        self.refusals = refusals if refusals is not None else Refusals(logger)
        self._domains: List[str] = []       # ZAP domains taken (released at exit)
        self._monitors: List[Tuple[Socket, Socket]] = []    # (socket, monitor socket)
        self._monitor_socks: List[Socket] = []  # the monitor sockets, read by one thread
        self._added: Optional[Socket] = None    # PUSH: a monitor socket was added
        self._sockets: List[Socket] = []
        self._threads: List[threading.Thread] = []
        self._failure: Optional[BaseException] = None
        self._old_handlers: Dict[int, Any] = {}
        self._wake: Optional[Tuple[socket.socket, socket.socket]] = None
        self._old_wakeup = -1

    # sockets -------------------------------------------------------------
    def socket(self, kind: int, bind: Optional[str] = None, connect: Optional[str] = None,
               security: Optional[Security] = None, **options: Union[int, bytes]) -> Socket:
        """A new socket with `options` (names of zmq constants), bound to
        `bind` or connected to `connect`, with the server's security (or
        `security`, a part's own) applied first; closed at exit."""
        sock = self.prepare(kind, bind, connect, security, **options)
        if bind is not None:
            sock.bind(bind)
        if connect is not None:
            sock.connect(connect)
        return sock

    def prepare(self, kind: int, bind: Optional[str] = None, connect: Optional[str] = None,
                security: Optional[Security] = None, **options: Union[int, bytes]) -> Socket:
        """:meth:`socket` without the bind or connect, for a caller that
        handles their failure apart from the set-up's."""
        sock: Socket = context().socket(kind)
        self._sockets.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name), value)
        security = security if security is not None else self.security
        if security is not None:
            if security.role(bind, connect) == SERVE:
                self._take_zap(security)
            if security.apply(sock, bind, connect) == SERVE:
                self._monitor(sock)
        return sock

    def _take_zap(self, security: Security) -> None:
        """The ZAP authenticator answers for the server's domain before any
        peer can connect (released at exit)."""
        if security.domain not in self._domains:
            zap_acquire(security.domain, security.provider(self.refusals.note))
            self._domains.append(security.domain)

    def _monitor(self, sock: Socket) -> None:
        """A monitor on CURVE server `sock` counts its refused handshakes
        (read by one thread for all the server's sockets)."""
        monitor = sock.get_monitor_socket(REFUSAL_EVENTS)
        self._monitors.append((sock, monitor))
        self._monitor_socks.append(monitor)
        if self._added is None:
            added = self.socket(zmq.PULL, bind="inproc://pylm-monitors-%s" % uuid.uuid4().hex)
            self._added = self.socket(zmq.PUSH, connect=added.getsockopt_string(
                zmq.LAST_ENDPOINT))
            self.thread(self.refusals.watch, "%s-refusals" % self.logger.name,
                        self._monitor_socks, added, self.control())
        else:
            self._added.send(b"", zmq.DONTWAIT)

    def publisher(self, address: str, max_message_size: int,
                  security: Optional[Security] = None) -> Socket:
        """Bind the XPUB every publishing server and PubService uses.

        It greets each new subscriber (pylm_core WELCOME), so that our
        clients know their subscription is up without a fixed wait; with
        XPUB_NODROP a subscriber that reads slowly blocks the sends (the
        queue is PUB_HWM long) instead of losing messages.  pylm 0.14
        clients see a plain PUB.  `max_message_size` bounds what
        subscribers send (subscriptions), as on every bound socket: a peer
        past it is disconnected.  Every subscribe and unsubscribe of each
        subscriber is passed on (XPUB_VERBOSE, XPUB_VERBOSER; also when its
        connection ends): the core holds a reply until a subscriber for it
        is there (pylm_core/subscriptions.pyx).
        """
        return self.socket(zmq.XPUB, bind=address, security=security, SNDHWM=PUB_HWM,
                           XPUB_NODROP=1, XPUB_WELCOME_MSG=_core.WELCOME,
                           XPUB_VERBOSE=1, XPUB_VERBOSER=1, MAXMSGSIZE=max_message_size)

    def control(self) -> Socket:
        sock = self.stopper.control_socket()
        self._sockets.append(sock)
        return sock

    # threads -------------------------------------------------------------
    def thread(self, target: Callable[..., object], name: str, *args: Any) -> threading.Thread:
        """Run target(*args) in a thread; if it raises, the whole server
        stops and start() re-raises that exception."""

        def run() -> None:
            try:
                target(*args)
            except BaseException as exc:
                self.logger.exception("%s failed; stopping", name)
                if self._failure is None:
                    self._failure = exc
                self.stopper.stop()

        t = threading.Thread(target=run, name=name, daemon=True)
        self._threads.append(t)
        t.start()
        return t

    # lifecycle -----------------------------------------------------------
    def __enter__(self) -> Runtime:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    self._old_handlers[sig] = signal.signal(sig, self._on_signal)
                except (ValueError, OSError):
                    pass
            # The core loops block in zmq_poll, not in Python: a signal
            # handler would only run at the loop's next message.  The wakeup
            # fd makes zmq_poll return as soon as a signal arrives.
            self._wake = socket.socketpair()
            for end in self._wake:
                end.setblocking(False)
            self._old_wakeup = signal.set_wakeup_fd(self._wake[1].fileno(),
                                                    warn_on_full_buffer=False)
        return self

    @property
    def wakeup_fd(self) -> int:
        """An fd readable when a signal arrived, for the main loop; -1 when
        start() does not run in the main thread (no signals there)."""
        return self._wake[0].fileno() if self._wake else -1

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        self.logger.info("signal %d: stopping", signum)
        self.stopper.stop()

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> Literal[False]:
        self.stopper.stop()
        for t in self._threads:
            t.join(10)
            if t.is_alive():
                self.logger.error("thread %s did not stop in 10 s", t.name)
        for sock, monitor in self._monitors:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
            monitor.close(linger=0)
        self._monitors, self._monitor_socks, self._added = [], [], None
        for sock in self._sockets:
            sock.close(linger=PUBLISH_LINGER_MS if sock.type in _PUBLISHERS else 0)
        self._sockets = []
        for domain in self._domains:
            zap_release(domain)
        self._domains = []
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        if self._wake:
            signal.set_wakeup_fd(self._old_wakeup)
            for end in self._wake:
                end.close()
            self._wake = None
        self.stopper.reset()
        if exc is None and self._failure is not None:
            raise self._failure
        return False
