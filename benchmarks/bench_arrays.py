"""1 MiB float64 arrays through two worker processes that each return
``np.sqrt`` of what they get, three ways in the same run (issue 14):

group "arrays", ARRAYS arrays per round (8 distinct ones, cycled):
    ours             Client.job -> Master (process) -> 2 Workers (processes),
                     pylm.arrays.dumps/loads on both sides, the workers
                     returning the array itself
    baseline         zguide's ventilator PUSH -> 2 workers PULL/PUSH
                     (processes) -> sink PULL, each array sent as pyzmq's
                     documentation does: a JSON header (dtype, shape) and the
                     array with send(copy=False), read with np.frombuffer
    baseline-pickle  multiprocessing.Pool(2).imap (spawn, chunksize=1):
                     pickle both ways
Both zmq systems keep WINDOW arrays in flight (benchmarks/compare's window
for 1 MiB payloads).

Run:  .venv/bin/python -m pytest benchmarks/bench_arrays.py --benchmark-disable-gc \
          --benchmark-columns=median,ops,rounds
(``make bench`` runs it with the others.)  pytest-benchmark's table lists the
three medians of the group; the ratio of ours to the pyzmq baseline is
printed with msgs/s.  Sizes: PYLM_BENCH_ARRAYS (arrays per round) and
PYLM_BENCH_ROUNDS in the environment.  Times are never asserted.
"""

import itertools
import multiprocessing
import os

import numpy as np
import pytest
import zmq

from pylm.arrays import dumps, loads
from pylm.servers import Worker

try:  # benchmarks/ on sys.path (pytest's rootdir insertion; no __init__.py)
    from _peers import (LOG_LEVEL, START_TIMEOUT, WORKERS, Peer, master_cluster, monitor_handshakes,
                        stop_peers, wait_handshakes)
except ImportError:  # benchmarks/ imported as a package
    from benchmarks._peers import (LOG_LEVEL, START_TIMEOUT, WORKERS, Peer, master_cluster,
                                   monitor_handshakes, stop_peers, wait_handshakes)

ARRAYS = int(os.environ.get("PYLM_BENCH_ARRAYS", 256))
ROUNDS = int(os.environ.get("PYLM_BENCH_ROUNDS", 10))
WINDOW = 16                 # 16 MiB in flight, as benchmarks/compare
N = (1 << 20) // 8          # float64 values in 1 MiB
DISTINCT = 8


def _arrays():
    rng = np.random.default_rng(14)
    return [rng.random(N) for _ in range(DISTINCT)]


# -- the worker processes ----------------------------------------------------------

class SqrtWorker(Worker):
    def sqrt(self, payload):
        return np.sqrt(loads(payload))

    def who(self, payload):
        return self.name.encode()


def run_sqrt_worker(report, name, db, keys=None):
    worker = SqrtWorker(name, db, log_level=LOG_LEVEL, **(keys or {}))
    report()
    worker.start()


def _recv_array(sock):
    header = sock.recv_json()
    frame = sock.recv(copy=False)
    return np.frombuffer(frame, dtype=header["dtype"]).reshape(header["shape"])


def _send_array(sock, array):
    sock.send_json({"dtype": str(array.dtype), "shape": array.shape}, zmq.SNDMORE)
    sock.send(array, copy=False)


def run_sqrt_pushpull_worker(report, pull_endpoint, push_endpoint):
    """zguide's task worker with pyzmq's documented array transport."""
    import signal

    def handler(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    push = ctx.socket(zmq.PUSH)
    try:
        pull.connect(pull_endpoint)
        push.connect(push_endpoint)
        report()
        while True:
            _send_array(push, np.sqrt(_recv_array(pull)))
    finally:
        pull.close(linger=0)
        push.close(linger=0)
        ctx.term()


def pool_sqrt(array):
    return np.sqrt(array)


# -- fixtures ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def sqrt_client():
    with master_cluster(worker=run_sqrt_worker) as client:
        yield client


@pytest.fixture(scope="module")
def pushpull():
    ctx = zmq.Context()
    vent = ctx.socket(zmq.PUSH)
    sink = ctx.socket(zmq.PULL)
    peers = []
    try:
        vent.bind("tcp://127.0.0.1:*")
        sink.bind("tcp://127.0.0.1:*")
        vent_ep = vent.getsockopt_string(zmq.LAST_ENDPOINT)
        sink_ep = sink.getsockopt_string(zmq.LAST_ENDPOINT)
        vent_events = monitor_handshakes(vent)
        sink_events = monitor_handshakes(sink)
        for i in range(WORKERS):
            peers.append(Peer(run_sqrt_pushpull_worker, vent_ep, sink_ep,
                              name="array-worker-%d" % i))
            peers[-1].start(START_TIMEOUT)
        wait_handshakes(vent, vent_events, WORKERS, START_TIMEOUT)
        wait_handshakes(sink, sink_events, WORKERS, START_TIMEOUT)
        sink.setsockopt(zmq.RCVTIMEO, int(START_TIMEOUT * 1000))  # a lost array fails
        yield vent, sink
    finally:
        stop_peers(peers)
        vent.close(linger=0)
        sink.close(linger=0)
        ctx.term()


@pytest.fixture(scope="module")
def pool():
    with multiprocessing.get_context("spawn").Pool(WORKERS) as p:
        p.map(pool_sqrt, [np.zeros(1)] * (WORKERS * 4), chunksize=1)    # all started
        yield p


# -- rounds -----------------------------------------------------------------------

def _ours_round(client, arrays, n):
    got = 0
    for reply in client.job("master.sqrt", (dumps(a) for a in itertools.islice(
            itertools.cycle(arrays), n)), messages=n, window=WINDOW, timeout=START_TIMEOUT):
        got += loads(reply).shape == (N,)
    assert got == n


def _pushpull_round(vent, sink, arrays, n):
    got = 0
    sent = 0
    k = len(arrays)
    while got < n:
        while sent < n and sent - got < WINDOW:
            _send_array(vent, arrays[sent % k])
            sent += 1
        got += _recv_array(sink).shape == (N,)
    assert got == n


def _pool_round(p, arrays, n):
    got = 0
    for result in p.imap(pool_sqrt, itertools.islice(itertools.cycle(arrays), n), 1):
        got += result.shape == (N,)
    assert got == n


@pytest.mark.benchmark(group="arrays")
def test_arrays_ours(bench, sqrt_client):
    arrays = _arrays()
    bench(_ours_round, sqrt_client, arrays, ARRAYS, role="ours", messages=ARRAYS,
          rounds=ROUNDS, warmup_rounds=1, iterations=1)


@pytest.mark.benchmark(group="arrays")
def test_arrays_baseline_pyzmq_copy_false(bench, pushpull):
    arrays = _arrays()
    vent, sink = pushpull
    bench(_pushpull_round, vent, sink, arrays, ARRAYS, role="baseline", messages=ARRAYS,
          rounds=ROUNDS, warmup_rounds=1, iterations=1)


@pytest.mark.benchmark(group="arrays")
def test_arrays_baseline_pool_imap_pickle(bench, pool):
    arrays = _arrays()
    bench(_pool_round, pool, arrays, ARRAYS, role="baseline-pickle", messages=ARRAYS,
          rounds=ROUNDS, warmup_rounds=1, iterations=1)
