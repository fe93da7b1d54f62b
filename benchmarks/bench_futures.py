"""pylm.futures.Executor.map next to Client.job and the standard library's
process pools, on the same payloads in the same run.

group "futures-map": MESSAGES payloads of 100 bytes per round, msgs/s
    ours      Executor.map -> Master (process) -> 2 Workers (processes), in order
    baseline  Client.job on the same Master and workers (issue 14's target:
              ours >= 0.8x its msgs/s)
    ppe       concurrent.futures.ProcessPoolExecutor(2).map (chunksize 1,
              its default), PPE_ROUNDS rounds (it is slow)
    pool100   multiprocessing.Pool(2).imap(chunksize=100)
    The pools run the same identity function (_peers.identity) in spawned
    processes, and run first: the ratio (ours / baseline) is printed once.

Run:  .venv/bin/python -m pytest benchmarks/bench_futures.py --benchmark-disable-gc
The ratio of the medians (ours / baseline) is printed when the group is
complete, and again after the tables (conftest.py); every row's msgs/s is
in its extra_info.  Times are never asserted.  Sizes: PYLM_BENCH_MESSAGES,
PYLM_BENCH_ROUNDS (as bench_job.py), PYLM_BENCH_PPE_ROUNDS.
"""

import itertools
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest

from pylm.clients import Client
from pylm.futures import Executor

try:  # benchmarks/ on sys.path (pytest's rootdir insertion; no __init__.py)
    from _peers import PAYLOAD, Peer, identity, record, run_master, run_worker, tcp_addresses, \
        wait_workers
except ImportError:  # benchmarks/ imported as a package
    from benchmarks._peers import PAYLOAD, Peer, identity, record, run_master, run_worker, \
        tcp_addresses, wait_workers

MESSAGES = int(os.environ.get("PYLM_BENCH_MESSAGES", 100_000))
ROUNDS = int(os.environ.get("PYLM_BENCH_ROUNDS", 10))
PPE_ROUNDS = int(os.environ.get("PYLM_BENCH_PPE_ROUNDS", 3))
WORKERS = 2
#: seconds a fixture may take to bring its processes up
START_TIMEOUT = 30.0
GROUP = "futures-map"


@pytest.fixture(scope="module")
def cluster():
    """A Master and WORKERS Workers, each in its own process; a Client and
    an Executor of it here.  Ready when every worker has answered."""
    db, pull, pub, wpull, wpush = tcp_addresses(5)
    peers = [Peer(run_master, "master", pull, pub, wpull, wpush, db, name="master")]
    client = executor = None
    try:
        peers[0].start(START_TIMEOUT)
        names = ["worker-%d" % i for i in range(WORKERS)]
        for name in names:
            peers.append(Peer(run_worker, name, db, name=name))
            peers[-1].start(START_TIMEOUT)
        client = Client("master", db, timeout=START_TIMEOUT)
        wait_workers(client, names, START_TIMEOUT)
        executor = Executor("master", db, timeout=START_TIMEOUT)
        yield client, executor
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
        if client is not None:
            client.close()
        for peer in reversed(peers):
            peer.stop()


def _map_round(executor, n):
    got = 0
    # timeout: a lost message fails the round instead of hanging it
    for _ in executor.map("master.foo", itertools.repeat(PAYLOAD, n), timeout=START_TIMEOUT):
        got += 1
    assert got == n


def _job_round(client, n):
    got = 0
    for _ in client.job("master.foo", itertools.repeat(PAYLOAD, n), messages=n,
                        timeout=START_TIMEOUT):
        got += 1
    assert got == n


def _count(replies, n):
    got = 0
    for _ in replies:
        got += 1
    assert got == n


@pytest.mark.benchmark(group=GROUP)
def test_map_process_pool_executor(bench, benchmark, request):
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(WORKERS, mp_context=ctx) as ex:
        list(ex.map(identity, range(WORKERS * 4)))      # every process started
        bench(lambda: _count(ex.map(identity, itertools.repeat(PAYLOAD, MESSAGES)), MESSAGES),
              role="ppe", rounds=PPE_ROUNDS, warmup_rounds=0, iterations=1)
    record(request, benchmark, GROUP, "ppe", MESSAGES)


@pytest.mark.benchmark(group=GROUP)
def test_map_pool_imap_chunksize_100(bench, benchmark, request):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(WORKERS) as pool:
        pool.map(identity, range(WORKERS * 4), chunksize=1)
        bench(lambda: _count(pool.imap(identity, itertools.repeat(PAYLOAD, MESSAGES), 100),
                             MESSAGES),
              role="pool100", rounds=ROUNDS, warmup_rounds=1, iterations=1)
    record(request, benchmark, GROUP, "pool100", MESSAGES)


@pytest.mark.benchmark(group=GROUP)
def test_map_ours(bench, benchmark, request, cluster):
    bench(_map_round, cluster[1], MESSAGES, role="ours",
          rounds=ROUNDS, warmup_rounds=1, iterations=1)
    record(request, benchmark, GROUP, "ours", MESSAGES)


@pytest.mark.benchmark(group=GROUP)
def test_map_baseline_client_job(bench, benchmark, request, cluster):
    bench(_job_round, cluster[0], MESSAGES, role="baseline",
          rounds=ROUNDS, warmup_rounds=1, iterations=1)
    record(request, benchmark, GROUP, "baseline", MESSAGES)
