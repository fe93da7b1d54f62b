"""pylm.aio: a Client for asyncio programs.

``pylm.aio.Client`` takes the same arguments as :class:`pylm.clients.Client`
and is made by one: the configuration fetched from the server's cache, the
security keywords, the sockets and the subscription handshake are the sync
client's (its code, run once, at the first call, in a thread of the loop's
executor so that the loop never blocks on it; the constructor itself does
no I/O, so a wrong ``db_address`` or server name shows at the first call,
as ``TimeoutError`` or ``ValueError``).  From then on the sockets belong to
the event loop, which watches them through their file descriptors
(``ZMQ_FD``):

- any number of calls may be in flight at once, from any number of tasks;
  each has its own call id (the envelope's field 17), which its replies
  carry back, and replies are sorted to their callers by it;
- calls asked for in one turn of the loop leave together, in one batch
  frame, to a pylm server (the core's ``CallBatch``); payloads of 64 KiB
  or more go alone, lent to libzmq without a copy, as with the sync client;
- a call that times out or is cancelled leaves the table of pending calls
  at once: its late reply finds no caller and is dropped (counted in
  ``stale``).  A call still waiting for room on the PUSH socket (or a
  payload of 64 KiB or more not yet lent) is not sent at all; one already
  in this turn's batch goes out with the batch, and its reply is dropped
  as stale;
- breaking out of ``async for reply in client.job(...)`` ends the job only
  when its async generator is closed: asyncio does that soon after the
  generator is no longer referenced, but to end it at once (its calls
  leave the table, its queued payloads are not sent) close it explicitly:
  ``async with contextlib.aclosing(client.job(...)) as replies:`` (Python
  3.10+) or ``await replies.aclose()``;
- errors are decoded as the sync client decodes them: ``RemoteError`` for
  a method that raised, ``WorkerLost`` for a message that took down
  workers, ``TimeoutError`` when no reply comes within ``timeout=``.

``ZMQ_FD`` is edge-triggered: it fires when the socket's state may have
changed, not while a message is waiting.  So every time it fires the reader
drains the socket until EAGAIN and then looks at ``ZMQ_EVENTS`` once more
(a message that came in meanwhile would not fire it again); a drain cut
short to let other tasks run is resumed by ``call_soon``, never left to
the descriptor.  The PUSH socket is watched the same way, only while calls
are waiting for room on it.

Works with any asyncio event loop, uvloop included.  A client belongs to
the loop of its first call.
"""

from __future__ import annotations

import asyncio
import collections
import sys
from typing import (TYPE_CHECKING, Any, AsyncGenerator, AsyncIterable, Awaitable, Callable,
                    Deque, Dict, Iterable, Iterator, List, Literal, NoReturn, Optional, Tuple,
                    Union, cast, overload)

import zmq

from pylm import clients
from pylm._cache import PROTOCOL
from pylm_core import _core
from pylm_core.errors import WorkerLost

__all__ = ["Client"]

#: Replies read from the socket in one go before other tasks get to run
#: (more replies than calls in flight never wait there, so this bounds
#: only a flood; reading in chunks of 4,096 made 10,000 concurrent evals
#: ~15% slower).
DRAIN = 65536
#: Payloads of this size or more are sent alone and lent, not batched.
ALONE_MIN = _core.LEND_MIN_
#: Calls a job keeps in flight (as the sync client's job).
JOB_WINDOW = clients.JOB_WINDOW


#: A reply as _Stream holds it: the payload, or (payload, error) for an
#: error (the remote error text, or the exception of a closed client).
_Reply = Union[bytes, Tuple[Optional[bytes], Union[str, BaseException]]]
# a deque of replies to mypy; collections.deque itself at run time
if TYPE_CHECKING:
    _StreamBase = Deque[_Reply]
else:
    _StreamBase = collections.deque
#: A call waiting in the backlog: (function, cache, payload, call id).
_Queued = Tuple[bytes, bytes, Any, int]


def _nbytes(payload: Any) -> int:
    return len(payload) if type(payload) is bytes else memoryview(payload).nbytes


def _expire(waiter: asyncio.Future[Any], message: str, *args: object) -> None:
    """A timer's end: waiter fails with TimeoutError(message % args) (the
    text is made only when a call does time out)."""
    if not waiter.done():
        waiter.set_exception(TimeoutError(message % args if args else message))


class _Stream(_StreamBase):
    """The receiver of a call that takes several replies (a job, or an
    eval with ``messages > 1``): the core's ReplyReader.dispatch appends
    each reply, a payload (bytes) or, for an error, a tuple (payload,
    error); the task reading them sleeps on `waiter` when none is queued."""

    __slots__ = ("waiter",)

    def __init__(self) -> None:
        super().__init__()
        self.waiter: Optional[asyncio.Future[None]] = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, loop: asyncio.AbstractEventLoop, timeout: Optional[float],
                   message: str) -> None:
        """Sleep until a reply is queued; TimeoutError after `timeout` s."""
        self.waiter = waiter = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, _expire, waiter, message)
        try:
            await waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()


class Client:
    """An asyncio client of the server (or Master) named `server_name`.

    The arguments are those of :class:`pylm.clients.Client`, keyword-only
    ones included (``timeout`` for the configuration fetch and the
    handshake; ``secret_key`` and ``server_key`` for CURVE, or the
    ``PYLM_SECRET_KEY``/``PYLM_SERVER_KEY`` environment), passed to the
    sync client that configures this one.  Use it from one event loop;
    close it with ``await client.close()`` or ``async with``.
    """

    def __init__(self, server_name: str, db_address: Optional[str],
                 push_address: Optional[str] = None, sub_address: Optional[str] = None,
                 session: Optional[str] = None, logging_level: Union[int, str, None] = None,
                 this_config: bool = False, **keywords: Any) -> None:
        # made without its configuration fetch, which blocks: the first
        # call fetches it in the loop's executor (_setup)
        self._sync = clients.Client(server_name, db_address, push_address, sub_address,
                                    session, logging_level, True, **keywords)
        self._must_fetch = not this_config
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        # the handshake, while it runs
        self._joining: Optional[asyncio.Future[None]] = None
        # call id -> Future (one reply) or _Stream
        self._pending: Dict[int, Union[asyncio.Future[Any], _Stream]] = {}
        # calls of this turn of the loop (pylm servers); False: one envelope per call
        self._batch: Union[_core.CallBatch, Literal[False], None] = None
        # calls waiting for room, or sent alone
        self._backlog: Deque[_Queued] = collections.deque()
        self._flush_soon = False
        self._watching_room = False
        self._closed = False

    # what the sync client knows ---------------------------------------------
    @property
    def server_name(self) -> str:
        """The name of the server this client calls."""
        value: str = self._sync.server_name
        return value

    @property
    def db_address(self) -> Optional[str]:
        """The server's cache address."""
        value: Optional[str] = self._sync.db_address
        return value

    @property
    def push_address(self) -> Optional[str]:
        """Where calls go: as given, else the server's pull address once
        the first call fetched the configuration (None before)."""
        value: Optional[str] = self._sync.push_address
        return value

    @property
    def sub_address(self) -> Optional[str]:
        """Where replies come from: as given, else the server's pub address
        once the first call fetched the configuration (None before)."""
        value: Optional[str] = self._sync.sub_address
        return value

    @property
    def session(self) -> Optional[str]:
        """The prefix of cache keys and the `pipeline` of calls, if given."""
        value: Optional[str] = self._sync.session
        return value

    @property
    def uuid(self) -> str:
        """This client's id: the topic its replies are published under."""
        value: str = self._sync.uuid
        return value

    @property
    def timeout(self) -> Optional[float]:
        """Seconds for the configuration fetch and the handshake."""
        value: Optional[float] = self._sync.timeout
        return value

    @property
    def stale(self) -> int:
        """Replies dropped because their call had ended (timed out or
        cancelled), or came from an earlier client of the session."""
        reader = self._sync._reader
        return 0 if reader is None else reader.stale

    @property
    def pending(self) -> int:
        """How many calls are waiting for replies (0 once every call
        returned, failed, timed out or was cancelled)."""
        return len(self._pending)

    # context manager ---------------------------------------------------------
    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop watching the sockets and close them (idempotent).  Calls
        still waiting fail with ConnectionError."""
        joining = self._joining
        if joining is not None and not joining.done():
            # the handshake runs in a thread on these sockets: let it end
            await asyncio.wait([joining])
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop, sync = self._loop, self._sync
        if loop is not None and not loop.is_closed() and sync._sub is not None:
            loop.remove_reader(cast(int, sync._sub.getsockopt(zmq.FD)))
            if self._watching_room:
                assert sync._push is not None       # made with _sub
                loop.remove_reader(cast(int, sync._push.getsockopt(zmq.FD)))
        pending, self._pending = self._pending, {}
        for receiver in pending.values():
            error = ConnectionError("the client was closed")
            if isinstance(receiver, _Stream):
                receiver.append((None, error))
                receiver.wake()
            elif not receiver.done():
                receiver.set_exception(error)
        self._backlog.clear()
        self._batch = None
        sync.close()

    # plumbing ------------------------------------------------------------------
    async def _connect(self, timeout: Optional[float]) -> None:
        """Make the sockets and run the sync client's subscription
        handshake (in the loop's executor: it blocks), once; then watch the
        SUB socket from this loop."""
        if self._closed:
            raise ConnectionError("the client is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("a pylm.aio.Client belongs to the event loop of its first call")
        if self._joining is None:
            self._joining = loop.run_in_executor(None, self._setup, timeout)
        joining = self._joining
        try:
            await asyncio.shield(joining)
        except BaseException:
            if joining.done() and self._joining is joining:
                self._joining = None    # failed: the next call tries again
            raise
        if self._sync._reader is not None and self._batch is None and not self._closed:
            self._watch()

    def _setup(self, timeout: Optional[float]) -> None:
        """In a thread of the executor (it blocks): the configuration fetch
        (once it succeeded, never again; not at all with `this_config`),
        then the sync client's sockets and handshake."""
        if self._must_fetch:
            self._sync._fetch_config()
            self._must_fetch = False
        self._sync._connect(timeout)

    def _watch(self) -> None:
        sync = self._sync
        reader, sub, loop = sync._reader, sync._sub, self._loop
        assert reader is not None and sub is not None and loop is not None  # _connect
        reader.pipeline = sync._pipeline
        reader.call = 0                 # every call id: _on_replies sorts them
        if sync._protocol == PROTOCOL:
            self._batch = _core.CallBatch(sync._push, sync._pipeline, sync._topic,
                                          sync._batch_bytes)
        else:
            self._batch = False         # pylm 0.14 or parts: one envelope per call
        loop.add_reader(cast(int, sub.getsockopt(zmq.FD)), self._on_replies)
        loop.call_soon(self._on_replies)  # what came before the watch began

    def _on_replies(self) -> None:
        """Read every reply there is (at most DRAIN now, the rest in the
        next turn) and hand each to the call waiting for it."""
        sync = self._sync
        reader, sub, loop = sync._reader, sync._sub, self._loop
        if self._closed or reader is None:
            return
        assert sub is not None and loop is not None     # made with the reader
        read, streams, answered = reader.dispatch(self._pending, _Stream, DRAIN)
        for future, payload, error in answered:
            if not future.done():
                future.set_result((payload, error))
        for stream in streams:
            stream.wake()
        # ZMQ_FD is edge-triggered: after EAGAIN, ask ZMQ_EVENTS once more
        if read == DRAIN or cast(int, sub.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            loop.call_soon(self._on_replies)

    def _send(self, function: bytes, cache: bytes, payload: Any, call: int) -> None:
        """Queue a call: it leaves at the end of this turn of the loop
        (with the others of the turn, in one batch), or at once when the
        batch is full."""
        batch = self._batch
        if batch and not self._watching_room and _nbytes(payload) < ALONE_MIN:
            if batch.add(function, cache, payload, call):
                self._flush()
                return
        else:
            self._backlog.append((function, cache, payload, call))
        if not self._flush_soon:
            self._flush_soon = True
            assert self._loop is not None       # _connect set it
            self._loop.call_soon(self._flush)

    def _send_from(self, function: bytes, cache: bytes, source: Iterator[Any], call: int,
                   most: int) -> Tuple[int, bool]:
        """Queue calls for up to `most` payloads of the iterator `source`
        (in the core while they go in batches); (calls queued, whether
        `source` is exhausted)."""
        batch = self._batch
        queued = 0
        exhausted = False
        while queued < most:
            if batch and not self._watching_room:
                n, why = batch.add_from(function, cache, source, call, most - queued)
                queued += n
                if type(why) is int:
                    if why == _core.STOP_FULL:
                        self._watch_room(True)
                        continue
                    exhausted = why == _core.STOP_END
                    break
                payload = why               # a large payload: it goes alone
            else:
                try:
                    payload = next(source)
                except StopIteration:
                    exhausted = True
                    break
                clients._check_payload(payload)
            self._send(function, cache, payload, call)
            queued += 1
        self._flush_later()
        return queued, exhausted

    async def _send_from_async(self, function: bytes, cache: bytes,
                               next_async: Callable[[], Awaitable[Any]], call: int,
                               most: int) -> Tuple[int, bool]:
        """_send_from for an async iterator (its __anext__)."""
        queued = 0
        while queued < most:
            try:
                payload = await next_async()
            except StopAsyncIteration:
                return queued, True
            clients._check_payload(payload)
            self._send(function, cache, payload, call)
            queued += 1
        return queued, False

    def _flush_later(self) -> None:
        """Send what is queued at the end of this turn of the loop."""
        if not self._flush_soon and (self._batch and self._batch.count or self._backlog):
            self._flush_soon = True
            assert self._loop is not None       # _connect set it
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send what is queued; when the PUSH socket has no room, watch it
        and go on when it has."""
        self._flush_soon = False
        if self._closed:
            return
        batch, backlog, pending, sync = self._batch, self._backlog, self._pending, self._sync
        while True:
            if batch and not batch.send():
                return self._watch_room(True)
            if not backlog:
                break
            while backlog:
                function, cache, payload, call = backlog[0]
                if call not in pending:         # timed out or cancelled before it left
                    backlog.popleft()
                    continue
                if batch and _nbytes(payload) < ALONE_MIN:
                    backlog.popleft()
                    if batch.add(function, cache, payload, call):
                        break                   # full: send it, then go on
                    continue
                try:
                    _core.send_call(sync._push, sync._pipeline, sync._topic, function, cache,
                                    payload, timeout=0, batch_replies=bool(batch), call=call)
                except TimeoutError:            # no room now
                    return self._watch_room(True)
                backlog.popleft()
        self._watch_room(False)

    def _watch_room(self, on: bool) -> None:
        """Watch the PUSH socket's ZMQ_FD while calls wait for room."""
        if on == self._watching_room:
            return
        self._watching_room = on
        push, loop = self._sync._push, self._loop
        assert push is not None and loop is not None    # _connect made them
        fd = cast(int, push.getsockopt(zmq.FD))
        if on:
            loop.add_reader(fd, self._on_room)
            loop.call_soon(self._on_room)     # room may have come already
        else:
            loop.remove_reader(fd)

    def _on_room(self) -> None:
        if self._closed or not self._watching_room:
            return
        assert self._sync._push is not None     # _connect made it
        if cast(int, self._sync._push.getsockopt(zmq.EVENTS)) & zmq.POLLOUT:
            self._flush()

    def _call_id(self) -> int:
        return self._sync._next_call()

    def _raise(self, error: Union[str, BaseException]) -> NoReturn:
        if isinstance(error, BaseException):        # the client was closed
            raise error
        raise self._sync._remote_error(error)

    # calls ----------------------------------------------------------------------
    @overload
    async def eval(self, function: clients.Function, payload: Any, messages: Literal[1] = ...,
                   cache: str = ..., *, timeout: Optional[float] = ...) -> bytes: ...

    @overload
    async def eval(self, function: clients.Function, payload: Any, messages: int,
                   cache: str = ..., *,
                   timeout: Optional[float] = ...) -> Union[bytes, List[bytes]]: ...

    async def eval(self, function: clients.Function, payload: Any, messages: int = 1,
                   cache: str = "", *,
                   timeout: Optional[float] = None) -> Union[bytes, List[bytes]]:
        """Send one message; return the reply payload, or a list of
        `messages` replies.  Raises TimeoutError when they do not come
        within `timeout` seconds, pylm.RemoteError when the method raised.
        Cancelling the awaiting task ends the call: its reply is dropped."""
        name = self._sync._function(function)
        fn = name.encode()
        clients._check_payload(payload)
        if self._batch is None:
            await self._connect(timeout)
        loop = self._loop
        assert loop is not None         # _connect set it
        call = self._call_id()
        what = "no reply from %s within %s s"
        receiver: Union[asyncio.Future[Tuple[bytes, Optional[str]]], _Stream]
        future: asyncio.Future[Tuple[bytes, Optional[str]]]
        stream: _Stream
        if messages == 1:
            receiver = future = loop.create_future()
        else:
            receiver = stream = _Stream()
        self._pending[call] = receiver
        try:
            self._send(fn, cache.encode(), payload, call)
            if messages == 1:
                timer = None if timeout is None else loop.call_later(
                    timeout, _expire, future, what, name, timeout)
                try:
                    reply, error = await future
                finally:
                    if timer is not None:
                        timer.cancel()
                if error is not None:
                    self._raise(error)
                return reply
            results: List[bytes] = []
            deadline = None if timeout is None else loop.time() + timeout
            while len(results) < messages:
                if not stream:
                    left = None if deadline is None else max(0.0, deadline - loop.time())
                    await stream.wait(loop, left, what % (name, timeout))
                    continue
                queued = stream.popleft()
                if type(queued) is tuple:
                    self._raise(queued[1])
                results.append(cast(bytes, queued))
            return results
        finally:
            self._pending.pop(call, None)

    async def job(self, function: clients.Function,
                  payloads: Union[Iterable[Any], AsyncIterable[Any]], messages: int = sys.maxsize,
                  cache: str = "", *, timeout: Optional[float] = None,
                  window: int = JOB_WINDOW) -> AsyncGenerator[bytes, None]:
        """Send every payload of `payloads` (an iterable or an async
        iterable) and yield the replies as they come, until `messages`
        replies arrived (by default one for each payload sent).  At most
        `window` calls are in flight; `timeout` bounds the wait for each
        reply (TimeoutError).  A method that raises raises
        pylm.RemoteError here; a message that took down workers (poison)
        is skipped, and pylm.WorkerLost is raised once the rest of the job
        has been delivered, as with the sync client."""
        fn = self._sync._function(function).encode()
        key = cache.encode()
        await self._connect(timeout)
        loop = self._loop
        assert loop is not None         # _connect set it
        window = max(1, window)
        # refill in whole batches, as the sync job loop does
        refill = max(1, min(256, window // 2)) if self._batch else 1
        source: Optional[Iterator[Any]]
        next_async: Optional[Callable[[], Awaitable[Any]]]
        if hasattr(payloads, "__aiter__"):
            source, next_async = None, cast("AsyncIterable[Any]", payloads).__aiter__().__anext__
        else:
            source, next_async = iter(payloads), None
        call = self._call_id()
        stream = _Stream()
        popleft = stream.popleft
        self._pending[call] = stream
        sent = received = 0
        done = False
        until_answered = messages == sys.maxsize
        lost: List[BaseException] = []
        what = "no reply for %s s (%%d of the job's replies received)" % timeout
        next_fill = 0       # refill once `received` reaches it (`messages`: never)
        try:
            while received < messages:
                if received >= next_fill:
                    if next_async is None:
                        assert source is not None
                        queued, done = self._send_from(fn, key, source, call,
                                                       window - sent + received)
                    else:
                        queued, done = await self._send_from_async(
                            fn, key, next_async, call, window - sent + received)
                    sent += queued
                    next_fill = messages if done else sent - window + refill
                if stream:
                    reply = popleft()
                    received += 1
                    if type(reply) is bytes:
                        yield reply
                        continue
                    assert type(reply) is tuple
                    error = reply[1]
                    exc = error if isinstance(error, BaseException) else \
                        self._sync._remote_error(error)
                    if not isinstance(exc, WorkerLost):
                        raise exc
                    lost.append(exc)
                    continue
                if until_answered and done and sent == received:
                    break
                await stream.wait(loop, timeout, what % received)
        finally:
            self._pending.pop(call, None)
            if self._backlog:           # calls of the job still waiting for room
                self._backlog = collections.deque(
                    entry for entry in self._backlog if entry[3] != call)
        if lost:
            raise WorkerLost("%d message(s) of the job took down %d workers each and "
                             "were not run; the other replies were delivered"
                             % (len(lost), clients.MAX_LOST), lost)
