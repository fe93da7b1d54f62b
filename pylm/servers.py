"""The server templates users subclass: Server, Pipeline, Sink, Master, Hub,
Worker and MuxWorker (shared/API.md, "Servers").

Each class only *configures* the core: which sockets, which parts, which
hooks.  Every server is a pylm_core Router (one C poll loop and its routing
table) serving parts written once, in C: the Executor for Server, Pipeline,
Sink and the workers; an Intake, a WorkerPool and a Publisher for Master
and Hub (routed intake -> pool -> publisher, pylm 0.14's inbound, outbound
and reroute).  The low-level API (pylm.parts) runs on the same Router.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence,
                    Tuple, Union)
from urllib.parse import urlsplit

import zmq
import zmq.utils.monitor

import pylm_core
from pylm_core import _core
from pylm._cache import (CACHE_MAX_BYTES, CACHE_MAX_ENTRIES, CONFIG_PROTOCOL_KEY, PROTOCOL,
                         CacheClient, CacheHandler, batch_bytes_for, serve_cache)
from pylm import _local
from pylm._dispatch import DropLog, ErrorReporter, method_table, overrides
from pylm._runtime import Runtime, StopHandle
from pylm._stats import server_stats, stats_reply
from pylm._stream import DefaultStream
from pylm.persistence.kv import DictDB
from pylm.security import KeyPath, Refusals, Security

if TYPE_CHECKING:
    from pylm._cache import Store
    from pylm._metrics import MetricsServer
    from pylm.security import Socket
    from pylm_core import PalmMessage

__all__ = ["Server", "Pipeline", "Sink", "Master", "Hub", "Worker", "MuxWorker"]

#: Largest message a bound socket accepts; bigger ones make libzmq drop the
#: peer (which reconnects).  Not set on connecting sockets: there libzmq ends
#: the session for good instead of reconnecting.  (Limits are defined once,
#: in pylm_core/consts.pxi.)
MAX_MESSAGE_SIZE = _core.MAX_MESSAGE_SIZE_


def _logger(kind: str, name: str, level: Union[int, str, None] = None) -> logging.Logger:
    """The logger ``pylm.<kind>.<name>``.  Its level is set only when the
    caller gave one: by default the application's logging configuration
    decides (a library configures no logging of its own)."""
    logger = logging.getLogger("pylm.%s.%s" % (kind, name))
    if level is not None:
        logger.setLevel(level)
    return logger


def _array_parts(array: Any) -> Any:
    """A numpy array a method returned, as the header and data of
    pylm.arrays.dumps (the core sends them without joining them).  The
    core calls this only for an array, so numpy is imported only by a
    process that has arrays already."""
    from pylm.arrays import _parts
    return _parts(array)


class _Served(DefaultStream):
    """What every server has: name, logger, cache, stop(), echo, and the
    default handle_stream (pylm._stream).

    Every server's `log_level` is the level of its logger
    ``pylm.<Class>.<name>``; the default, None, leaves the level (and all
    logging configuration) to the application.

    Keyword-only options of every server class (``**options`` below):

    :param send_tracebacks: when false, an error reply carries the remote
        exception's type and message but no traceback (the server still
        logs the full traceback).  Default True, as pylm 0.14.
    :param cache_max_entries: the most entries remote ``set`` requests may
        store in the server's cache (pylm._cache.CACHE_MAX_ENTRIES)
    :param cache_max_bytes: the most bytes (keys plus values) they may
        store (pylm._cache.CACHE_MAX_BYTES).  Past either bound a remote
        set is refused (our Client raises pylm.CacheFull); the server's
        own keys never count.
    :param secret_key: path of a ``.key_secret``: every socket the server
        binds serves CURVE (shared/API.md, "Security"; pylm.security)
    :param authorized_keys: a directory of public ``.key`` files: peers
        whose key is not there are refused at the handshake
    :param server_key: path of the public ``.key`` of the server a
        Pipeline, Sink or Hub subscribes to
    :param metrics_port: a port (on 127.0.0.1), or ``"HOST:PORT"`` (e.g.
        ``"0.0.0.0:9100"`` for every interface): serve the live statistics
        to Prometheus while start() runs (pylm/_metrics.py; needs
        ``pylm[metrics]``)
    :param hold_replies: the most replies a publishing server (Server,
        Pipeline, Sink, Master, Hub) holds for topics no one subscribes to
        yet (a pylm 0.14 client subscribes only as it calls, so its reply
        may come first); each is published when its subscription arrives.
        Past the bound the oldest is dropped; 0 publishes at once, as a PUB
        does (and loses such replies).  Default 10,000.
    :param hold_seconds: how long a reply is held before it is dropped
        (default 5).  Dropped replies are counted in
        ``stats['held_dropped']``; ``stats['held']`` is how many are held.

    The three keys fall back to the ``PYLM_*`` environment variables.
    Refused handshakes are counted in ``stats['refused']`` (live:
    ``self.refused``).
    """

    def __init__(self, name: str, db_address: str, log_level: Union[int, str, None],
                 cache: Optional[Store] = None, *, send_tracebacks: bool = True,
                 cache_max_entries: int = CACHE_MAX_ENTRIES,
                 cache_max_bytes: int = CACHE_MAX_BYTES, secret_key: KeyPath = None,
                 server_key: KeyPath = None, authorized_keys: KeyPath = None,
                 security: Optional[Security] = None,
                 metrics_port: Union[int, str, None] = None,
                 hold_replies: int = _core.HOLD_REPLIES,
                 hold_seconds: float = _core.HOLD_SECONDS) -> None:
        if hold_replies < 0 or hold_seconds < 0:
            raise ValueError("hold_replies and hold_seconds must not be negative")
        self.name = name
        self.hold_replies = hold_replies
        self.hold_seconds = hold_seconds
        self.db_address = db_address
        self.cache: Store = DictDB() if cache is None else cache
        self.logger = _logger(type(self).__name__, name, log_level)
        self._stopper = StopHandle()
        if security is None:
            security = Security.for_server(secret_key, server_key, authorized_keys)
        self._security = security
        self._refusals = Refusals(self.logger)
        self.stats: Dict[str, Any] = {}
        self.send_tracebacks = send_tracebacks
        self.cache_max_entries = cache_max_entries
        self.cache_max_bytes = cache_max_bytes
        self._cache_handler: Optional[CacheHandler] = None
        # the core Router while start() serves (read by live_stats), and
        # what it knew when it stopped
        self._runner: Optional[_core.Router] = None
        self._details: Dict[str, Any] = {}
        self._started: Optional[float] = None
        self._stopped: Optional[float] = None
        self._metrics: Optional[MetricsServer] = None
        #: bind ipc twins for local peers (pylm._local): set by the servers
        #: that take the ``local_ipc`` keyword (Server, Master, Hub)
        self.local_ipc = False
        #: the cache entries of the twins bound (empty values: none)
        self._twins: Dict[str, str] = _local.published("", "", "")
        if metrics_port is not None:
            from pylm._metrics import MetricsServer   # the optional extra, only when asked
            self._metrics = MetricsServer(self, metrics_port)

    @property
    def refused(self) -> int:
        """Handshakes refused so far (a plain peer at a CURVE socket, a
        wrong server key, a key not authorized), across starts."""
        return self._refusals.count

    def _runtime(self) -> Runtime:
        """The Runtime of one start(), with this server's security."""
        return Runtime(self._stopper, self.logger, self._security, self._refusals)

    def echo(self, payload: Any) -> Any:
        """Return the payload unchanged."""
        return payload

    def stop(self) -> None:
        """Make start() return: stop taking messages, close sockets.  Safe
        from any thread and from signal handlers."""
        self._stopper.stop()

    def _config(self) -> Dict[str, Any]:
        # max_message_size: our clients and workers keep their batch frames
        # under half of it (the limit of the sockets this server binds)
        return {"name": self.name, CONFIG_PROTOCOL_KEY: PROTOCOL,
                "max_message_size": str(MAX_MESSAGE_SIZE)}

    def _bind_twins(self, inbound: Optional[Socket], pub: Socket,
                    router: Optional[Socket] = None) -> None:
        """With ``local_ipc``, bind the ipc twin of each given socket's tcp
        endpoint and keep them for the cache (pylm._local), before the
        cache is served."""
        if self.local_ipc:
            self._twins = _local.published(
                "" if inbound is None else _local.bind_twin(inbound, self.logger),
                _local.bind_twin(pub, self.logger),
                "" if router is None else _local.bind_twin(router, self.logger))

    def _serve_cache(self, rt: Runtime, limit: int) -> None:
        """Preset the config keys and run the cache service at db_address
        in a thread.  An address already served by another server of the
        same process is left to it.  Remote requests may not set or delete
        the config keys (pylm._cache)."""
        config = self._config()
        for key, value in config.items():
            if value is not None:
                self.cache.set(value if isinstance(value, bytes) else value.encode(), key)
        # only the bind may fail here for a shared address; a failure of the
        # security set-up (the ZAP authenticator) stops the server
        rep = rt.prepare(zmq.REP, bind=self.db_address, MAXMSGSIZE=MAX_MESSAGE_SIZE)
        try:
            rep.bind(self.db_address)
        except zmq.ZMQError as exc:
            self.logger.warning("cache not served at %s: %s", self.db_address, exc)
            return
        self._cache_handler = CacheHandler(self.cache, config, self.cache_max_entries,
                                           self.cache_max_bytes, DropLog(self.logger),
                                           self._stats_reply)
        rt.thread(serve_cache, "%s-cache" % self.name, rep, rt.control(), self._cache_handler,
                  limit)

    def live_stats(self) -> Dict[str, Any]:
        """The server's statistics now (pylm/_stats.py lists the fields),
        while it serves and after; safe from any thread.  ``Client.stats()``
        fetches them over the cache link."""
        # read once: start() and its end may run meanwhile in another thread
        runner, started, stopped = self._runner, self._started, self._stopped
        if runner is not None and started is not None:
            stats = server_stats(self, runner.counters(), runner.details(),
                                 time.monotonic() - started)
        else:
            # not started, stopped, or just starting (started set, not yet stopped)
            uptime = stopped - started if started is not None and stopped is not None else None
            stats = server_stats(self, self.stats, self._details, uptime)
        stats["refused"] = self.refused
        if self._cache_handler is not None:
            stats["cache_refused"] = self._cache_handler.refused
        return stats

    def _stats_reply(self) -> bytes:
        return stats_reply(self.live_stats())

    def _executor(self, rt: Runtime, inbound: Sequence[Tuple[Socket, int]], out: Socket,
                  out_kind: int, *, name: Optional[str], mux: bool = False,
                  limit: int = sys.maxsize, **kwargs: int) -> _core.Router:
        """A Router serving one Executor part."""
        stream_hook = None
        if overrides(self, "handle_stream", _Served):
            stream_hook = self.handle_stream
        runner = _core.Router()
        runner.add(_core.Executor(
            inbound, out, out_kind, name, method_table(self),
            pipelined=self.pipelined, stream_hook=stream_hook,
            error_hook=ErrorReporter(self.logger, self.send_tracebacks),
            bad_hook=DropLog(self.logger), array_parts=_array_parts,
            mux=mux, limit=min(limit, 2**62), hold_replies=self.hold_replies,
            hold_seconds=self.hold_seconds, **kwargs))
        return runner

    def _run(self, rt: Runtime, runner: _core.Router, drain_ms: int = 0) -> None:
        """Run a core Router until stopped, keeping the counters of its
        parts in self.stats."""
        self._started = time.monotonic()
        try:
            if self._metrics is not None:
                self._metrics.start()   # OSError when its port is taken: never running
            self._runner = runner
            runner.run(rt.control(), rt.wakeup_fd, drain_ms)
        finally:
            if self._metrics is not None:
                self._metrics.close()
            self.stats = runner.counters()
            self.stats["refused"] = self.refused
            if self._cache_handler is not None:
                self.stats["cache_refused"] = self._cache_handler.refused
            self._details = runner.details()
            self._stopped = time.monotonic()
            self._runner = None


class Server(_Served):
    """A server: calls ``server.method`` from clients (PULL at
    `pull_address`) and publishes results at `pub_address`.

    :param pipelined: send results to the next stage (topic = name,
        ``stage += 1``) instead of the client
    :param messages: return from start() after this many calls
    :param local_ipc: also bind an ipc twin of the pull and pub tcp
        endpoints, which its clients on this host take instead
        (pylm._local), as a Master's; tcp stays for everyone else
    :param options: keyword-only options of every server (see _Served)
    """

    def __init__(self, name: str, db_address: str, pull_address: str, pub_address: str,
                 pipelined: bool = False, log_level: Union[int, str, None] = None,
                 messages: int = sys.maxsize, *, local_ipc: bool = True,
                 **options: Any) -> None:
        super().__init__(name, db_address, log_level, **options)
        self.pull_address = pull_address
        self.pub_address = pub_address
        #: clients on this host reach the Server by ipc (pylm._local)
        self.local_ipc = local_ipc
        self.pipelined = pipelined
        self.messages = messages

    def _config(self) -> Dict[str, Any]:
        config = super()._config()
        config.update(pull_address=self.pull_address, pub_address=self.pub_address,
                      db_address=self.db_address)
        config.update(self._twins)
        return config

    def start(self, cache_messages: int = sys.maxsize) -> None:
        """Serve until `messages` calls were made or stop() is called."""
        with self._runtime() as rt:
            pull = rt.socket(zmq.PULL, bind=self.pull_address, MAXMSGSIZE=MAX_MESSAGE_SIZE)
            pub = rt.publisher(self.pub_address, MAX_MESSAGE_SIZE)
            self._bind_twins(pull, pub)
            self._serve_cache(rt, cache_messages)
            self._run(rt, self._executor(rt, [(pull, _core.IN_PLAIN_)], pub, _core.OUT_TOPIC_,
                                         name=self.name, limit=self.messages))


def _stage_sub(rt: Runtime, address: str, previous: str) -> Socket:
    """A stage's SUB on the stage before it, at `address`: subscribed to
    topic `previous`, as pylm 0.14's stages are, and to the marked topic
    on which a stage of ours sends batches when every stage after it is
    ours (pylm_core/subscriptions.pyx, "Stage links").  Both are set
    before the connect, so that the SUB sends them in byte order: the
    plain one first."""
    topic = previous.encode()
    sub = rt.prepare(zmq.SUB, connect=address, SUBSCRIBE=topic)
    sub.setsockopt(zmq.SUBSCRIBE, _core.STAGE_MARK + topic)
    sub.connect(address)
    return sub


class Pipeline(_Served):
    """A stage of a stream: subscribes to topic `previous` at `sub_address`,
    runs its entry of `function`, publishes at `pub_address` to the client
    (`to_client`) or to the next stage.  A method returning None sends
    nothing.  `options`: keyword-only options of every server (_Served)."""

    def __init__(self, name: str, db_address: str, sub_address: str,
                 pub_address: str, previous: str, to_client: bool = True,
                 log_level: Union[int, str, None] = None, messages: int = sys.maxsize,
                 **options: Any) -> None:
        super().__init__(name, db_address, log_level, **options)
        self.sub_address = sub_address
        self.pub_address = pub_address
        self.previous = previous
        self.pipelined = not to_client
        self.messages = messages

    def _config(self) -> Dict[str, Any]:
        config = super()._config()
        config.update(sub_address=self.sub_address, pub_address=self.pub_address)
        return config

    def _subscriptions(self) -> List[Tuple[str, str]]:
        return [(self.sub_address, self.previous)]

    def start(self, cache_messages: int = sys.maxsize) -> None:
        """Serve until `messages` calls were made or stop() is called."""
        with self._runtime() as rt:
            self._serve_cache(rt, cache_messages)
            inbound = []
            for address, topic in self._subscriptions():
                inbound.append((_stage_sub(rt, address, topic), _core.IN_TOPIC_))
            pub = rt.publisher(self.pub_address, MAX_MESSAGE_SIZE)
            self._run(rt, self._executor(rt, inbound, pub, _core.OUT_TOPIC_,
                                         name=self.name, limit=self.messages))


class Sink(Pipeline):
    """A Pipeline over several upstreams: `sub_addresses` and `previous` are
    lists, zipped pairwise."""

    def __init__(self, name: str, db_address: str, sub_addresses: Sequence[str],
                 pub_address: str, previous: Sequence[str], to_client: bool = True,
                 log_level: Union[int, str, None] = None, messages: int = sys.maxsize,
                 **options: Any) -> None:
        if isinstance(sub_addresses, str) or isinstance(previous, str):
            raise TypeError("Sink takes lists of sub_addresses and previous")
        if len(sub_addresses) != len(previous):
            raise ValueError("sub_addresses and previous must have the same length")
        # no single subscription: Sink's are the lists below
        super().__init__(name, db_address, None, pub_address, None,  # type: ignore[arg-type]
                         to_client, log_level, messages, **options)
        self.sub_addresses = list(sub_addresses)
        self.previous = list(previous)  # type: ignore[assignment]

    def _config(self) -> Dict[str, Any]:
        config = super()._config()
        config.update(sub_address=" ".join(self.sub_addresses))
        return config

    def _subscriptions(self) -> List[Tuple[str, str]]:
        return list(zip(self.sub_addresses, self.previous))


def _router_address(worker_push_address: str) -> str:
    """Where a Master binds the ROUTER for our workers, beside the address
    pylm 0.14 workers use: tcp on an ephemeral port of the same host,
    ipc/inproc with a suffix."""
    scheme = worker_push_address.split("://", 1)[0]
    if scheme == "tcp":
        host = urlsplit(worker_push_address).hostname or "*"
        if ":" in host:
            host = "[%s]" % host
        return "tcp://%s:*" % host
    return worker_push_address + "-workers"


class Master(_Served):
    """Spreads calls over workers: our Workers by credit (least loaded
    first), pylm 0.14 workers over PUSH/PULL; publishes results.

    Overridable: ``scatter(message)`` (a generator, on the way in),
    ``gather(message)`` (a generator, on the way out), ``handle_stream``.
    Without overrides no Python runs per message.  Errors of workers are
    forwarded as the workers wrote them: ``send_tracebacks=False`` on a
    Master applies to its own hooks; give it to the Workers as well.
    `options`: keyword-only options of every server (_Served).

    :param local_ipc: also bind an ipc twin of each tcp endpoint, which its
        clients and workers on this host take instead (pylm._local); tcp
        stays for everyone else
    """

    def __init__(self, name: str, pull_address: str, pub_address: str,
                 worker_pull_address: str, worker_push_address: str, db_address: str,
                 pipelined: bool = False, cache: Optional[Store] = None,
                 log_level: Union[int, str, None] = None, messages: int = sys.maxsize, *,
                 worker_router_address: Optional[str] = None, worker_timeout: float = 3.0,
                 local_ipc: bool = True, **options: Any) -> None:
        super().__init__(name, db_address, log_level, cache, **options)
        self.pull_address = pull_address
        self.pub_address = pub_address
        self.worker_pull_address = worker_pull_address
        self.worker_push_address = worker_push_address
        self.worker_router_address = worker_router_address
        self._router_bound: Optional[str] = None
        self.worker_timeout = worker_timeout
        #: clients and workers on this host reach the Master by ipc (pylm._local)
        self.local_ipc = local_ipc
        self.pipelined = pipelined
        self.messages = messages

    def scatter(self, message: PalmMessage) -> Iterator[PalmMessage]:
        """Messages to send to workers for one inbound message."""
        yield message

    def gather(self, message: PalmMessage) -> Iterator[PalmMessage]:
        """Messages to publish for one worker result."""
        yield message

    def change_payload(self, message: PalmMessage, payload: bytes) -> PalmMessage:
        """Set message.payload; returns the message."""
        message.payload = payload
        return message

    def _config(self) -> Dict[str, Any]:
        config = super()._config()
        config.update(pull_address=self.pull_address, pub_address=self.pub_address,
                      worker_pull_address=self.worker_pull_address,
                      worker_push_address=self.worker_push_address,
                      worker_router_address=self._router_bound,
                      db_address=self.db_address)
        config.update(self._twins)
        return config

    def _inbound(self, rt: Runtime) -> Tuple[Socket, int]:
        return rt.socket(zmq.PULL, bind=self.pull_address, MAXMSGSIZE=MAX_MESSAGE_SIZE), _core.IN_PLAIN_

    def start(self, cache_messages: int = sys.maxsize) -> None:
        """Broker until stop() is called."""
        with self._runtime() as rt:
            # SNDHWM explicit: the core's limit on batches in flight to one
            # worker stays under half of it whatever the context's default
            router = rt.socket(zmq.ROUTER, ROUTER_MANDATORY=1, MAXMSGSIZE=MAX_MESSAGE_SIZE,
                               SNDHWM=_core.WORKER_HWM_, bind=self.worker_router_address
                               or _router_address(self.worker_push_address))
            self._router_bound = router.getsockopt_string(zmq.LAST_ENDPOINT)
            inbound, in_kind = self._inbound(rt)
            pub = rt.publisher(self.pub_address, MAX_MESSAGE_SIZE)
            self._bind_twins(None if in_kind == _core.IN_TOPIC_ else inbound, pub, router)
            self._serve_cache(rt, cache_messages)
            wpush = rt.socket(zmq.PUSH, bind=self.worker_push_address)
            wpull = rt.socket(zmq.PULL, bind=self.worker_pull_address,
                              MAXMSGSIZE=MAX_MESSAGE_SIZE)
            hooks = {name: getattr(self, name) if overrides(self, name, Master) else None
                     for name in ("scatter", "gather")}
            stream = self.handle_stream if overrides(self, "handle_stream", _Served) else None
            drops = DropLog(self.logger)
            # intake -> worker pool, whose feedback (results) goes to the
            # publisher: pylm 0.14's inbound, outbound and one reroute
            runner = _core.Router()
            publisher = runner.add(_core.Publisher(
                pub, self.name, pipelined=self.pipelined, gather=hooks["gather"],
                stream_hook=stream, bad_hook=drops, send_tracebacks=self.send_tracebacks,
                hold_replies=self.hold_replies, hold_seconds=self.hold_seconds))
            pool = runner.add(_core.WorkerPool(
                router, wpush, wpull, bad_hook=drops,
                worker_timeout_ms=int(self.worker_timeout * 1000)), target=publisher)
            runner.add(_core.Intake(inbound, in_kind, publisher, scatter=hooks["scatter"],
                                  bad_hook=drops), target=pool)
            self._run(rt, runner, _core.DRAIN_MS)


class Hub(Master):
    """A Master whose inbound is a subscription to topic `previous` at
    `sub_address`."""

    def __init__(self, name: str, sub_address: str, pub_address: str,
                 worker_pull_address: str, worker_push_address: str, db_address: str,
                 previous: str, pipelined: bool = False, cache: Optional[Store] = None,
                 log_level: Union[int, str, None] = None, messages: int = sys.maxsize,
                 **kwargs: Any) -> None:
        # no pull_address: a Hub's inbound is its subscription
        super().__init__(name, None, pub_address,  # type: ignore[arg-type]
                         worker_pull_address, worker_push_address, db_address, pipelined,
                         cache, log_level, messages, **kwargs)
        self.sub_address = sub_address
        self.previous = previous

    def _config(self) -> Dict[str, Any]:
        config = super()._config()
        config.pop("pull_address", None)
        config.update(sub_address=self.sub_address)
        return config

    def _inbound(self, rt: Runtime) -> Tuple[Socket, int]:
        return _stage_sub(rt, self.sub_address, self.previous), _core.IN_TOPIC_


class Worker(_Served):
    """Runs methods for a Master.  Addresses not given are fetched from the
    Master's cache at `db_address` (required).

    :param credit: the most messages our Master may send ahead (the worker
        asks for about 20 ms of work at its measured speed, up to this)
    :param timeout: seconds to wait for the Master's cache at start
    :param heartbeat: seconds between heartbeats to our Master, which gives
        up a worker silent for its `worker_timeout` and hands its messages
        to other workers
    :param server_key: the Master's public key (path of its ``.key``):
        every socket to the Master (cache, worker sockets) is CURVE
    :param secret_key: this worker's key pair (a ``.key_secret``), for a
        Master with `authorized_keys`; without it a pair is made at
        construction.  Both fall back to ``PYLM_SERVER_KEY`` and
        ``PYLM_SECRET_KEY``.
    :param send_tracebacks: when false, the errors of methods reach the
        client with type and message but no traceback (logged here in full)

    ``set`` and ``delete`` raise PermissionError for the Master's
    configuration keys and pylm.CacheFull past its cache's bound.

    When the Master it knew goes away (its worker ROUTER drops the
    connection), the worker asks the Master's cache for the worker ROUTER
    address again until it answers: a Master restarted on an ephemeral port
    has another one, and the worker reconnects there (what it was running
    for the old Master is dropped; its clients send those calls again).
    """

    mux = False

    def __init__(self, name: str = "", db_address: str = "", push_address: Optional[str] = None,
                 pull_address: Optional[str] = None, log_level: Union[int, str, None] = None,
                 messages: int = sys.maxsize, *, credit: int = 1000, timeout: float = 10.0,
                 heartbeat: float = 1.0, send_tracebacks: bool = True,
                 secret_key: KeyPath = None, server_key: KeyPath = None) -> None:
        if not db_address:
            raise ValueError("Worker needs the db_address of its Master")
        super().__init__(name or str(uuid.uuid4()), db_address, log_level,
                         send_tracebacks=send_tracebacks,
                         security=Security.for_client(secret_key, server_key))
        self.push_address = push_address
        self.pull_address = pull_address
        self.messages = messages
        self.credit = credit
        self.timeout = timeout
        self.heartbeat = heartbeat
        self._cache_client = CacheClient(db_address, "worker", timeout, self._security)
        self.router_address: Optional[str] = None
        #: set by the heartbeat thread: the Master's worker ROUTER moved
        self._moved = False

    # cache of the Master, pylm 0.14's Worker.set/get/delete
    def set(self, value: bytes, key: Optional[str] = None) -> str:
        """Store value in the Master's cache; returns the key."""
        if not isinstance(value, bytes):
            raise TypeError("value must be bytes")
        return self._cache_client.request("set", value, key or "").decode()

    def get(self, key: str) -> bytes:
        """The value under key in the Master's cache (b'' when absent)."""
        return self._cache_client.request("get", key.encode())

    def delete(self, key: str) -> str:
        """Remove key from the Master's cache."""
        return self._cache_client.request("delete", key.encode()).decode()

    def _fetch_addresses(self) -> None:
        def fetch(key: str) -> str:
            return self._cache_client.request("get", key.encode()).decode()

        if self.push_address is None:
            self.push_address = fetch("worker_pull_address")
        if self.pull_address is None:
            self.pull_address = fetch("worker_push_address")
        self._batch_bytes = batch_bytes_for(fetch("max_message_size"))
        self.router_address = self._router_of(self._cache_client)

    def _router_of(self, cache: CacheClient) -> Optional[str]:
        """The worker ROUTER address in the Master's `cache`, as this host
        reaches it: its ipc twin on the Master's host (pylm._local)."""
        def get(key: bytes) -> bytes:
            return cache.request("get", key)

        twin = _local.local_addresses(get, _local.LOCAL_ROUTER_KEY)
        if twin is not None:
            return twin[0]
        address = get(b"worker_router_address").decode()
        if not address:
            return None
        host = urlsplit(self.db_address).hostname
        if address.startswith("tcp://0.0.0.0:") and host:
            address = address.replace("0.0.0.0", host, 1)
        return address

    def start(self) -> None:
        """Serve the Master until `messages` calls were made or stop()."""
        try:
            self._fetch_addresses()
            while self._serve() and self._moved:
                # the Master came back elsewhere: serve it there
                self._moved = False
                self._stopper.reset()
                self.logger.info("the Master's worker ROUTER is now at %s: reconnecting",
                                 self.router_address)
        finally:
            self._cache_client.close()

    def _serve(self) -> bool:
        """One run against the addresses known now; True when it ended."""
        with self._runtime() as rt:
            if self.router_address:
                ident = ("w-%s" % uuid.uuid4().hex).encode()
                dealer = rt.socket(zmq.DEALER, ROUTING_ID=ident, connect=self.router_address)
                # heartbeats from a thread of their own: they keep coming while
                # a long call runs, and stop when the process is frozen or dead
                beat = rt.socket(zmq.DEALER, ROUTING_ID=ident + _core.HB_SUFFIX,
                                 connect=self.router_address)
                rt.thread(_heartbeat, "%s-heartbeat" % self.name, beat, rt.control(),
                          self.heartbeat, self._master_moved)
                runner = self._executor(rt, [(dealer, _core.IN_PLAIN_)], dealer,
                                      _core.OUT_WORKER_, name=None, mux=self.mux,
                                      limit=self.messages, credit=self.credit,
                                      batch_bytes=self._batch_bytes)
            else:
                pull = rt.socket(zmq.PULL, connect=self.pull_address)
                push = rt.socket(zmq.PUSH, connect=self.push_address)
                runner = self._executor(rt, [(pull, _core.IN_PLAIN_)], push, _core.OUT_PLAIN_,
                                      name=None, mux=self.mux, limit=self.messages)
            self._run(rt, runner)
        return True

    def _master_moved(self) -> bool:
        """Called by the heartbeat thread while the worker ROUTER is
        unreachable: ask the Master's cache where it is now.  True (and the
        worker's run is stopped, to start again there) when the address
        changed; False while the cache does not answer or gives the same."""
        probe = CacheClient(self.db_address, "worker", min(self.heartbeat, 1.0) + 0.5,
                            self._security)
        try:
            address = self._router_of(probe)
        except TimeoutError:
            return False
        finally:
            probe.close()
        if address is None or address == self.router_address or self._stopper.stopping:
            return False
        self.router_address = address
        self._moved = True
        self._stopper.stop()
        return True


def _heartbeat(sock: Socket, control: Socket, interval: float,
               moved: Optional[Callable[[], bool]] = None) -> None:
    """Send [H] every `interval` seconds until control is readable: a
    worker's only heartbeats (the worker protocol: pylm_core/consts.pxi).
    While the connection is down (a monitor on `sock` tells), `moved()`
    is asked between beats whether the Master is elsewhere now (True ends
    the heartbeats)."""
    monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
    down = False
    try:
        while not control.poll(int(interval * 1000)):
            while monitor.poll(0):
                event = zmq.utils.monitor.recv_monitor_message(monitor)["event"]
                down = event == zmq.EVENT_DISCONNECTED
            if down and moved is not None and moved():
                return
            try:
                sock.send(_core.W_BEAT_, zmq.DONTWAIT)
            except zmq.Again:
                pass
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)


class MuxWorker(Worker):
    """A Worker whose methods are generators: each yielded value is one reply."""

    mux = True
