"""Master/Worker throughput and Server round-trip latency, each next to
hand-written baselines of the same shape in the same run.

group "job": 100-byte payloads (128 distinct ones, cycled), MESSAGES per
round, reported as msgs/s (issue 15's targets: ours >= 2.0x each baseline);
ours, baseline and pool100 take turns in one test (test_job_interleaved:
ours, baseline, pool100, ours, ...; conftest.py's interleave), so that each
ratio compares rounds run under the same load
    ours      Client.job -> Master (process) -> 2 Workers (processes) -> Master -> Client
    baseline  ventilator PUSH (thread) -> 2 workers PULL/PUSH (processes) -> sink PULL
    pool100   multiprocessing.Pool(2).imap(chunksize=100) (spawn)
    c-libzmq  the same ventilator -> 2 workers -> sink in C against libzmq
              (benchmarks/c/pipeline.c, built here with the C compiler; the
              per-message physical reference, not a target); skipped with
              the reason when it cannot be built
group "job-stats": the "job" round of ours with live statistics asked for
    ours      the same job while another process (as `pylm stats` or a
              Prometheus scrape would be) asks the job's Master for
              Client.stats() every 10 ms
    baseline  the same job while that process asks an idle Master (a second
              one) as often: the same polling load on the machine, so the
              ratio is what answering costs the Master's hot path (issue
              13's target: ours >= 0.95x its msgs/s).  On 2 busy cores the
              polling itself costs the job about 10% whichever server is
              asked (measured with the job alone)
    One poller process asks one Master or the other, switched at the
    start of each round; the two take turns (test_job_stats_interleaved),
    so that the ratio compares rounds run under the same load.
group "eval": every call timed; p50 and p99 of the calls (issue 15's
targets: ours p50 <= 1.0x and p99 <= 1.2x the baseline's); blocks of
EVAL_BLOCK calls of each side take turns in one test (test_eval_interleaved),
EVAL_ROUNDS calls of each in all
    ours      Client.eval -> Server (process) -> Client
    baseline  REQ -> REP (process) -> REQ

Run:  .venv/bin/python -m pytest benchmarks/bench_job.py --benchmark-disable-gc
The summary after the tables (conftest.py, _targets.py) gives each ratio
and target.  Times are never asserted.  Sizes: PYLM_BENCH_MESSAGES,
PYLM_BENCH_ROUNDS, PYLM_BENCH_EVAL_ROUNDS in the environment; conftest.py's
--rounds, --warmup-rounds, --iterations override the rounds.
"""

import contextlib
import functools
import multiprocessing
import os
import threading
import time

import pytest
import zmq

from pylm.clients import Client

try:  # benchmarks/ on sys.path (pytest's rootdir insertion; no __init__.py)
    import _c_pipeline
    import _targets
    from _peers import (
        PAYLOAD, START_TIMEOUT, WORKERS, Peer, job_round, monitor_handshakes, payloads_of,
        run_master, run_pushpull_worker, run_rep, run_server, stop_peers, stream_of,
        tcp_addresses, wait_handshakes)
    from compare.systems import PoolJob
except ImportError:  # benchmarks/ imported as a package
    from benchmarks import _c_pipeline, _targets
    from benchmarks._peers import (
        PAYLOAD, START_TIMEOUT, WORKERS, Peer, job_round, monitor_handshakes, payloads_of,
        run_master, run_pushpull_worker, run_rep, run_server, stop_peers, stream_of,
        tcp_addresses, wait_handshakes)
    from benchmarks.compare.systems import PoolJob

MESSAGES = int(os.environ.get("PYLM_BENCH_MESSAGES", 100_000))
ROUNDS = int(os.environ.get("PYLM_BENCH_ROUNDS", 10))
EVAL_ROUNDS = int(os.environ.get("PYLM_BENCH_EVAL_ROUNDS", 20000))
#: eval: calls of one side before the other side's turn, and calls of
#: each side in the warm-up
EVAL_BLOCK = 100
EVAL_WARMUP = 200
#: the job group's payloads: distinct objects, so that pickle's memo does
#: not flatter the Pool
PAYLOADS = payloads_of(len(PAYLOAD))


# ---------------------------------------------------------------------------
# group "job"

@pytest.fixture(scope="module")
def pushpull():
    """zguide's ventilator/workers/sink: ventilator PUSH and sink PULL bound
    here, WORKERS worker processes between them."""
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
            peers.append(Peer(run_pushpull_worker, vent_ep, sink_ep, name="pp-worker-%d" % i))
            peers[-1].start(START_TIMEOUT)
        wait_handshakes(vent, vent_events, WORKERS, START_TIMEOUT)
        wait_handshakes(sink, sink_events, WORKERS, START_TIMEOUT)
        sink.setsockopt(zmq.RCVTIMEO, int(START_TIMEOUT * 1000))  # a lost message fails, not hangs
        yield vent, sink
    finally:
        stop_peers(peers)
        vent.close(linger=0)
        sink.close(linger=0)
        ctx.term()


def _ventilate(vent, n):
    send = vent.send
    for payload in stream_of(PAYLOADS, n):
        send(payload)


def _pushpull_round(vent, sink, n):
    ventilator = threading.Thread(target=_ventilate, args=(vent, n))
    ventilator.start()
    recv = sink.recv
    for _ in range(n):
        recv()
    ventilator.join()


@pytest.mark.benchmark(group="job")
def test_job_interleaved(interleave, master_client, pushpull):
    """ours, the pyzmq pipeline and the Pool, taking turns round by round
    (conftest.py's interleave): each ratio from the same load."""
    vent, sink = pushpull
    pool = PoolJob(WORKERS)
    try:
        run_pool = pool.runner(100)

        def pool_round():
            result = run_pool(MESSAGES, PAYLOADS)
            assert result["received"] == MESSAGES, "%d of %d results" % (
                result["received"], MESSAGES)

        interleave([
            ("ours", "ours", lambda: job_round(master_client, stream_of(PAYLOADS, MESSAGES),
                                               MESSAGES)),
            ("baseline", "pyzmq", lambda: _pushpull_round(vent, sink, MESSAGES)),
            ("pool100", "pool_imap_chunksize_100", pool_round),
        ], messages=MESSAGES, rounds=ROUNDS, warmup_rounds=1)
    finally:
        pool.close()


def test_job_reference_c_libzmq(tmp_path, request):
    """Timed by the C program itself (not by pytest-benchmark): recorded
    in the summary as the job group's reference row."""
    try:
        program = _c_pipeline.build(str(tmp_path))
    except _c_pipeline.Unavailable as exc:
        pytest.skip("C libzmq reference: %s" % exc)
    times = _c_pipeline.run(program, WORKERS, ROUNDS, MESSAGES)
    _targets.add("job", "c-libzmq", request.node.name, times, MESSAGES)


# ---------------------------------------------------------------------------
# group "job-stats"

#: Seconds between two Client.stats() calls beside a job.
STATS_EVERY = 0.01


def _poll_stats(db_addresses, which, stop, polls):
    """Ask a Master for its statistics every STATS_EVERY seconds until
    `stop` is set: the one at db_addresses[which.value], chosen anew before
    each call, and count the answers of each in `polls` (in a process of
    its own: the cost measured is the server's, not a second thread's in
    the client's process)."""
    clients = [Client("master", db, timeout=START_TIMEOUT) for db in db_addresses]
    try:
        while not stop.wait(STATS_EVERY):
            target = which.value
            clients[target].stats(timeout=START_TIMEOUT)
            with polls.get_lock():
                polls[target] += 1
    finally:
        for client in clients:
            client.close()


@pytest.fixture(scope="module")
def idle_master():
    """A second Master, idle: what the baseline's poller asks."""
    db, pull, pub, wpull, wpush = tcp_addresses(5)
    peer = Peer(run_master, "master", pull, pub, wpull, wpush, db, name="idle-master")
    try:
        peer.start(START_TIMEOUT)
        yield db
    finally:
        peer.stop()


@contextlib.contextmanager
def _stats_poller(db_addresses):
    """A process polling the statistics of the servers at `db_addresses`
    while the block runs, one at a time; yields (which, polls): set
    which.value to the index of the server to ask, polls[i] counts the
    answers of server i."""
    ctx = multiprocessing.get_context("spawn")
    stop, which = ctx.Event(), ctx.Value("i", 0)
    polls = ctx.Array("q", len(db_addresses))
    proc = ctx.Process(target=_poll_stats, args=(db_addresses, which, stop, polls))
    proc.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while polls[0] == 0 and proc.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert polls[0] > 0, "the statistics poller did not get an answer"
        yield which, polls
    finally:
        stop.set()
        proc.join(START_TIMEOUT)
        if proc.is_alive():
            proc.kill()
            proc.join()


@pytest.mark.benchmark(group="job-stats")
def test_job_stats_interleaved(interleave, master_client, idle_master):
    """Rounds of the job with the poller asking the job's Master (ours)
    and asking the idle one (baseline), taking turns (conftest.py's
    interleave); the poller switches at the start of each turn."""
    with _stats_poller([master_client.db_address, idle_master]) as (which, polls):
        def polled_round(target):
            which.value = target
            job_round(master_client, stream_of(PAYLOADS, MESSAGES), MESSAGES)

        before = list(polls)
        interleave([
            ("ours", "polled", functools.partial(polled_round, 0)),
            ("baseline", "stats_elsewhere", functools.partial(polled_round, 1)),
        ], messages=MESSAGES, rounds=ROUNDS, warmup_rounds=1)
        assert all(after > b for after, b in zip(polls, before)), \
            "statistics not read from both Masters during the rounds (warm-up included): %s" % list(polls)


# ---------------------------------------------------------------------------
# group "eval"

@pytest.fixture(scope="module")
def server_client():
    """A Server in its own process and a Client of it here."""
    db, pull, pub = tcp_addresses(3)
    peer = Peer(run_server, "server", db, pull, pub, False, name="server")
    client = None
    try:
        peer.start(START_TIMEOUT)
        client = Client("server", db, timeout=START_TIMEOUT)
        assert client.eval("server.foo", PAYLOAD, timeout=START_TIMEOUT) == PAYLOAD
        yield client
    finally:
        if client is not None:
            client.close()
        peer.stop()


@pytest.fixture(scope="module")
def req_socket():
    """A REP echo in its own process and a REQ to it here."""
    peer = Peer(run_rep, name="rep")
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    try:
        endpoint = peer.start(START_TIMEOUT)
        req.setsockopt(zmq.RCVTIMEO, int(START_TIMEOUT * 1000))
        req.connect(endpoint)
        req.send(PAYLOAD)
        assert req.recv() == PAYLOAD
        yield req
    finally:
        peer.stop()
        req.close(linger=0)
        ctx.term()


def _req_rep(req):
    req.send(PAYLOAD)
    return req.recv()


@pytest.mark.benchmark(group="eval")
def test_eval_interleaved(interleave, server_client, req_socket):
    """Blocks of EVAL_BLOCK calls of Client.eval and of REQ/REP taking
    turns (conftest.py's interleave), every call timed: both sides' p50
    and p99 from the same load."""
    interleave([
        ("ours", "ours", functools.partial(server_client.eval, "server.foo", PAYLOAD)),
        ("baseline", "pyzmq_req_rep", functools.partial(_req_rep, req_socket)),
    ], calls=EVAL_BLOCK, rounds=max(1, EVAL_ROUNDS // EVAL_BLOCK),
        warmup_rounds=max(1, EVAL_WARMUP // EVAL_BLOCK))
    assert server_client.eval("server.foo", PAYLOAD) == PAYLOAD
    assert _req_rep(req_socket) == PAYLOAD
