"""Client: calls servers with ``eval`` (one message) and ``job`` (a stream).

Sockets are made once per Client (a PUSH to the server's pull address and a
SUB on the last stage's pub address), on first use.  Before the first call
the client makes sure its subscription is live: with our servers by a ping
handshake, with pylm 0.14 servers by one wait (they cannot answer pings).
Every blocking call takes ``timeout=`` (seconds; None waits forever).

A Client is not thread-safe (ZeroMQ sockets are not): it belongs to the
thread that first calls it (until that thread ends), and a call from any
other thread raises RuntimeError (close() excepted, unless it would cut a
running call short).  Threads use one Client each, or share a
pylm.futures.Executor.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
from typing import (TYPE_CHECKING, Any, Callable, Dict, Generator, Iterable, Iterator, List,
                    Literal, NoReturn, Optional, Sequence, Tuple, Union, overload)

import zmq

from pylm_core import _core
from pylm import _local
from pylm._cache import (CONFIG_PROTOCOL_KEY, PROTOCOL, PROTOCOL_PARTS, UNLIMITED, CacheClient,
                         batch_bytes_for)
from pylm._context import context
from pylm._progress import job_total, progress_bar
from pylm._stats import parse_stats
from pylm.security import Security
from pylm_core.errors import WORKER_LOST, RemoteError, WorkerLost

if TYPE_CHECKING:
    from pylm.security import KeyPath, Socket

#: What names a method: "server.method", or a list of stages for a stream.
Function = Union[str, Sequence[str]]

__all__ = ["Client"]

#: Wait before the first call to a pylm 0.14 server, whose subscriptions
#: cannot be confirmed (the time pylm 0.14 itself slept).
LEGACY_JOIN_WAIT = 0.5
#: How long the handshake pings for an answer after the welcome.
PING_BUDGET = 0.5
#: The first message every pylm server's XPUB sends a new subscriber.
WELCOME = _core.WELCOME
#: Workers a message may take down before the Master gives up on it.
MAX_LOST = _core.MAX_LOST_
#: What on_error returns for a reply the job does not yield.
_LOST = object()
#: Calls a job keeps in flight; bounds every queue between client and workers.
JOB_WINDOW = 2000
#: Taken only when a Client is bound to its thread (its first call).
_BIND_LOCK = threading.Lock()
#: After a server's new welcome, an eval is sent again when no reply came
#: for this long, then twice as long... (its reply may have been published
#: before our subscription reached the new server).
RESEND_FIRST = 1.0
#: Call ids of a job sent with resend (one id per call): the top bit set,
#: then the job's number, then the call's index; an eval's id stays below.
_JOB_ID_BIT = 1 << 63
_JOB_SHIFT = 40


def _check_payload(payload: Any) -> Any:
    if isinstance(payload, str) or not isinstance(payload, (bytes, bytearray, memoryview)):
        try:
            memoryview(payload)     # type: ignore[arg-type]  # str: the TypeError wanted
        except TypeError:
            raise TypeError("payload must be bytes or bytes-like, not %s"
                            % type(payload).__name__) from None
        if isinstance(payload, str):
            raise TypeError("payload must be bytes, not str")
    return payload


def _thread_name(thread: threading.Thread) -> str:
    """A thread's name and ident, for error messages."""
    return "thread %r (ident %s%s)" % (thread.name, thread.ident,
                                       "" if thread.is_alive() else ", ended")


class Client:
    """A client of the server (or Master) named `server_name`.

    :param server_name: must equal the `name` in the server's cache
    :param db_address: the server's cache address
    :param push_address: where calls go (default: the server's pull_address)
    :param sub_address: where replies come from (default: its pub_address;
        for a stream, the last stage's)
    :param session: prefix of cache keys, and the `pipeline` of calls
    :param logging_level: level of this client's logger (``pylm.client``);
        None (the default) leaves it to the application's logging
        configuration
    :param this_config: do not ask the cache for addresses
    :param timeout: keyword-only; seconds for the configuration fetch and
        the subscription handshake (default 10)
    :param server_key: keyword-only; path of the server's public ``.key``:
        every socket to it (cache, push, sub) is CURVE.  For a stream, its
        stages share the key pair.
    :param secret_key: keyword-only; this client's key pair (a
        ``.key_secret``), for servers with `authorized_keys`; without it a
        pair is made at construction.  Both fall back to
        ``PYLM_SERVER_KEY`` and ``PYLM_SECRET_KEY``.
    :param resend: keyword-only; when the server restarts (or a cut link
        comes back) during a job or eval, send again every call that has
        no reply yet, and hand the caller each reply once (README,
        "Reliability").  None (the default): on for a Master (or Hub) of
        ours, off for a Server, whose methods may not be safe to run twice;
        job() and eval() take `resend=` too, for one call.  Only where one
        reply per call is expected: a job without `messages=`, an eval of
        one message.

    Not thread-safe: the first thread that calls the client (eval, job,
    set, get, delete, stats) owns it, and any other thread's call raises
    RuntimeError while that thread lives (once it ended, the next thread
    to call takes the client over).  close() works from any thread, except
    that another thread's close() while the owner is in a call (an eval,
    or a job not yet ended) raises RuntimeError instead of closing the
    sockets under the call.  The constructor binds nothing, so a client
    may be made in one thread and handed to another.
    """

    def __init__(self, server_name: str, db_address: Optional[str],
                 push_address: Optional[str] = None, sub_address: Optional[str] = None,
                 session: Optional[str] = None, logging_level: Union[int, str, None] = None,
                 this_config: bool = False, *, timeout: Optional[float] = 10.0,
                 secret_key: KeyPath = None, server_key: KeyPath = None,
                 resend: Optional[bool] = None) -> None:
        self.server_name = server_name
        self.db_address = db_address
        self.session = session
        self.uuid = str(uuid.uuid4())
        self._topic = self.uuid.encode()
        # the `pipeline` of this client's calls (pylm 0.14: the session or a
        # UUID); calls are told apart by their call id (field 17)
        self._pipeline = (session or str(uuid.uuid4())).encode()
        self.timeout = timeout
        self.logger = logging.getLogger("pylm.client")
        if logging_level is not None:
            self.logger.setLevel(logging_level)
        self._security = Security.for_client(secret_key, server_key)
        self._cache = (CacheClient(db_address, server_name, timeout, self._security)
                       if db_address else None)
        self._push: Optional[Socket] = None
        self._sub: Optional[Socket] = None
        self._reader: Optional[_core.ReplyReader] = None
        self._joined = False
        self._calls = int.from_bytes(os.urandom(4), "little") << 16
        self._jobs = int.from_bytes(os.urandom(2), "little")
        self.resend = resend
        #: the server brokers calls to workers (a Master or Hub): resend by default
        self._brokered = False
        self._protocol: Optional[bytes] = None
        #: how the subscription was known to be live: "welcome" (the
        #: XPUB's greeting), "wait" (pylm 0.14's fixed wait) or "silence"
        self._joined_by: Optional[str] = None
        self._batch_bytes = UNLIMITED
        self._closed = False
        #: the thread this client belongs to (_check_thread): the first to
        #: call it, or the first after that one ended
        self._owner: Optional[threading.Thread] = None
        #: calls of the owner running now (a job until its generator ends);
        #: changed and read under _busy_lock, so that close() from another
        #: thread never closes sockets a call is using
        self._running = 0
        self._busy_lock = threading.Lock()
        # A sub_address given by the caller may be the pub of a later stage
        # (a pylm 0.14 Pipeline, say): whether it welcomes is then unknown.
        self._sub_is_server = sub_address is None
        self.push_address = push_address
        self.sub_address = sub_address
        if not this_config:
            self._fetch_config()

    def _fetch_config(self) -> None:
        """Ask the server's cache for its name (checked), the addresses not
        given, its protocol and message size bound; closes the client and
        raises when that fails.  Blocking: __init__ calls it unless
        `this_config`, pylm.aio.Client in its executor's thread."""
        try:
            cache = self._cache_client()
            name = cache.request("get", b"name").decode()
            if name != self.server_name:
                raise ValueError("the server at %s is %r, not %r"
                                 % (self.db_address, name, self.server_name))
            fetch_push, fetch_sub = self.push_address is None, self.sub_address is None
            if fetch_push:
                self.push_address = cache.request("get", b"pull_address").decode()
            if fetch_sub:
                self.sub_address = cache.request("get", b"pub_address").decode()
            self._protocol = cache.request("get", CONFIG_PROTOCOL_KEY.encode())
            if self._protocol == PROTOCOL:
                if fetch_push and fetch_sub:
                    self._take_local_links(cache)
                self._batch_bytes = batch_bytes_for(
                    cache.request("get", b"max_message_size"))
                self._brokered = bool(cache.request("get", b"worker_push_address"))
        except BaseException:
            self.close()
            raise

    def _take_local_links(self, cache: CacheClient) -> None:
        """On the server's host, its ipc twins instead of the tcp addresses
        from its cache (both or neither: pylm._local)."""
        def get(key: bytes) -> bytes:
            return cache.request("get", key)

        twins = _local.local_addresses(get, _local.LOCAL_PULL_KEY, _local.LOCAL_PUB_KEY)
        if twins is not None:
            self.push_address, self.sub_address = twins

    # context manager -------------------------------------------------------
    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every socket of the client (idempotent).

        From the thread that owns the client, always.  From another
        thread, only while no call of the client is running (an eval, or a
        job whose generator has not ended): then RuntimeError, since
        closing sockets a call is using would make that call fail on
        closed sockets (or worse, in libzmq)."""
        owner = self._owner
        if owner is None or owner is threading.current_thread():
            self._close_sockets()
            return
        with self._busy_lock:
            if self._running:
                raise RuntimeError(
                    "this pylm Client is in a call in %s: close() it from that thread, or "
                    "after the call returned (or its job ended or was closed)"
                    % _thread_name(owner))
            self._close_sockets()

    def _begin_call(self) -> None:
        with self._busy_lock:
            self._running += 1

    def _end_call(self) -> None:
        with self._busy_lock:
            self._running -= 1

    def _close_sockets(self) -> None:
        """close() without its thread check."""
        for sock in (self._push, self._sub):
            if sock is not None:
                sock.close(linger=0)
        self._push = self._sub = self._reader = None
        _core.release_sent()
        if self._cache is not None:
            self._cache.close()
        self._joined = False

    clean = close  # pylm 0.14's name

    def __del__(self) -> None:
        try:
            self._close_sockets()     # nothing runs a call of an unreachable client
        except Exception:
            pass

    # plumbing --------------------------------------------------------------
    def _check_thread(self) -> None:
        """Bind the client to the calling thread on its first call (or on
        the first after its thread ended); raise RuntimeError when another
        thread calls it while that one lives (its sockets would be used by
        two threads at once, mixing their messages)."""
        me = threading.current_thread()
        owner = self._owner
        if owner is me:
            return
        with _BIND_LOCK:
            owner = self._owner
            if owner is None or not owner.is_alive():
                self._owner = me
                return
        raise RuntimeError(
            "this pylm Client belongs to the thread that first called it (%s), not to %s: "
            "a Client is not thread-safe; use one Client per thread, or a "
            "pylm.futures.Executor, which is safe to call from many threads"
            % (_thread_name(owner), _thread_name(me)))

    def _connect(self, timeout: Optional[float]) -> None:
        if self._push is None:
            if not self.push_address or not self.sub_address:
                raise ValueError("the client has no push_address/sub_address")
            ctx = context()
            self._push = push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 1000)
            self._sub = sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, 0)
            sub.setsockopt_string(zmq.SUBSCRIBE, self.uuid)
            sub.setsockopt(zmq.SUBSCRIBE, WELCOME)
            self._security.apply(push, connect=self.push_address)
            self._security.apply(sub, connect=self.sub_address)
            push.connect(self.push_address)
            sub.connect(self.sub_address)
            self._reader = _core.ReplyReader(sub)
        if not self._joined:
            self._join(timeout)

    def _join(self, timeout: Optional[float]) -> None:
        """Make sure the SUB receives before the first call.

        Our servers' XPUB greets each new subscriber (XPUB_WELCOME_MSG):
        the welcome proves the connection is up and our subscription was
        sent.  A ping through the push path, answered at the last stage,
        then proves the subscription is in place (best effort: a stream with
        custom topics does not carry pings).  A server made of parts
        (PROTOCOL_PARTS) gets no ping: it would travel through user parts,
        perhaps to pylm 0.14 workers, which fail on it.  pylm 0.14 servers do
        neither: for them the client waits once, as pylm 0.14 did before
        every call.
        """
        if self._protocol is not None and self._protocol not in (PROTOCOL, PROTOCOL_PARTS):
            time.sleep(LEGACY_JOIN_WAIT)
            self._joined_as("wait")
            return
        given = self.timeout if timeout is None else timeout
        limit = 1e9 if given is None else given
        deadline = time.monotonic() + limit
        if not self._await_welcome(limit, deadline):
            self._joined_as("silence")
            return
        if self._protocol != PROTOCOL_PARTS:
            # a server made of parts routes every call through user parts,
            # maybe to pylm 0.14 workers (which die on a ping): the welcome
            # alone says the subscription went out, before any call
            self._ping_until_answered(deadline)
        self._joined_as("welcome")

    def _joined_as(self, how: str) -> None:
        """The subscription is live, known by `how` (see _joined_by)."""
        self._joined = True
        self._joined_by = how

    def _await_welcome(self, limit: float, deadline: float) -> bool:
        """Read the SUB until the XPUB's welcome: True.  A publisher not
        known to be ours (no protocol in the cache, or a sub_address given
        by the caller) that stays silent for a second is taken for pylm
        0.14's: False.  TimeoutError when one known to be ours does not
        welcome by `deadline` (`limit` seconds from now)."""
        known = self._protocol in (PROTOCOL, PROTOCOL_PARTS) and self._sub_is_server
        welcome_by = deadline if known else time.monotonic() + min(limit, 1.0)
        sub = self._sub
        assert sub is not None      # _connect made it
        while True:
            left = welcome_by - time.monotonic()
            if left <= 0 or not sub.poll(int(left * 1000) + 1, zmq.POLLIN):
                if not known:       # silent publisher of unknown kind: pylm 0.14
                    return False
                raise TimeoutError("no publisher answered at %s within %s s"
                                   % (self.sub_address, limit))
            if sub.recv_multipart() == [WELCOME]:
                if self._protocol is None:
                    self._protocol = PROTOCOL
                return True

    def _ping_until_answered(self, deadline: float) -> None:
        """Ping through the push path until a ping comes back on the SUB,
        which proves the subscription is in place at the last stage; for at
        most PING_BUDGET seconds (best effort: a stream with custom topics
        does not carry pings)."""
        nonce = uuid.uuid4().hex.encode()
        ping_cache = _core.PING_PREFIX + b":" + nonce
        pong_by = min(deadline, time.monotonic() + PING_BUDGET)
        interval = 0.005
        reader = self._reader
        assert reader is not None   # _connect made it
        while time.monotonic() < pong_by:
            reader.pipeline = None
            reader.call = 0
            _core.send_call(self._push, nonce, self.uuid.encode(), b"", ping_cache, b"",
                            timeout=max(0.0, deadline - time.monotonic()))
            try:
                msg = reader.recv_message(timeout=interval)
            except TimeoutError:
                interval = min(interval * 2, 0.1)
                continue
            if msg.cache.encode() == ping_cache:
                return

    def _next_call(self) -> int:
        """A new call id (field 17): replies carry it back, so a late reply
        of an earlier call is never taken for one of this call."""
        self._calls += 1
        return self._calls

    def _resends(self, resend: Optional[bool]) -> bool:
        """Whether a call is sent again after a restart: `resend` when
        given, else the client's, else on for a Master of ours.  Never with
        a server that is not ours (no welcomes, no call ids)."""
        if resend is None:
            resend = self.resend
        if resend is None:
            resend = self._brokered
        return bool(resend) and self._protocol == PROTOCOL

    def _function(self, function: Function) -> str:
        if isinstance(function, (list, tuple)):
            function = " ".join(function)
        if not isinstance(function, str):
            raise TypeError("function must be str or a list of str")
        return function

    @staticmethod
    def _remote_error(error: str) -> Union[RemoteError, WorkerLost]:
        """The exception for an error reply: WorkerLost for a poison
        message, RemoteError for a method that raised."""
        exc = RemoteError.from_wire(error)
        if exc.code == WORKER_LOST:
            return WorkerLost(exc.remote_message)
        return exc

    def _raise_remote(self, error: str) -> NoReturn:
        raise self._remote_error(error)

    # calls -----------------------------------------------------------------
    @overload
    def eval(self, function: Function, payload: Any, messages: Literal[1] = ...,
             cache: str = ..., *, timeout: Optional[float] = ...,
             resend: Optional[bool] = ...) -> bytes: ...

    @overload
    def eval(self, function: Function, payload: Any, messages: int,
             cache: str = ..., *, timeout: Optional[float] = ...,
             resend: Optional[bool] = ...) -> Union[bytes, List[bytes]]: ...

    def eval(self, function: Function, payload: Any, messages: int = 1, cache: str = "", *,
             timeout: Optional[float] = None,
             resend: Optional[bool] = None) -> Union[bytes, List[bytes]]:
        """Send one message; return the reply payload, or a list of
        `messages` replies.  Raises TimeoutError when no reply comes within
        `timeout` seconds, pylm.RemoteError when the method raised.
        `resend`: send the call again if the server restarts before it
        answers (see the class; default: the client's)."""
        self._check_thread()
        self._begin_call()
        try:
            return self._eval(function, payload, messages, cache, timeout, resend)
        finally:
            self._end_call()

    def _eval(self, function: Function, payload: Any, messages: int, cache: str,
              timeout: Optional[float], resend: Optional[bool]) -> Union[bytes, List[bytes]]:
        name = self._function(function)
        _check_payload(payload)
        self._connect(timeout)
        reader = self._reader
        assert reader is not None   # _connect made it
        call = self._next_call()
        pipeline = self._pipeline
        reader.pipeline = pipeline
        reader.call = call

        def send() -> None:
            _core.send_call(self._push, pipeline, self._topic, name.encode(),
                            cache.encode(), payload, timeout=timeout,
                            batch_replies=self._protocol == PROTOCOL, call=call)

        send()
        deadline = None if timeout is None else time.monotonic() + timeout
        if messages == 1 and self._resends(resend):
            reply, error = self._recv_resending(reader, send, deadline, name, timeout)
            if error is not None:
                self._raise_remote(error)
            return reply
        results: List[bytes] = []
        for _ in range(messages):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                reply, error = reader.recv(left)
            except TimeoutError:
                raise TimeoutError("no reply from %s within %s s" % (name, timeout)) from None
            if error is not None:
                self._raise_remote(error)
            results.append(reply)
        return results[0] if messages == 1 else results

    def _recv_resending(self, reader: _core.ReplyReader, send: Callable[[], None],
                        deadline: Optional[float], name: str,
                        timeout: Optional[float]) -> Tuple[bytes, Optional[str]]:
        """The reply of the call just sent by `send()`, which is called
        again when a new publisher welcomes the SUB (the server restarted),
        and then whenever no reply came for RESEND_FIRST seconds, twice
        that, ...  Later replies of the call are dropped by the reader (the
        next call has another id)."""
        seen = reader.welcomes
        again_at: Optional[float] = None
        every = RESEND_FIRST
        while True:
            now = time.monotonic()
            left = None if deadline is None else max(0.0, deadline - now)
            wait = left
            if again_at is not None:
                wait = max(0.0, again_at - now) if left is None else \
                    max(0.0, min(left, again_at - now))
            try:
                got = reader.recv_until_welcome(wait, seen)
            except TimeoutError:
                if again_at is None or (deadline is not None and
                                        time.monotonic() >= deadline):
                    raise TimeoutError("no reply from %s within %s s"
                                       % (name, timeout)) from None
                every *= 2
            else:
                if got is not None:
                    return got
                seen = reader.welcomes          # a new publisher
                every = RESEND_FIRST
                self.logger.info("%s: the server is back; call sent again", name)
            send()
            again_at = time.monotonic() + every

    def job(self, function: Function, generator: Iterable[Any], messages: int = sys.maxsize,
            cache: str = "", *, timeout: Optional[float] = None, window: int = JOB_WINDOW,
            progress: bool = False, resend: Optional[bool] = None) -> Iterator[bytes]:
        """Send every payload the generator yields and yield the replies as
        they come, until `messages` replies arrived (or, by default, one
        for each payload sent).  At most `window` calls are in flight.
        `timeout` bounds the wait for each reply.  A method that raises
        raises pylm.RemoteError here; a message that took down MAX_LOST
        workers (poison) is skipped, and pylm.WorkerLost is raised once the
        rest of the job has been delivered.

        :param progress: show a tqdm progress bar of the replies on stderr
            (its total: `messages`, or len() of the payloads when they have
            one); needs tqdm (``pylm[progress]``), else ImportError here
        :param resend: send again the calls without a reply when the server
            restarts mid-job; each reply is yielded once (see the class;
            default: the client's).  Not with `messages=` (a server may
            answer a call with several replies).
        """
        self._check_thread()
        bar = None
        if progress:
            bar = progress_bar(job_total(messages, generator, sys.maxsize),
                               desc=self._function(function))
        return self._job(function, generator, messages, cache, timeout, window, bar, resend)

    def _job(self, function: Function, generator: Iterable[Any], messages: int, cache: str,
             timeout: Optional[float], window: int, bar: Any,
             resend: Optional[bool] = None) -> Generator[bytes, None, None]:
        """The generator behind job(); `bar`, when not None, counts replies.
        Until it ends the client is in a call, which close() from another
        thread refuses to cut short (_begin_call).  The replies come from
        the core's JobStream through this one generator (no other Python
        frame per reply)."""
        self._check_thread()        # the generator may be iterated elsewhere
        self._begin_call()
        try:
            lost: List[BaseException] = []
            stream = self._job_stream(function, generator, messages, cache, timeout,
                                      window, resend, lost)
            if bar is None:
                yield from stream
            else:
                for payload in stream:
                    bar.update(1)
                    yield payload
            if lost:
                raise WorkerLost("%d message(s) of the job took down %d workers each and "
                                 "were not run; the other replies were delivered"
                                 % (len(lost), MAX_LOST), lost)
        finally:
            self._end_call()
            if bar is not None:
                bar.close()

    def _job_stream(self, function: Function, generator: Iterable[Any], messages: int,
                    cache: str, timeout: Optional[float], window: int,
                    resend: Optional[bool], lost: List[BaseException]) -> _core.JobStream:
        """The core's iterator of the job's replies; a poison message's
        WorkerLost goes to `lost` (reported once the job is done), any other
        error reply raises."""
        name = self._function(function)
        self._connect(timeout)
        reader = self._reader
        assert reader is not None   # _connect made it

        def on_error(error: str) -> object:
            # a poison message does not stop the job: it is reported at the end
            exc = self._remote_error(error)
            if not isinstance(exc, WorkerLost):
                raise exc
            lost.append(exc)
            return _LOST

        resends = messages == sys.maxsize and self._resends(resend)
        if resends:
            # one id per call, apart from every eval's and other jobs'
            self._jobs = (self._jobs + 1) % (1 << (63 - _JOB_SHIFT))
            call = _JOB_ID_BIT | (self._jobs << _JOB_SHIFT)
        else:
            call = self._next_call()
        return _core.JobStream(self._push, reader, generator, self._pipeline,
                               self._topic, name.encode(), cache.encode(),
                               min(messages, 2**62), window=window, timeout=timeout,
                               batch=self._protocol == PROTOCOL,
                               on_error=on_error, call=call,
                               until_answered=messages == sys.maxsize,
                               batch_bytes=self._batch_bytes, resend=resends, skip=_LOST)

    # cache -------------------------------------------------------------------
    def _key(self, key: str) -> str:
        return "%s%s" % (self.session, key) if self.session else key

    def _cache_client(self) -> CacheClient:
        """The link to the server's cache; ValueError without a db_address."""
        if self._cache is None:
            raise ValueError("the client has no db_address")
        return self._cache

    def set(self, value: bytes, key: Optional[str] = None) -> str:
        """Store value (bytes) in the server's cache; returns the key.
        Raises PermissionError for one of the server's configuration keys,
        pylm.CacheFull past the bound of its cache (pylm._cache)."""
        self._check_thread()
        if not isinstance(value, bytes):
            raise TypeError("value must be bytes, not %s" % type(value).__name__)
        return self._cache_client().request("set", value, self._key(key) if key else "").decode()

    def get(self, key: str) -> bytes:
        """The value stored under key (b'' when absent)."""
        self._check_thread()
        return self._cache_client().request("get", self._key(key).encode())

    def delete(self, key: str) -> str:
        """Remove key from the server's cache; returns the key.  Raises
        PermissionError for one of the server's configuration keys."""
        self._check_thread()
        return self._cache_client().request("delete", self._key(key).encode()).decode()

    # live statistics ---------------------------------------------------------
    def stats(self, *, timeout: Optional[float] = None) -> Dict[str, Any]:
        """The server's live statistics (a dict; pylm/_stats.py lists the
        fields), fetched over the cache link while the server runs.
        TimeoutError when the cache does not answer within `timeout` (the
        client's timeout by default); pylm._stats.StatsUnavailable when the
        server does not serve statistics (pylm 0.14)."""
        self._check_thread()
        cache = self._cache_client()
        return parse_stats(cache.request("stats", b"", timeout=timeout), cache.db_address)
