"""pylm.aio.Client next to the sync Client, same cluster, same run.

group "aio-job": 100-byte payloads, MESSAGES per round, reported as msgs/s
    ours      async for over aio Client.job -> Master (process) -> 2 Workers
              (processes) -> Master -> aio Client
    baseline  the sync Client.job on the same Master and workers
    (issue 14's target: ours >= 0.8x the baseline's msgs/s)
group "aio-eval": EVALS calls per round, reported as calls/s
    ours      EVALS concurrent aio Client.eval through asyncio.gather
    baseline  EVALS sync Client.eval one after the other
group "aio-job-uvloop" / "aio-eval-uvloop": the "ours" rounds on uvloop
    (when it is installed), next to the same sync baseline

Run:  .venv/bin/python -m pytest benchmarks/bench_aio.py --benchmark-disable-gc
Sizes: PYLM_BENCH_MESSAGES, PYLM_BENCH_ROUNDS, PYLM_BENCH_EVALS in the
environment.  Times are never asserted.
"""

import asyncio
import itertools
import os

import pytest

from pylm import aio
from pylm.clients import Client

try:  # benchmarks/ on sys.path (pytest's rootdir insertion; no __init__.py)
    from _peers import PAYLOAD, Peer, record, run_master, run_worker, tcp_addresses, wait_workers
except ImportError:  # benchmarks/ imported as a package
    from benchmarks._peers import (
        PAYLOAD, Peer, record, run_master, run_worker, tcp_addresses, wait_workers)

MESSAGES = int(os.environ.get("PYLM_BENCH_MESSAGES", 100_000))
ROUNDS = int(os.environ.get("PYLM_BENCH_ROUNDS", 10))
EVALS = int(os.environ.get("PYLM_BENCH_EVALS", 10_000))
WORKERS = 2
START_TIMEOUT = 30.0

try:
    import uvloop
except ImportError:  # an optional extra (test): the uvloop groups are skipped
    uvloop = None


@pytest.fixture(scope="module")
def cluster():
    """A Master and WORKERS Workers, each in its own process; yields the
    Master's db address once every worker has answered a call."""
    db, pull, pub, wpull, wpush = tcp_addresses(5)
    peers = [Peer(run_master, "master", pull, pub, wpull, wpush, db, name="master")]
    try:
        peers[0].start(START_TIMEOUT)
        names = ["worker-%d" % i for i in range(WORKERS)]
        for name in names:
            peers.append(Peer(run_worker, name, db, name=name))
            peers[-1].start(START_TIMEOUT)
        with Client("master", db, timeout=START_TIMEOUT) as client:
            wait_workers(client, names, START_TIMEOUT)
        yield db
    finally:
        for peer in reversed(peers):
            peer.stop()


@pytest.fixture(scope="module")
def sync_client(cluster):
    client = Client("master", cluster, timeout=START_TIMEOUT)
    yield client
    client.close()


class AioRunner:
    """An event loop of its own and an aio Client on it, for the rounds."""

    def __init__(self, db, loop):
        self.loop = loop
        self.client = aio.Client("master", db, timeout=START_TIMEOUT)
        assert self.run(self.client.eval("master.foo", PAYLOAD, timeout=START_TIMEOUT)) == PAYLOAD

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def close(self):
        self.run(self.client.close())
        self.loop.close()


@pytest.fixture(scope="module")
def aio_runner(cluster):
    runner = AioRunner(cluster, asyncio.new_event_loop())
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def uvloop_runner(cluster):
    if uvloop is None:
        pytest.skip("uvloop is not installed (pip install uvloop)")
    runner = AioRunner(cluster, uvloop.new_event_loop())
    yield runner
    runner.close()


# -- the rounds ---------------------------------------------------------------

def _sync_job_round(client, n):
    got = 0
    for _ in client.job("master.foo", itertools.repeat(PAYLOAD, n), messages=n,
                        timeout=START_TIMEOUT):
        got += 1
    assert got == n


async def _aio_job(client, n):
    got = 0
    async for _ in client.job("master.foo", itertools.repeat(PAYLOAD, n), messages=n,
                              timeout=START_TIMEOUT):
        got += 1
    assert got == n


def _aio_job_round(runner, n):
    runner.run(_aio_job(runner.client, n))


def _sync_evals_round(client, n):
    for _ in range(n):
        client.eval("master.foo", PAYLOAD, timeout=START_TIMEOUT)


async def _aio_evals(client, n):
    replies = await asyncio.gather(*[client.eval("master.foo", PAYLOAD, timeout=START_TIMEOUT)
                                     for _ in range(n)])
    assert len(replies) == n


def _aio_evals_round(runner, n):
    runner.run(_aio_evals(runner.client, n))


# -- group "aio-job" ----------------------------------------------------------

@pytest.mark.benchmark(group="aio-job")
def test_aio_job_sync_baseline(bench, benchmark, request, sync_client):
    bench(_sync_job_round, sync_client, MESSAGES, role="baseline",
          rounds=ROUNDS, warmup_rounds=1, iterations=1)
    record(request, benchmark, "aio-job", "baseline", MESSAGES)


@pytest.mark.benchmark(group="aio-job")
def test_aio_job_ours(bench, benchmark, request, aio_runner):
    bench(_aio_job_round, aio_runner, MESSAGES, role="ours",
          rounds=ROUNDS, warmup_rounds=1, iterations=1)
    record(request, benchmark, "aio-job", "ours", MESSAGES)


@pytest.mark.benchmark(group="aio-job-uvloop")
def test_aio_job_uvloop_sync_baseline(bench, benchmark, request, sync_client, uvloop_runner):
    bench(_sync_job_round, sync_client, MESSAGES, role="baseline",
          rounds=ROUNDS, warmup_rounds=1, iterations=1)
    record(request, benchmark, "aio-job-uvloop", "baseline", MESSAGES)


@pytest.mark.benchmark(group="aio-job-uvloop")
def test_aio_job_uvloop_ours(bench, benchmark, request, uvloop_runner):
    bench(_aio_job_round, uvloop_runner, MESSAGES, role="ours",
          rounds=ROUNDS, warmup_rounds=1, iterations=1)
    record(request, benchmark, "aio-job-uvloop", "ours", MESSAGES)


# -- group "aio-eval" ---------------------------------------------------------

@pytest.mark.benchmark(group="aio-eval")
def test_aio_eval_sync_loop_baseline(bench, benchmark, request, sync_client):
    bench(_sync_evals_round, sync_client, EVALS, role="baseline",
          rounds=max(3, ROUNDS // 2), warmup_rounds=1, iterations=1)
    record(request, benchmark, "aio-eval", "baseline", EVALS)


@pytest.mark.benchmark(group="aio-eval")
def test_aio_eval_gather_ours(bench, benchmark, request, aio_runner):
    bench(_aio_evals_round, aio_runner, EVALS, role="ours",
          rounds=ROUNDS, warmup_rounds=1, iterations=1)
    record(request, benchmark, "aio-eval", "ours", EVALS)


@pytest.mark.benchmark(group="aio-eval-uvloop")
def test_aio_eval_uvloop_sync_loop_baseline(bench, benchmark, request, sync_client,
                                            uvloop_runner):
    bench(_sync_evals_round, sync_client, EVALS, role="baseline",
          rounds=max(3, ROUNDS // 2), warmup_rounds=1, iterations=1)
    record(request, benchmark, "aio-eval-uvloop", "baseline", EVALS)


@pytest.mark.benchmark(group="aio-eval-uvloop")
def test_aio_eval_uvloop_gather_ours(bench, benchmark, request, uvloop_runner):
    bench(_aio_evals_round, uvloop_runner, EVALS, role="ours",
          rounds=ROUNDS, warmup_rounds=1, iterations=1)
    record(request, benchmark, "aio-eval-uvloop", "ours", EVALS)
