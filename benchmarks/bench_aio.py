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

try:  # benchmarks/ on sys.path (pytest's rootdir insertion; no __init__.py)
    from _peers import PAYLOAD, START_TIMEOUT, job_round
except ImportError:  # benchmarks/ imported as a package
    from benchmarks._peers import PAYLOAD, START_TIMEOUT, job_round

MESSAGES = int(os.environ.get("PYLM_BENCH_MESSAGES", 100_000))
ROUNDS = int(os.environ.get("PYLM_BENCH_ROUNDS", 10))
EVALS = int(os.environ.get("PYLM_BENCH_EVALS", 10_000))

try:
    import uvloop
except ImportError:  # an optional extra (test): the uvloop groups are skipped
    uvloop = None


@pytest.fixture(scope="module")
def cluster(master_client):
    """The Master's db address (conftest.py's master_client: a Master and
    2 Worker processes)."""
    return master_client.db_address


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
    job_round(client, itertools.repeat(PAYLOAD, n), n)


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
def test_aio_job_sync_baseline(bench, master_client):
    bench(_sync_job_round, master_client, MESSAGES, role="baseline", messages=MESSAGES,
          rounds=ROUNDS, warmup_rounds=1, iterations=1)


@pytest.mark.benchmark(group="aio-job")
def test_aio_job_ours(bench, aio_runner):
    bench(_aio_job_round, aio_runner, MESSAGES, role="ours", messages=MESSAGES,
          rounds=ROUNDS, warmup_rounds=1, iterations=1)


@pytest.mark.benchmark(group="aio-job-uvloop")
def test_aio_job_uvloop_sync_baseline(bench, master_client, uvloop_runner):
    bench(_sync_job_round, master_client, MESSAGES, role="baseline", messages=MESSAGES,
          rounds=ROUNDS, warmup_rounds=1, iterations=1)


@pytest.mark.benchmark(group="aio-job-uvloop")
def test_aio_job_uvloop_ours(bench, uvloop_runner):
    bench(_aio_job_round, uvloop_runner, MESSAGES, role="ours", messages=MESSAGES,
          rounds=ROUNDS, warmup_rounds=1, iterations=1)


# -- group "aio-eval" ---------------------------------------------------------

@pytest.mark.benchmark(group="aio-eval")
def test_aio_eval_sync_loop_baseline(bench, master_client):
    bench(_sync_evals_round, master_client, EVALS, role="baseline", messages=EVALS,
          rounds=max(3, ROUNDS // 2), warmup_rounds=1, iterations=1)


@pytest.mark.benchmark(group="aio-eval")
def test_aio_eval_gather_ours(bench, aio_runner):
    bench(_aio_evals_round, aio_runner, EVALS, role="ours", messages=EVALS,
          rounds=ROUNDS, warmup_rounds=1, iterations=1)


@pytest.mark.benchmark(group="aio-eval-uvloop")
def test_aio_eval_uvloop_sync_loop_baseline(bench, master_client,
                                            uvloop_runner):
    bench(_sync_evals_round, master_client, EVALS, role="baseline", messages=EVALS,
          rounds=max(3, ROUNDS // 2), warmup_rounds=1, iterations=1)


@pytest.mark.benchmark(group="aio-eval-uvloop")
def test_aio_eval_uvloop_gather_ours(bench, uvloop_runner):
    bench(_aio_evals_round, uvloop_runner, EVALS, role="ours", messages=EVALS,
          rounds=ROUNDS, warmup_rounds=1, iterations=1)
