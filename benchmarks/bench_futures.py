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

from pylm.futures import Executor

try:  # benchmarks/ on sys.path (pytest's rootdir insertion; no __init__.py)
    from _peers import PAYLOAD, START_TIMEOUT, WORKERS, identity, job_round
except ImportError:  # benchmarks/ imported as a package
    from benchmarks._peers import PAYLOAD, START_TIMEOUT, WORKERS, identity, job_round

MESSAGES = int(os.environ.get("PYLM_BENCH_MESSAGES", 100_000))
ROUNDS = int(os.environ.get("PYLM_BENCH_ROUNDS", 10))
PPE_ROUNDS = int(os.environ.get("PYLM_BENCH_PPE_ROUNDS", 3))
GROUP = "futures-map"


@pytest.fixture(scope="module")
def cluster(master_client):
    """conftest.py's master_client (a Master and 2 Worker processes) and an
    Executor of the same Master here."""
    executor = Executor("master", master_client.db_address, timeout=START_TIMEOUT)
    try:
        yield master_client, executor
    finally:
        executor.shutdown(cancel_futures=True)


def _map_round(executor, n):
    got = 0
    # timeout: a lost message fails the round instead of hanging it
    for _ in executor.map("master.foo", itertools.repeat(PAYLOAD, n), timeout=START_TIMEOUT):
        got += 1
    assert got == n


def _job_round(client, n):
    job_round(client, itertools.repeat(PAYLOAD, n), n)


def _count(replies, n):
    got = 0
    for _ in replies:
        got += 1
    assert got == n


@pytest.mark.benchmark(group=GROUP)
def test_map_process_pool_executor(bench):
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(WORKERS, mp_context=ctx) as ex:
        list(ex.map(identity, range(WORKERS * 4)))      # every process started
        bench(lambda: _count(ex.map(identity, itertools.repeat(PAYLOAD, MESSAGES)), MESSAGES),
              role="ppe", messages=MESSAGES, rounds=PPE_ROUNDS, warmup_rounds=0, iterations=1)


@pytest.mark.benchmark(group=GROUP)
def test_map_pool_imap_chunksize_100(bench):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(WORKERS) as pool:
        pool.map(identity, range(WORKERS * 4), chunksize=1)
        bench(lambda: _count(pool.imap(identity, itertools.repeat(PAYLOAD, MESSAGES), 100),
                             MESSAGES),
              role="pool100", messages=MESSAGES, rounds=ROUNDS, warmup_rounds=1, iterations=1)


@pytest.mark.benchmark(group=GROUP)
def test_map_ours(bench, cluster):
    bench(_map_round, cluster[1], MESSAGES, role="ours", messages=MESSAGES,
          rounds=ROUNDS, warmup_rounds=1, iterations=1)


@pytest.mark.benchmark(group=GROUP)
def test_map_baseline_client_job(bench, cluster):
    bench(_job_round, cluster[0], MESSAGES, role="baseline", messages=MESSAGES,
          rounds=ROUNDS, warmup_rounds=1, iterations=1)
