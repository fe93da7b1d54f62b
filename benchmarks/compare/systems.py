"""The systems under test, each as an object that a workload drives: ours
and the hand-written pyzmq baselines (the peer processes of
benchmarks/_peers.py, which the pytest benchmarks run too), the process
pools of the standard library, and memcpy.  pylm 0.14.4 is in pylm014.py.

A job system has ``grow(workers)`` (bring the workers up to that count),
``run(n, payloads) -> {"seconds", "sent", "received"}`` and ``close()``.
Also here: the names and labels of the systems as the results file and the
tables give them, and the payloads every system is sent.
"""

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import zmq

import _peers
from _peers import payload_of, payloads_of, stop_peers, stream_of  # noqa: F401 (compare's names)
from pylm.clients import JOB_WINDOW_BYTES, Client

KIB, MIB = 1024, 1024 * 1024

#: The systems, by the key the results file gives them ("system").
SYSTEMS = {
    "pylm": "pylm (this project)",
    "pyzmq": "hand-written pyzmq",
    "pool1": "multiprocessing.Pool imap, chunksize=1",
    "pool100": "multiprocessing.Pool imap, chunksize=100",
    "ppe": "ProcessPoolExecutor.map",
    "pylm014": "pylm 0.14.4 (PyPI)",
    "memcpy": "memcpy (physical bound)",
    "protobuf": "protobuf (upb)",
}
#: What each system is in each workload, where it differs from SYSTEMS.
WORKLOAD_LABELS = {
    ("eval", "pylm"): "pylm Client.eval -> Server",
    ("eval", "pyzmq"): "pyzmq REQ/REP",
    ("eval", "pool1"): "multiprocessing.Pool.apply",
    ("eval", "ppe"): "ProcessPoolExecutor.submit().result()",
    ("eval", "pylm014"): "pylm 0.14.4 Client.eval -> Server",
    ("stream", "pylm"): "pylm Server -> Pipeline -> Pipeline",
    ("stream", "pyzmq"): "pyzmq PUSH -> PUB/SUB x3",
    ("stream", "pylm014"): "pylm 0.14.4 Server -> Pipeline -> Pipeline",
    ("envelope", "pylm"): "pylm_core.PalmMessage (Cython)",
    ("envelope", "protobuf"): "protobuf (upb)",
    ("envelope", "pylm014"): "pylm 0.14.4 PalmMessage (protobuf 3.20.3, pure Python)",
}


def label(workload, system):
    """The name of `system` in `workload`'s table (the record's "label")."""
    return WORKLOAD_LABELS.get((workload, system), SYSTEMS[system])


#: Bytes in flight at most: the window of calls (_peers.JOB_WINDOW, which is
#: pylm.clients.JOB_WINDOW) shrinks for large payloads, as Client.job's does.
WINDOW_BYTES = JOB_WINDOW_BYTES
#: Seconds to bring a process up, and to wait for any one reply.
START_TIMEOUT = _peers.START_TIMEOUT
REPLY_TIMEOUT = 15.0


def window_for(size):
    """Calls in flight at most for payloads of `size` bytes."""
    return max(8, min(_peers.JOB_WINDOW, WINDOW_BYTES // max(size, 1)))


class OursJob:
    """pylm: a Master process, N Worker processes, a Client here."""

    #: more keywords of the Master (a subclass's), None: its defaults
    MASTER_OPTIONS = None

    def __init__(self):
        db, pull, pub, wpull, wpush = _peers.tcp_addresses(5)
        self.db = db
        self.peers = [_peers.Peer(_peers.run_master, "master", pull, pub, wpull, wpush, db,
                                  self.MASTER_OPTIONS, name="master").launch()]
        self.names = []
        self.client = None
        try:
            self.peers[0].wait_ready(START_TIMEOUT)
            self.client = Client("master", db, timeout=START_TIMEOUT)
        except BaseException:
            self.close()
            raise

    def grow(self, workers):
        new = []
        while len(self.names) < workers:
            name = "worker-%d" % len(self.names)
            self.names.append(name)
            new.append(_peers.Peer(_peers.run_worker, name, self.db, name=name).launch())
            self.peers.append(new[-1])
        for peer in new:
            peer.wait_ready(START_TIMEOUT)
        _peers.wait_workers(self.client, self.names, START_TIMEOUT)

    def run(self, n, payloads):
        got = 0
        t0 = time.perf_counter()
        try:
            for _ in self.client.job("master.foo", stream_of(payloads, n), messages=n,
                                     timeout=REPLY_TIMEOUT, window=window_for(len(payloads[0]))):
                got += 1
        except TimeoutError:
            pass
        t1 = time.perf_counter()
        return {"seconds": t1 - t0, "sent": n, "received": got}

    def close(self):
        if self.client is not None:
            self.client.close()
            self.client = None
        stop_peers(self.peers)


class PyzmqJob:
    """zguide's ventilator -> workers -> sink: PUSH and PULL bound here,
    worker processes between them; the ventilator keeps a window of
    messages in flight, as Client.job does."""

    def __init__(self):
        self.ctx = zmq.Context()
        self.vent = self.ctx.socket(zmq.PUSH)
        self.sink = self.ctx.socket(zmq.PULL)
        self.vent.bind("tcp://127.0.0.1:*")
        self.sink.bind("tcp://127.0.0.1:*")
        self.sink.setsockopt(zmq.RCVTIMEO, int(REPLY_TIMEOUT * 1000))
        self.vent_ep = self.vent.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sink_ep = self.sink.getsockopt_string(zmq.LAST_ENDPOINT)
        self.peers = []

    def grow(self, workers):
        count = workers - len(self.peers)
        if count <= 0:
            return
        ev_vent = _peers.monitor_handshakes(self.vent)
        ev_sink = _peers.monitor_handshakes(self.sink)
        new = [_peers.Peer(_peers.run_pushpull_worker, self.vent_ep, self.sink_ep,
                           name="pyzmq-worker-%d" % (len(self.peers) + i)).launch()
               for i in range(count)]
        self.peers.extend(new)
        for peer in new:
            peer.wait_ready(START_TIMEOUT)
        _peers.wait_handshakes(self.vent, ev_vent, count, START_TIMEOUT)
        _peers.wait_handshakes(self.sink, ev_sink, count, START_TIMEOUT)

    def run(self, n, payloads):
        window = window_for(len(payloads[0]))
        send, recv, k = self.vent.send, self.sink.recv, len(payloads)
        sent = got = 0
        t0 = time.perf_counter()
        try:
            while got < n:
                while sent < n and sent - got < window:
                    send(payloads[sent % k])
                    sent += 1
                recv()
                got += 1
        except zmq.Again:
            pass
        t1 = time.perf_counter()
        if got < n:   # what is still on its way belongs to this round
            self._drain()
        return {"seconds": t1 - t0, "sent": n, "received": got}

    def _drain(self):
        while self.sink.poll(500):
            self.sink.recv()

    def close(self):
        stop_peers(self.peers)
        self.vent.close(linger=0)
        self.sink.close(linger=0)
        self.ctx.term()


class PoolJob:
    """multiprocessing.Pool (spawn) of N processes; imap with a chunksize
    (``runner``), or one call at a time (``apply``)."""

    def __init__(self, workers):
        ctx = multiprocessing.get_context("spawn")
        self.pool = ctx.Pool(workers)
        self.pool.map(_peers.identity, range(workers * 4), chunksize=1)   # all started

    def runner(self, chunksize):
        def run(n, payloads):
            got = 0
            t0 = time.perf_counter()
            for _ in self.pool.imap(_peers.identity, stream_of(payloads, n), chunksize):
                got += 1
            return {"seconds": time.perf_counter() - t0, "sent": n, "received": got}
        return run

    def apply(self, payload):
        return self.pool.apply(_peers.identity, (payload,))

    def close(self):
        self.pool.terminate()
        self.pool.join()


class PpeJob:
    """concurrent.futures.ProcessPoolExecutor (spawn) of N processes; map
    (``run``), or one call at a time (``call``)."""

    def __init__(self, workers):
        ctx = multiprocessing.get_context("spawn")
        self.ex = ProcessPoolExecutor(workers, mp_context=ctx)
        list(self.ex.map(_peers.identity, range(workers * 4)))

    def run(self, n, payloads):
        got = 0
        t0 = time.perf_counter()
        for _ in self.ex.map(_peers.identity, stream_of(payloads, n)):
            got += 1
        return {"seconds": time.perf_counter() - t0, "sent": n, "received": got}

    def call(self, payload):
        return self.ex.submit(_peers.identity, payload).result()

    def close(self):
        self.ex.shutdown(wait=True, cancel_futures=True)


def memcpy_run(n, payloads):
    """One copy of each payload into a preallocated buffer (memcpy speed,
    plus about 100 ns of Python per copy)."""
    srcs = [memoryview(p) for p in payloads]
    dst = memoryview(bytearray(len(payloads[0])))
    t0 = time.perf_counter()
    for src in stream_of(srcs, n):
        dst[:] = src
    return {"seconds": time.perf_counter() - t0, "sent": n, "received": n}
