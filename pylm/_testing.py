"""Helpers for tests of pylm servers and clients, with real sockets and real
processes (shipped in the package, like uvloop's ``_testbase``).

- :func:`free_port` / :func:`tcp_addresses`: loopback TCP addresses chosen
  at run time, so that tests never collide on fixed ports.
- :func:`running`: a context manager that runs a server's ``start()`` in a
  thread, waits until it answers, and on exit stops it and joins the thread
  with a bounded timeout, failing loudly when it does not stop or when
  ``start()`` raised.
- :class:`ChildProcess` / :func:`in_child`: a server or worker subclass run
  in a child process (multiprocessing, ``spawn`` by default), stopped by a
  SIGTERM to its PID.
- :class:`Gate`: a point where methods under test block until the test lets
  them pass, in this process or another one; the test sees how many are
  waiting.  A call that must still be running is one held at a gate, never
  a computation assumed to be slow.

Nothing here mocks: every helper drives the library as user code does.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import random
import socket
import sys
import threading
import time
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Type,
                    TypeVar)

_T = TypeVar("_T")

__all__ = ["free_port", "tcp_addresses", "peer_sockets", "running", "Running", "ServerFailed",
           "ChildProcess", "in_child", "wait_for", "Gate"]

#: Seconds a server gets to answer after start(), and to stop after stop().
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


#: Seconds a method waits at a Gate before it gives up (the test failed to
#: open it): a held call never outlives its test by much.
GATE_TIMEOUT = 60.0


class ServerFailed(AssertionError):
    """A server did not start, did not stop, or its start() raised."""



@contextlib.contextmanager
def peer_sockets(timeout: float) -> Iterator[Callable[..., Any]]:
    """``make(kind, bind=None, connect=None, **options)``: pyzmq sockets for
    the outside peers of a test (brokers, peers), from the library's
    Context, with `timeout` seconds on sends and receives; closed (linger
    0) at the end."""
    import zmq

    from pylm._context import context

    made: List[Any] = []

    def make(kind: int, bind: Optional[str] = None, connect: Optional[str] = None,
             **options: Any) -> Any:
        sock = context().socket(kind)
        made.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
        sock.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name), value)
        if bind:
            sock.bind(bind)
        if connect:
            sock.connect(connect)
        return sock

    try:
        yield make
    finally:
        for sock in made:
            sock.close(linger=0)

def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that was free a moment ago (see tcp_ports)."""
    return tcp_ports(1, host)[0]


def _ephemeral_low() -> int:
    """Lowest port of the range the kernel numbers sockets from itself."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def tcp_ports(n: int, host: str = "127.0.0.1") -> List[int]:
    """`n` distinct TCP ports on `host`, free a moment ago.

    They are picked at random below the kernel's ephemeral range and held
    together while picked, so none repeats.  A port the kernel hands out
    itself (bind to port 0, the local end of a connection, a Master's
    ROUTER on ``tcp://host:*``) could be taken between this call and the
    server's bind; ports outside that range are taken only by someone who
    asks for them by number.
    """
    low, high = 10000, _ephemeral_low()
    if high - low < 10 * n:
        low, high = 1024, 65536
    rng = random.SystemRandom()
    held: List[socket.socket] = []
    try:
        for _ in range(1000 * n):
            if len(held) == n:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((host, rng.randrange(low, high)))
            except OSError:
                sock.close()
                continue
            held.append(sock)
        while len(held) < n:            # a crowded range: let the kernel pick
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            held.append(sock)
        return [s.getsockname()[1] for s in held]
    finally:
        for sock in held:
            sock.close()


def tcp_addresses(n: int, host: str = "127.0.0.1") -> List[str]:
    """`n` distinct ``tcp://host:port`` addresses on free ports."""
    return ["tcp://%s:%d" % (host, port) for port in tcp_ports(n, host)]


def wait_for(predicate: Callable[[], _T], timeout: float = 10.0, interval: float = 0.01,
             what: str = "condition") -> _T:
    """Poll `predicate` until it returns a true value (returned), or raise
    AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("%s not met within %s s" % (what, timeout))
        time.sleep(interval)
        interval = min(interval * 2, 0.2)


def _answers(server: Any, deadline: float, returned: threading.Event,
             client_kwargs: Optional[Dict[str, Any]] = None) -> bool:
    """Wait until a Client of `server` can be made and its subscription
    handshake succeeds (Server, Master: they answer pings without running
    any method).  False when the deadline passed or start() returned."""
    from pylm.clients import Client

    while True:
        left = deadline - time.monotonic()
        if left <= 0 or returned.is_set():
            return False
        try:
            client = Client(server.name, server.db_address, timeout=min(left, 1.0),
                            **(client_kwargs or {}))
        except TimeoutError:
            continue
        try:
            connect = getattr(client, "_connect", None)
            if connect is None:
                return True
            try:
                connect(min(deadline - time.monotonic(), 2.0))
            except TimeoutError:
                continue
            return True
        finally:
            client.close()


class Running:
    """A server running in a thread; made by :func:`running`."""

    def __init__(self, server: Any, start_kwargs: Dict[str, Any]) -> None:
        self.server = server
        self.error: Optional[BaseException] = None
        self.returned = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(start_kwargs,),
                                       name="pylm-test-%s" % getattr(server, "name", "server"),
                                       daemon=True)

    def _run(self, start_kwargs: Dict[str, Any]) -> None:
        try:
            self.server.start(**start_kwargs)
        except BaseException as exc:  # reported in the test thread
            self.error = exc
        finally:
            self.returned.set()

    def check(self) -> None:
        """Raise ServerFailed if start() raised."""
        if self.error is not None:
            raise ServerFailed("%s.start() raised %r" % (type(self.server).__name__,
                                                        self.error)) from self.error

    def join(self, timeout: float = STOP_TIMEOUT) -> None:
        """Wait for start() to return by itself (``messages=N``); raise
        ServerFailed if it does not within `timeout` or if it raised."""
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise ServerFailed("%s.start() did not return within %s s"
                               % (type(self.server).__name__, timeout))
        self.check()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """stop() the server and join its thread (bounded)."""
        self.server.stop()
        self.join(timeout)


@contextlib.contextmanager
def running(server: Any, ready: Optional[Callable[[Any], bool]] = None,
            start_timeout: float = START_TIMEOUT, stop_timeout: float = STOP_TIMEOUT,
            client_kwargs: Optional[Dict[str, Any]] = None,
            **start_kwargs: Any) -> Iterator[Running]:
    """Run ``server.start(**start_kwargs)`` in a thread for the duration of
    the block; yields a :class:`Running`.

    :param ready: ``callable(server) -> bool`` polled until true; by default
        a Server or Master is ready when a Client can be made and its
        subscription handshake is answered, anything else (a Worker) when
        its thread runs
    :param client_kwargs: keywords of that Client (``server_key=`` and
        ``secret_key=`` for a CURVE server)
    :raises ServerFailed: start() raised, the server never got ready, or it
        did not stop within `stop_timeout` seconds after stop()
    """
    run = Running(server, start_kwargs)
    run.thread.start()
    try:
        deadline = time.monotonic() + start_timeout
        if ready is None and getattr(server, "pull_address", None) and \
                getattr(server, "pub_address", None):
            ok = _answers(server, deadline, run.returned, client_kwargs)
        elif ready is None:
            ok = True
        else:
            ok = False
            while time.monotonic() < deadline and not run.returned.is_set():
                if ready(server):
                    ok = True
                    break
                time.sleep(0.02)
        run.check()
        if not ok:
            raise ServerFailed("%s did not answer within %s s"
                               % (type(server).__name__, start_timeout))
        yield run
    finally:
        server.stop()
        run.thread.join(stop_timeout)
        if run.thread.is_alive():
            raise ServerFailed("%s did not stop within %s s of stop()"
                               % (type(server).__name__, stop_timeout))
        run.check()


# -- child processes -----------------------------------------------------------

def _child_main(cls: Type[Any], args: Tuple[Any, ...], kwargs: Dict[str, Any],
                start_kwargs: Dict[str, Any], log_level: int) -> None:
    logging.basicConfig(level=log_level, stream=sys.stderr,
                        format="%(processName)s %(name)s %(levelname)s %(message)s")
    server = cls(*args, **kwargs)
    server.start(**start_kwargs)


class ChildProcess:
    """``cls(*args, **kwargs).start(**start_kwargs)`` in a child process.

    The child is stopped by SIGTERM to its PID (servers and workers install
    a handler that makes start() return); :meth:`stop` fails loudly when it
    does not exit in time (and then kills it) or exits with an error.
    Usable as a context manager.
    """

    def __init__(self, cls: Type[Any], *args: Any, start_kwargs: Optional[Dict[str, Any]] = None,
                 method: str = "spawn", log_level: int = logging.WARNING,
                 **kwargs: Any) -> None:
        ctx: Any = multiprocessing.get_context(method)
        self.cls = cls
        self.process: multiprocessing.process.BaseProcess = ctx.Process(
            target=_child_main, args=(cls, args, kwargs, start_kwargs or {}, log_level),
            name="pylm-child-%s" % cls.__name__, daemon=True)
        self._signalled = False
        self._reported = False  # stop() raised once: later calls are no-ops

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid

    @property
    def exitcode(self) -> Optional[int]:
        return self.process.exitcode

    def start(self) -> ChildProcess:
        self.process.start()
        return self

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def join(self, timeout: float = STOP_TIMEOUT) -> None:
        """Wait for the child to exit by itself (``messages=N``); raise
        ServerFailed if it does not or exits with an error."""
        self.process.join(timeout)
        if self.process.is_alive():
            self._kill()
            self._reported = True
            raise ServerFailed("child %s (pid %s) did not exit within %s s"
                               % (self.cls.__name__, self.pid, timeout))
        self._check_exit()

    def _kill(self) -> None:
        assert self.pid is not None     # started
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.join(5)

    def _check_exit(self) -> None:
        code = self.process.exitcode
        # -SIGTERM: the signal came before start() installed its handler
        ok = (0, -signal.SIGTERM) if self._signalled else (0,)
        if code not in ok:
            self._reported = True
            raise ServerFailed("child %s (pid %s) exited with code %s"
                               % (self.cls.__name__, self.pid, code))

    def stop(self, timeout: float = STOP_TIMEOUT, repeat: Optional[float] = 1.0) -> None:
        """SIGTERM the child by PID and wait for it; raise ServerFailed when
        it does not exit within `timeout` (it is then killed) or when it
        exited with an error.

        The signal is repeated every `repeat` seconds (None: sent once): a
        SIGTERM that reaches a server while its main thread is outside
        zmq_poll is only acted on at its next message (see
        tests/test_server.py::test_a_sigterm_during_a_call_stops_the_server).
        """
        if self.process.pid is None or self._reported:
            return
        deadline = time.monotonic() + timeout
        while self.process.is_alive():
            self._signalled = True
            try:
                os.kill(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.process.join(left if repeat is None else min(left, repeat))
        if self.process.is_alive():
            self._kill()
            self._reported = True
            raise ServerFailed("child %s (pid %s) did not stop within %s s of SIGTERM"
                               % (self.cls.__name__, self.pid, timeout))
        self._check_exit()

    def __enter__(self) -> ChildProcess:
        if self.process.pid is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def in_child(cls: Type[Any], *args: Any, **kwargs: Any) -> ChildProcess:
    """Start ``cls(*args, **kwargs)`` in a child process; returns the
    started :class:`ChildProcess` (see there for the keywords)."""
    return ChildProcess(cls, *args, **kwargs).start()


def stop_all(procs: Iterable[ChildProcess]) -> None:
    """Stop every ChildProcess in procs (each by its PID), then raise the
    first failure: one child that will not stop does not leave the others
    running."""
    failures = []
    for proc in procs:
        try:
            proc.stop()
        except ServerFailed as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


# -- gates ----------------------------------------------------------------------

class Gate:
    """A point where code under test blocks until the test opens it.

    Made by the test; passed to a method (as an attribute of a server, or
    pickled into a child process: only the address travels).  The method
    calls :meth:`wait`, which connects to the gate's loopback socket and
    blocks in ``recv`` until the gate opens, so the test knows for certain
    that the call is still running while it holds the gate, and sees each
    arrival (:attr:`arrived`, :meth:`wait_arrived`, and :attr:`who` came).
    A barrier is the test waiting for N arrivals and then opening: N calls
    that were not running at the same time could never all arrive.

    Every wait is bounded: :meth:`wait` gives up after `timeout` seconds
    (returning False), :meth:`close` (also on leaving the ``with`` block)
    opens the gate and ends its thread.  Made and opened in the test's
    process only; :meth:`wait` works anywhere.
    """

    def __init__(self) -> None:
        self._listener: Optional[socket.socket] = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.address: Tuple[str, int] = self._listener.getsockname()
        self._cond = threading.Condition()
        self._waiting: List[socket.socket] = []  # accepted connections of callers still held
        self._who: List[str] = []
        self._opened = False
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="pylm-test-gate",
                                        daemon=True)
        self._thread.start()

    def __getstate__(self) -> Dict[str, Any]:
        return {"address": self.address}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.address = state["address"]
        self._listener = None

    # -- the code under test --------------------------------------------------
    def wait(self, timeout: float = GATE_TIMEOUT, who: str = "") -> bool:
        """Arrive at the gate (as `who`, a line of text the test sees) and
        block until it opens: True, or False when it did not open within
        `timeout` seconds or the test's gate is gone (closed, or its
        process ended)."""
        try:
            with socket.create_connection(self.address, timeout=timeout) as sock:
                sock.settimeout(timeout)
                sock.sendall(who.encode() + b"\n")
                return sock.recv(1) == b"o"
        except OSError:             # socket.timeout included
            return False

    # -- the test -------------------------------------------------------------
    def _accept(self) -> None:
        assert self._listener is not None   # in the test's process
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:         # closed
                return
            who = self._read_who(conn)
            with self._cond:
                self._who.append(who)
                if self._opened:
                    self._release(conn)
                else:
                    self._waiting.append(conn)
                self._cond.notify_all()

    @staticmethod
    def _read_who(conn: socket.socket) -> str:
        """The line a caller sends when it arrives."""
        conn.settimeout(STOP_TIMEOUT)
        data = b""
        try:
            while not data.endswith(b"\n"):
                chunk = conn.recv(256)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        return data.rstrip(b"\n").decode(errors="replace")

    @staticmethod
    def _release(conn: socket.socket) -> None:
        try:
            conn.sendall(b"o")
        except OSError:
            pass                    # the caller gave up already
        conn.close()

    @property
    def arrived(self) -> int:
        """How many calls arrived at the gate so far (held or passed)."""
        with self._cond:
            return len(self._who)

    @property
    def who(self) -> List[str]:
        """The `who` of each call that arrived, in order of arrival."""
        with self._cond:
            return list(self._who)

    def wait_arrived(self, n: int, timeout: float = 20.0) -> None:
        """Block until `n` calls arrived; AssertionError after `timeout` s."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._who) >= n, timeout):
                raise AssertionError("%d call(s) at the gate within %s s, not %d"
                                     % (len(self._who), timeout, n))

    def open(self) -> None:
        """Let every held call pass, and every later one straight through."""
        with self._cond:
            self._opened = True
            waiting, self._waiting = self._waiting, []
        for conn in waiting:
            self._release(conn)

    def close(self) -> None:
        """Open the gate, stop accepting and release the socket."""
        self.open()
        self._closed = True
        self._thread.join(STOP_TIMEOUT)
        assert self._listener is not None   # made and closed in the test's process
        self._listener.close()

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
