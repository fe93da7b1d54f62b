"""Large payloads through a Master, next to hand-written pyzmq in the same
run (issue 15's target: ours >= 1.0x its msgs/s at 64 KiB and 1 MiB).

groups "large-64KiB" and "large-1MiB": distinct payloads of that size,
PYLM_BENCH_LARGE_MIB (256) MiB per round (large_payloads.messages_for),
msgs/s
    ours      Client.job -> Master (process) -> 2 Workers (processes) ->
              Master -> Client, with Client.job's default window (2,000
              calls and JOB_WINDOW_BYTES)
    baseline  zguide's ventilator -> 2 workers -> sink as benchmarks/compare
              runs it (compare.systems.PyzmqJob: 16 MiB in flight)
    The two take turns round by round in one test per size
    (test_large_interleaved; conftest.py's interleave), so that the ratio
    compares rounds run under the same load.

benchmarks/large_payloads.py measures the same two systems outside pytest
(and the Master's CPU time per message).

Run:  .venv/bin/python -m pytest benchmarks/bench_large.py --benchmark-disable-gc
Sizes: PYLM_BENCH_LARGE_MIB (MiB per round), PYLM_BENCH_ROUNDS.
"""

import os

import pytest

try:  # benchmarks/ on sys.path (pytest's rootdir insertion; no __init__.py)
    from _peers import WORKERS, job_round, payloads_of, stream_of
    from compare.systems import PyzmqJob
    from large_payloads import messages_for
except ImportError:  # benchmarks/ imported as a package
    from benchmarks._peers import WORKERS, job_round, payloads_of, stream_of
    from benchmarks.compare.systems import PyzmqJob
    from benchmarks.large_payloads import messages_for

ROUNDS = int(os.environ.get("PYLM_BENCH_ROUNDS", 10))
SIZES = {"large-64KiB": 64 << 10, "large-1MiB": 1 << 20}


@pytest.fixture(scope="module")
def pyzmq_job():
    job = PyzmqJob()
    try:
        job.grow(WORKERS)
        yield job
    finally:
        job.close()


def _pyzmq_round(job, payloads, n):
    result = job.run(n, payloads)
    assert result["received"] == n, "%d of %d replies" % (result["received"], n)


@pytest.mark.parametrize("group", list(SIZES))
def test_large_interleaved(interleave, benchmark, master_client, pyzmq_job, group):
    """Rounds of ours and of the pyzmq pipeline taking turns (conftest.py's
    interleave): the ratio from rounds run under the same load."""
    benchmark.group = group
    payloads, n = payloads_of(SIZES[group]), messages_for(SIZES[group])
    interleave([
        ("ours", "ours", lambda: job_round(master_client, stream_of(payloads, n), n)),
        ("baseline", "pyzmq", lambda: _pyzmq_round(pyzmq_job, payloads, n)),
    ], messages=n, rounds=ROUNDS, warmup_rounds=1)
