"""Peers for the throughput and latency benchmarks (bench_job.py,
bench_stream.py, compare/): our servers and the hand-written pyzmq
baselines, each run in its own process, plus the small helpers around them.

Every peer runs in a process made by the ``spawn`` start method, so that no
child inherits the benchmark process's libzmq context (forking a process
whose context has I/O threads is undefined, zguide chapter 1).  A peer that
binds a port chosen by the kernel (``tcp://127.0.0.1:*``) reports the
endpoints back through a pipe; servers of ours, whose cache presets the
addresses they were given, get them from :func:`pylm._testing.tcp_addresses`.

A peer is started once per module (a fixture) and stopped by its handle,
:meth:`Peer.stop`: SIGTERM, which our servers turn into ``stop()`` and which
ends the baseline loops, then SIGKILL if it has not exited.

benchmarks/compare/ runs the same peers, several brought up at once
(:meth:`Peer.launch`, then :meth:`Peer.wait_ready`).  The parent's side,
shared by both: :func:`wait_workers` (every worker of a Master answers),
:func:`monitor_handshakes` and :func:`wait_handshakes` (every baseline
worker is connected), :func:`chain_round` and :func:`probe_chain` (the
baseline chain).

The pytest benchmarks share more: :func:`master_cluster` (a Master and
its Worker processes, with a Client here) and :func:`job_round` (one
counted job through it), the payloads (:func:`payloads_of`,
:func:`stream_of`) and :func:`stop_peers`.
"""

import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import sys
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from pylm._testing import tcp_addresses
from pylm.clients import Client
from pylm.servers import Master, Pipeline, Server, Worker
from pylm_core import _core

__all__ = [
    "tcp_addresses", "Peer", "stop_peers", "wait_workers", "master_cluster", "job_round",
    "monitor_handshakes", "wait_handshakes", "chain_round", "probe_chain",
    "payload_of", "payloads_of", "stream_of",
    "PAYLOAD", "JOB_WINDOW", "PUB_HWM", "SNDMORE", "START_TIMEOUT", "WORKERS",
]

#: 100 bytes, not all alike (a payload of one repeated byte could flatter a
#: compressing transport; none is used here, but keep it honest).
PAYLOAD = bytes(range(100))

#: Calls the baseline stream client keeps in flight; the same bound as
#: pylm.clients.JOB_WINDOW, so that both chains run with the same window.
JOB_WINDOW = 2000

#: High-water mark of the baseline PUB/SUB sockets: our servers' (defined
#: in pylm_core/consts.pxi).  With JOB_WINDOW in flight no queue ever fills,
#: so no message is dropped.
PUB_HWM = _core.PUB_HWM_

#: Seconds to bring a process up, and to wait for any one reply of a job.
START_TIMEOUT = 30.0
#: Worker processes behind a Master (and of every baseline's pool).
WORKERS = 2
#: Distinct payload objects each job cycles through: pickle (Pool, the
#: executor) writes an object it already wrote in the same chunk as a
#: back-reference, so a job of one repeated object would flatter them.
DISTINCT = 128

_SPAWN = multiprocessing.get_context("spawn")


def payload_of(size):
    """`size` bytes, not all alike."""
    block = bytes(range(256))
    return (block * (size // 256 + 1))[:size]


def payloads_of(size, count=DISTINCT):
    """`count` distinct payloads of `size` bytes (a counter, then
    payload_of's bytes)."""
    return [i.to_bytes(8, "little") + payload_of(size - 8) for i in range(count)]


def stream_of(payloads, n):
    """n payloads, cycling through the distinct ones."""
    return itertools.islice(itertools.cycle(payloads), n)


# ---------------------------------------------------------------------------
# process handles

class Peer:
    """One peer process.  ``start()`` returns what the child reported on its
    pipe (endpoints, or None): the baselines report once bound and
    connected; our servers report just before ``start()`` (which cannot
    report), so the fixtures check that they serve over the wire.
    ``stop()`` ends the process.  A child that fails before reporting makes
    ``start()`` raise with its error."""

    def __init__(self, target, *args, name=None):
        self._parent, child = _SPAWN.Pipe()
        self.process = _SPAWN.Process(target=_run_peer, args=(target, child) + args,
                                      name=name or target.__name__, daemon=True)
        self._child = child
        self.info = None

    def launch(self):
        """Start the process without waiting for its report, so that
        several peers come up at once; then :meth:`wait_ready`."""
        self.process.start()
        self._child.close()
        return self

    def wait_ready(self, timeout=30.0):
        """What the launched child reported (see the class).  A child that
        does not report within `timeout`, dies first or fails is stopped,
        and this raises."""
        if not self._parent.poll(timeout):
            self.stop()
            raise TimeoutError("peer %s did not start within %s s" % (self.process.name, timeout))
        try:
            status, info = self._parent.recv()
        except EOFError:
            self.stop()
            raise RuntimeError("peer %s died at start (exit code %s)"
                               % (self.process.name, self.process.exitcode)) from None
        if status != "ok":
            self.stop()
            raise RuntimeError("peer %s failed at start: %s" % (self.process.name, info))
        self.info = info
        return info

    def start(self, timeout=30.0):
        """:meth:`launch`, then :meth:`wait_ready`."""
        return self.launch().wait_ready(timeout)

    def alive(self):
        return self.process.is_alive()

    def stop(self, timeout=5.0):
        """SIGTERM, wait, then SIGKILL.  Returns the exit code."""
        p = self.process
        if p.pid is not None and p.exitcode is None:
            p.terminate()
            p.join(timeout)
            if p.exitcode is None:
                p.kill()
                p.join(timeout)
        self._parent.close()
        return p.exitcode

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def stop_peers(peers):
    """Stop every peer (last started first) and forget them."""
    for peer in reversed(peers):
        try:
            peer.stop()
        except Exception:
            pass
    peers.clear()


def _run_peer(target, conn, *args):
    """Child side: run target(report, *args); report(info) tells the parent
    that the peer is serving.  An exception before that is sent back."""
    reported = False

    def report(info=None):
        nonlocal reported
        conn.send(("ok", info))
        reported = True

    try:
        target(report, *args)
    except BaseException as exc:
        if not reported:
            try:
                conn.send(("error", "%s: %s" % (type(exc).__name__, exc)))
            except OSError:
                pass
        raise
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# our servers (targets run in the child; classes defined here so that the
# spawned child can import them)

#: our servers log at this level: warnings and errors only, so that a
#: benchmark's output is its tables
LOG_LEVEL = logging.WARNING


def _quiet_logging():
    logging.basicConfig(level=LOG_LEVEL, stream=sys.stderr)


class IdentityWorker(Worker):
    def foo(self, payload):
        return payload

    def who(self, payload):
        return self.name.encode()


class IdentityServer(Server):
    def foo(self, payload):
        return payload

    def f(self, payload):
        return payload


class IdentityPipeline(Pipeline):
    def g(self, payload):
        return payload

    def h(self, payload):
        return payload


def cpu_seconds(pid):
    """CPU seconds (user + system) process `pid` has used so far, from
    /proc: the figure load distorts less than wall-clock rates."""
    with open("/proc/%d/stat" % pid) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_master(report, name, pull, pub, wpull, wpush, db, keys=None):
    """A pylm Master (`keys`: more of its keywords: security for the CURVE
    benchmarks, ``local_ipc``).  Reports before start(); readiness is checked over the
    wire by the parent (its cache answers, workers answer `who`)."""
    _quiet_logging()
    server = Master(name, pull, pub, wpull, wpush, db, log_level=LOG_LEVEL, **(keys or {}))
    report()
    server.start()


def run_worker(report, name, db, keys=None):
    """A pylm Worker with the identity method ``foo``."""
    _quiet_logging()
    worker = IdentityWorker(name, db, log_level=LOG_LEVEL, **(keys or {}))
    report()
    worker.start()


def run_server(report, name, db, pull, pub, pipelined, keys=None):
    """A pylm Server with the identity methods ``foo`` and ``f``."""
    _quiet_logging()
    server = IdentityServer(name, db, pull, pub, pipelined=pipelined, log_level=LOG_LEVEL,
                            **(keys or {}))
    report()
    server.start()


def run_pipeline(report, name, db, sub, pub, previous, to_client):
    """A pylm Pipeline with the identity methods ``g`` and ``h``."""
    _quiet_logging()
    server = IdentityPipeline(name, db, sub, pub, previous, to_client=to_client,
                              log_level=LOG_LEVEL)
    report()
    server.start()


# ---------------------------------------------------------------------------
# hand-written pyzmq baselines (the child side)

def _exit_on_sigterm():
    """SIGTERM ends the baseline loop: the handler raises SystemExit in the
    main thread, which interrupts the blocking recv (pyzmq retries EINTR
    after running signal handlers)."""
    def handler(signum, frame):
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, handler)


def identity(payload):
    """The work of every baseline worker (and of compare's process pools):
    return the payload."""
    return payload


def run_pushpull_worker(report, pull_endpoint, push_endpoint):
    """zguide's task worker: PULL from the ventilator, call the identity,
    PUSH to the sink.  One frame per message, zero-copy frames."""
    ctx = zmq.Context()
    _exit_on_sigterm()
    pull = ctx.socket(zmq.PULL)
    push = ctx.socket(zmq.PUSH)
    try:
        pull.connect(pull_endpoint)
        push.connect(push_endpoint)
        report()
        recv, send, fn = pull.recv, push.send, identity
        while True:
            send(fn(recv()))
    finally:
        pull.close(linger=0)
        push.close(linger=0)
        ctx.term()


def run_rep(report):
    """A REP echo server bound on a kernel-chosen port."""
    ctx = zmq.Context()
    _exit_on_sigterm()
    rep = ctx.socket(zmq.REP)
    try:
        rep.bind("tcp://127.0.0.1:*")
        report(rep.getsockopt_string(zmq.LAST_ENDPOINT))
        recv, send, fn = rep.recv, rep.send, identity
        while True:
            send(fn(recv()))
    finally:
        rep.close(linger=0)
        ctx.term()


# The chain's frames are sent and received one by one with an int SNDMORE:
# pyzmq 27's send_multipart/recv_multipart cost ~5.5 us each for three frames
# here (Python-level flag enums), against ~2.7 us and ~0.6 us this way, and
# the frame count is fixed by this protocol.  Stage to stage:
# [stage topic, client topic, payload]; last stage to the client:
# [client topic, payload] (the client's topic travels with the payload, as
# `client` does in our envelope).
SNDMORE = int(zmq.SNDMORE)


def run_stream_head(report, topic):
    """First stage of the baseline chain: PULL (bound) -> identity -> PUB
    (bound) on `topic`; reports (pull endpoint, pub endpoint)."""
    ctx = zmq.Context()
    _exit_on_sigterm()
    pull = ctx.socket(zmq.PULL)
    pub = ctx.socket(zmq.PUB)
    try:
        pub.setsockopt(zmq.SNDHWM, PUB_HWM)
        pull.bind("tcp://127.0.0.1:*")
        pub.bind("tcp://127.0.0.1:*")
        report((pull.getsockopt_string(zmq.LAST_ENDPOINT),
                pub.getsockopt_string(zmq.LAST_ENDPOINT)))
        recv, send, fn, more = pull.recv, pub.send, identity, SNDMORE
        t = topic.encode()
        while True:
            client = recv()
            payload = fn(recv())
            send(t, more)
            send(client, more)
            send(payload)
    finally:
        pull.close(linger=0)
        pub.close(linger=0)
        ctx.term()


def run_stream_stage(report, sub_endpoint, previous, topic):
    """A middle or last stage of the baseline chain: SUB to `previous` ->
    identity -> PUB (bound) on `topic`, or on the client's topic when
    `topic` is None; reports the pub endpoint."""
    ctx = zmq.Context()
    _exit_on_sigterm()
    sub = ctx.socket(zmq.SUB)
    pub = ctx.socket(zmq.PUB)
    try:
        sub.setsockopt(zmq.RCVHWM, PUB_HWM)
        pub.setsockopt(zmq.SNDHWM, PUB_HWM)
        sub.setsockopt_string(zmq.SUBSCRIBE, previous)
        sub.connect(sub_endpoint)
        pub.bind("tcp://127.0.0.1:*")
        report(pub.getsockopt_string(zmq.LAST_ENDPOINT))
        recv, send, fn, more = sub.recv, pub.send, identity, SNDMORE
        t = None if topic is None else topic.encode()
        while True:
            recv()
            client = recv()
            payload = fn(recv())
            if t is not None:
                send(t, more)
            send(client, more)
            send(payload)
    finally:
        sub.close(linger=0)
        pub.close(linger=0)
        ctx.term()


# ---------------------------------------------------------------------------
# the benchmark process's side (the parent)

def wait_workers(client, names, timeout=30.0):
    """Call ``master.who`` through `client` until every worker in `names`
    has answered: a worker that has not connected yet gets no calls.  The
    Master fills the credit of the workers it has first (up to
    Worker(credit=1000) each), and a newcomer gets calls only beyond that,
    so each job is larger than their sum.  TimeoutError after `timeout`
    seconds."""
    expected = {name.encode() for name in names}
    calls = 2000 * (len(names) + 1)
    seen = set()
    deadline = time.monotonic() + timeout
    while not expected <= seen:
        if time.monotonic() > deadline:
            raise TimeoutError("workers %s of %s answered" % (sorted(seen), sorted(names)))
        seen.update(client.job("master.who", itertools.repeat(b"", calls), messages=calls,
                               timeout=timeout, window=calls))


def monitor_handshakes(sock):
    """A monitor of `sock`'s completed handshakes, for :func:`wait_handshakes`;
    made before the peers start, so that no event is missed."""
    return sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)


def wait_handshakes(sock, events, count, timeout=30.0):
    """Block until `count` peers completed the ZMTP handshake with `sock`,
    seen on its monitor `events` (a PUSH sends only to the peers it has, so
    no round may start before every worker is there); then close the
    monitor.  TimeoutError after `timeout` seconds."""
    try:
        done = 0
        deadline = time.monotonic() + timeout
        while done < count:
            left = deadline - time.monotonic()
            if left <= 0 or not events.poll(int(left * 1000) + 1):
                raise TimeoutError("%d of %d baseline workers connected" % (done, count))
            if recv_monitor_message(events)["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                done += 1
    finally:
        sock.disable_monitor()
        events.close(linger=0)


def chain_round(push, sub, me, payload, n, window=JOB_WINDOW):
    """One round through the baseline chain: send n calls [me, payload]
    at `push`, keeping at most `window` in flight, and receive the replies
    [me, payload] at `sub`.  Returns how many came back: fewer than n when
    `sub`'s RCVTIMEO passed without a reply."""
    send, recv, more = push.send, sub.recv, SNDMORE
    sent = got = 0
    try:
        while got < n:
            while sent < n and sent - got < window:
                send(me, more)
                send(payload)
                sent += 1
            recv()
            recv()
            got += 1
    except zmq.Again:
        pass
    return got


def probe_chain(push, sub, topic, timeout):
    """Send probes into a hand-written pyzmq chain until one comes out at
    `sub` (every subscription along it is live), then drop the late answers
    to the other probes.  Raises TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        push.send_multipart([topic, b"probe"])
        if sub.poll(100):
            break
        if time.monotonic() > deadline:
            raise TimeoutError("the pyzmq chain did not answer in %s s" % timeout)
    while sub.poll(200):
        sub.recv_multipart()


# ---------------------------------------------------------------------------
# a Master with its workers, and the job rounds through it

@contextlib.contextmanager
def master_cluster(worker=run_worker, workers=WORKERS, server_keys=None, worker_keys=None,
                   client_keys=None, timeout=START_TIMEOUT):
    """A Master and `workers` Worker processes (each run by `worker`,
    called as worker(report, name, db, keys): run_worker's identity method
    ``foo`` by default), and a Client of the Master in this process,
    yielded once every worker has answered a call; the keys are the
    security keywords of each (CURVE).  Everything stops on leaving."""
    db, pull, pub, wpull, wpush = tcp_addresses(5)
    peers = [Peer(run_master, "master", pull, pub, wpull, wpush, db, server_keys,
                  name="master")]
    client = None
    try:
        peers[0].start(timeout)
        names = ["worker-%d" % i for i in range(workers)]
        for name in names:
            peers.append(Peer(worker, name, db, worker_keys, name=name).launch())
        for peer in peers[1:]:
            peer.wait_ready(timeout)
        client = Client("master", db, timeout=timeout, **(client_keys or {}))
        wait_workers(client, names, timeout)
        yield client
    finally:
        if client is not None:
            client.close()
        stop_peers(peers)


def job_round(client, payloads, n, function="master.foo", **job_kwargs):
    """One job of `n` calls (the iterable `payloads`) through `client`,
    its replies counted; a lost reply fails the round after START_TIMEOUT
    instead of hanging it."""
    got = 0
    for _ in client.job(function, payloads, messages=n, timeout=START_TIMEOUT, **job_kwargs):
        got += 1
    assert got == n, "%d of %d replies" % (got, n)
