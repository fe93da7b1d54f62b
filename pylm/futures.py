"""pylm.futures.Executor: a concurrent.futures.Executor over a pylm server.

``submit("server.method", payload)`` returns a Future, ``map`` yields the
replies in the order of the payloads, and both may be called from any
number of threads.  One I/O thread owns the client's sockets (ZeroMQ
sockets are not thread-safe): callers hand it their calls through a
queue and wake it through a pipe that it polls together with the sockets,
so an idle executor uses no CPU.  Every call carries a call id of its own
(pylm_core CallTable), so replies coming back in any order, as they do from
a Master with several workers, resolve the right future.

Errors are set on the futures: pylm.RemoteError (the method raised),
pylm.WorkerLost (the call took down MAX_LOST workers), TimeoutError (no
reply within `call_timeout`, when one is set).  A future cancelled before
its call was sent is never sent.

``map`` streams: it sends the payloads in groups of `chunksize` calls, at
most `window` calls ahead of the caller, so an endless iterable works, and
it costs one future per group rather than per call.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import threading
import time
import weakref
from itertools import islice
from typing import Any, Deque, Dict, Generator, Iterable, Iterator, List, Optional, Union

from pylm._cache import PROTOCOL
from pylm.clients import JOB_WINDOW, Client, Function, _check_payload
from pylm_core import _core

__all__ = ["Executor"]

logger = logging.getLogger("pylm.futures")

#: Calls per group of map(): one future, one look-up per group.
MAP_CHUNK = 256
#: What the I/O thread takes off its queue besides call groups.
_SHUTDOWN = object()


class _Forget:
    """A group the caller no longer wants (map closed early): the I/O
    thread drops it, and its late replies."""
    __slots__ = ("group",)

    def __init__(self, group: _core.CallGroup) -> None:
        self.group = group


class _ChunkFuture(concurrent.futures.Future[_core.CallGroup]):
    """The future of one group of map(): its result is the CallGroup."""


class _MapFeed:
    """The payloads of one map() on their way to the I/O thread: groups of
    `size`, handed on while fewer than twice the executor's window are
    ahead of the consumer (`ahead` calls, in `groups`)."""
    __slots__ = ("executor", "fn", "it", "size", "groups", "ahead", "exhausted")

    def __init__(self, executor: Executor, fn: bytes, it: Iterator[Any], size: int) -> None:
        self.executor = executor
        self.fn = fn
        self.it = it
        self.size = size
        self.groups: Deque[_core.CallGroup] = collections.deque()
        self.ahead = 0
        self.exhausted = False

    def fill(self) -> None:
        # twice the window: while the consumer reads one group, the I/O
        # thread has the next ones at hand to send as replies free room
        ahead_max = 2 * self.executor._window
        while not self.exhausted and self.ahead < ahead_max:
            chunk = list(islice(self.it, self.size))
            if not chunk:
                self.exhausted = True
                return
            _core.check_payloads(chunk)
            group = _core.CallGroup(self.fn, chunk, _ChunkFuture())
            self.executor._io.hand(group)
            self.groups.append(group)
            self.ahead += len(chunk)


class Executor(concurrent.futures.Executor):
    """A concurrent.futures.Executor whose calls run on the pylm server (or
    Master) `server_name`.

    :param server_name: the server's name (as for Client)
    :param db_address: the server's cache address
    :param call_timeout: keyword-only; seconds after which a call without a
        reply fails with TimeoutError (None, the default: no limit), counted
        from when the I/O thread takes it.  Without it, a call to a server
        that never answers keeps its future (and shutdown(wait=True))
        waiting.
    :param window: keyword-only; the most calls in flight at once (later
        ones wait in the executor, still cancellable)
    :param client_kwargs: passed to pylm.clients.Client (push_address,
        sub_address, session, timeout, security keywords, ...)

    The client is made and its subscription checked here, in the caller's
    thread, so a wrong name or address raises at once; then its sockets
    belong to the I/O thread alone.  An executor garbage-collected without
    shutdown() shuts down as shutdown(wait=False) would.
    """

    def __init__(self, server_name: str, db_address: Optional[str], *,
                 call_timeout: Optional[float] = None, window: int = JOB_WINDOW,
                 **client_kwargs: Any) -> None:
        if call_timeout is not None and call_timeout < 0:
            raise ValueError("call_timeout must be >= 0 or None")
        client = Client(server_name, db_address, **client_kwargs)
        try:
            client._connect(None)
            self._io = _IOLoop(client, call_timeout, max(1, window))
        except BaseException:
            client.close()
            raise
        self._client = client
        self._window = self._io.window
        self._call_timeout = call_timeout
        self._table = self._io.table
        self._functions: Dict[str, bytes] = {}
        # the I/O thread refers to the loop, not to the executor: dropping
        # the executor ends the thread once its calls are answered
        self._thread = threading.Thread(target=self._io.run, name="pylm-futures-io",
                                        daemon=True)
        self._thread.start()
        weakref.finalize(self, self._io.shutdown, False)

    def _function(self, function: Function) -> bytes:
        """`function` ("server.method" or a list of stages) as bytes."""
        try:
            return self._functions[function]    # type: ignore[index]  # a list: TypeError
        except (KeyError, TypeError):       # TypeError: a list
            encoded = self._client._function(function).encode()
            if isinstance(function, str):
                self._functions[function] = encoded
            return encoded

    def submit(self, function: Function,  # type: ignore[override]
               payload: Any) -> concurrent.futures.Future[bytes]:
        """Call `function` ("server.method") with `payload` (bytes-like);
        returns a concurrent.futures.Future of the reply (bytes).  Raises
        TypeError for a payload that is not bytes-like, RuntimeError after
        shutdown()."""
        fn = self._function(function)
        _check_payload(payload)
        future: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        self._io.hand(_core.CallGroup(fn, [payload], future))
        return future

    def map(self, function: Function, payloads: Iterable[Any],  # type: ignore[override]
            timeout: Optional[float] = None, chunksize: Optional[int] = None) -> Iterator[bytes]:
        """Call `function` with each payload; return an iterator of the
        replies in the order of `payloads`.  The first calls go at once;
        the rest as replies are consumed, at most twice `window` calls
        ahead, so `payloads` may be endless.  The iterator raises the
        error of a call when it gets to it (pylm.RemoteError,
        pylm.WorkerLost, TimeoutError with `call_timeout`), and
        TimeoutError when `timeout` seconds have passed since map() was
        called; calls of it not answered by then are dropped.

        :param chunksize: calls sent and collected as one group (default
            MAP_CHUNK)
        """
        fn = self._function(function)
        if self._io.shut:
            raise RuntimeError("cannot schedule new futures after shutdown")
        end = None if timeout is None else time.monotonic() + timeout
        size = max(1, min(chunksize or MAP_CHUNK, _core.GROUP_CALLS_MAX, self._window))
        feed = _MapFeed(self, fn, iter(payloads), size)
        feed.fill()
        return self._replies(feed, end)

    def _replies(self, feed: _MapFeed, end: Optional[float]) -> Generator[bytes, None, None]:
        """The generator behind map(): waits for each group in turn, hands
        on more payloads as groups are consumed, yields the replies."""
        groups = feed.groups
        try:
            while groups:
                group = groups[0]
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("map: no reply in time")
                group.owner.result(left)        # TimeoutError, CancelledError
                groups.popleft()
                feed.ahead -= len(group.payloads)
                feed.fill()
                if group.remaining == 0 and not group.failed:
                    yield from group.results
                    continue
                for result in group.results:
                    if type(result) is bytes:
                        yield result
                    elif result is None:
                        raise TimeoutError("no reply from %s within %s s"
                                           % (feed.fn.decode(), self._call_timeout))
                    else:
                        raise Client._remote_error(result)
        finally:
            for group in groups:
                if not group.owner.cancel():
                    try:
                        self._io.hand(_Forget(group))
                    except RuntimeError:
                        pass        # shut down: the I/O thread ends anyway

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more calls (submit and map raise RuntimeError).  With
        `cancel_futures`, calls not sent yet are cancelled; calls sent are
        still answered.  With `wait`, return once every call is resolved
        and the sockets are closed."""
        self._io.shutdown(cancel_futures)
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()


class _IOLoop:
    """The I/O thread's side of an Executor: owns the client (its sockets
    are used by run() alone), and the queue and wake-up pipe through which
    any thread hands it work (hand(), shutdown())."""

    def __init__(self, client: Client, call_timeout: Optional[float], window: int) -> None:
        self.client = client
        self.call_timeout = call_timeout
        self.window = window
        assert client._reader is not None   # the Executor connected it
        self.table = _core.CallTable(
            client._push, client._reader, client._pipeline, client._topic,
            window=window, batch=client._protocol == PROTOCOL,
            batch_bytes=client._batch_bytes,
            first_key=int.from_bytes(os.urandom(6), "little"))
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        # CallGroups, _Forgets and _SHUTDOWN; deque append/popleft are atomic
        self.queue: Deque[Any] = collections.deque()
        self.wake_pending = False
        self.lock = threading.Lock()            # orders hand() against shutdown()
        self.shut = False
        self.cancel_futures = False

    # -- any thread ---------------------------------------------------------------------
    def hand(self, item: Union[_core.CallGroup, _Forget]) -> None:
        """Queue `item` for the I/O thread and wake it, unless a wake-up is
        pending already (the I/O thread clears the flag before it empties
        the queue, so an item queued before the flag was seen set is always
        taken).  RuntimeError after shutdown."""
        with self.lock:
            if self.shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self.queue.append(item)
        self.wake()

    def wake(self) -> None:
        if not self.wake_pending:
            self.wake_pending = True
            try:
                os.write(self.wake_w, b"w")
            except OSError:
                pass    # full (BlockingIOError): the thread is woken anyway

    def shutdown(self, cancel_futures: bool) -> None:
        """No more work; with `cancel_futures`, drop what was not sent."""
        with self.lock:
            if not self.shut:
                self.shut = True
                self.queue.append(_SHUTDOWN)
            if cancel_futures:
                self.cancel_futures = True
        self.wake()

    # -- the I/O thread -------------------------------------------------------------------
    def run(self) -> None:
        """Take calls off the queue, send them through the CallTable,
        resolve futures as replies come, fail calls past their time, until
        shutdown and every call is resolved; then close the client."""
        table = self.table
        queue = self.queue
        waiting: Deque[_core.CallGroup] = collections.deque()  # groups not in the table yet
        # groups in the table, in order of deadline
        timed: Deque[_core.CallGroup] = collections.deque()
        done: List[_core.CallGroup] = []
        closing = False
        try:
            while True:
                self.wake_pending = False
                while queue:
                    item = queue.popleft()
                    if item is _SHUTDOWN:
                        closing = True
                    elif type(item) is _Forget:
                        table.forget(item.group)
                    else:
                        waiting.append(item)
                if closing and self.cancel_futures:
                    for group in waiting:
                        group.owner.cancel()
                    waiting.clear()
                while True:
                    self._start(waiting, timed)
                    blocked = table.pump()
                    if not table.receive(done):
                        break
                    for group in done:
                        self._resolve(group)
                    done.clear()
                wait_ms = self._expire(timed)
                if closing and not waiting and not table.busy:
                    return
                if table.wait(self.wake_r, wait_ms, blocked) & 4:
                    _drain(self.wake_r)
        except BaseException as exc:
            logger.exception("pylm.futures: the I/O thread failed")
            self._fail_all(waiting, exc)
        finally:
            with self.lock:
                self.shut = True
            # calls queued meanwhile, or by a callback, fail rather than hang
            self._fail_all(waiting, RuntimeError("the executor is shut down"))
            self.client.close()

    def _start(self, waiting: Deque[_core.CallGroup], timed: Deque[_core.CallGroup]) -> None:
        """Move waiting groups into the table while the window has room;
        a future cancelled meanwhile is dropped here, unsent."""
        table = self.table
        while waiting and table.room() > 0:
            group = waiting.popleft()
            if not group.owner.set_running_or_notify_cancel():
                continue
            if table.add(group):
                self._resolve(group)        # empty
            elif self.call_timeout is not None:
                group.deadline = time.monotonic() + self.call_timeout
                timed.append(group)

    def _expire(self, timed: Deque[_core.CallGroup]) -> int:
        """Fail the groups past their deadline; milliseconds until the next
        deadline (-1: none)."""
        while timed:
            group = timed[0]
            if group.remaining == 0 or group.owner.done():
                timed.popleft()
                continue
            left = group.deadline - time.monotonic()
            if left > 0:
                return int(left * 1000) + 1
            timed.popleft()
            if self.table.forget(group):
                self._resolve(group)
        return -1

    def _resolve(self, group: _core.CallGroup) -> None:
        """Set the future of a group whose replies all came (or whose time
        passed: missing results are None)."""
        future = group.owner
        if type(future) is _ChunkFuture:
            future.set_result(group)
            return
        result = group.results[0]
        if type(result) is bytes:
            future.set_result(result)
        elif result is None:
            future.set_exception(TimeoutError("no reply from %s within %s s"
                                              % (group.function.decode(), self.call_timeout)))
        else:
            future.set_exception(Client._remote_error(result))

    def _fail_all(self, waiting: Deque[_core.CallGroup], exc: BaseException) -> None:
        """Every unresolved future gets `exc` (the I/O thread is ending)."""
        pending: List[_core.CallGroup] = list(waiting)
        waiting.clear()
        while self.queue:
            item = self.queue.popleft()
            if isinstance(item, _core.CallGroup):
                pending.append(item)
        for group in pending:
            if group.owner.set_running_or_notify_cancel():
                group.owner.set_exception(exc)
        for group in self.table.groups_left():
            if not group.owner.done():
                group.owner.set_exception(exc)

    def __del__(self) -> None:
        # the pipe outlives the I/O thread: a late wake() never writes to a
        # descriptor number reused by another file
        for fd in (getattr(self, "wake_r", -1), getattr(self, "wake_w", -1)):
            if fd < 0:
                continue
            try:
                os.close(fd)
            except OSError:
                pass


def _drain(fd: int) -> None:
    """Read the wake-up pipe empty."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass
