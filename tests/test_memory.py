"""Memory of a Master under a long job (slow: ``make slow`` or
``pytest -m slow tests/test_memory.py -s``).

A Master process and 2 Worker processes (spawned, stopped by SIGTERM to
their PIDs), a 1,000,000-message job from a client that consumes slowly at
first; the Master's resident memory (VmRSS of /proc/<pid>/status) is
sampled during the run.  Every reply must arrive exactly once and the peak
must stay bounded.
"""

import os
import threading
import time

import pytest

from pylm._testing import ServerFailed, in_child, tcp_addresses, wait_for
from pylm.clients import Client
from pylm.servers import Master, Worker

N = int(os.environ.get("PYLM_MEMORY_MESSAGES", 1_000_000))
PEAK_LIMIT_MB = 300
GROWTH_LIMIT_MB = 50        # last quarter of the run over the first: no steady growth
SLOW_UNTIL = 200_000        # the client sleeps 20 ms every 1,000 replies until here


class EchoWorker(Worker):
    """Runs in a child process: module level, pickled by reference."""

    def tag(self, payload):
        return payload


def rss_kb(pid):
    """VmRSS of process `pid` in kB (None once it is gone)."""
    try:
        with open("/proc/%d/status" % pid) as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class Sampler(threading.Thread):
    """Samples the RSS of `pid` every `interval` s until stopped (or for at
    most `limit` s), with the job's progress: (replies so far, kB)."""

    def __init__(self, pid, interval=0.05, limit=1800):
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.progress = 0           # replies received, set by the test
        self.interval = interval
        self.limit = limit
        self.samples = []
        self._done = threading.Event()

    def run(self):
        deadline = time.monotonic() + self.limit
        while not self._done.wait(self.interval) and time.monotonic() < deadline:
            value = rss_kb(self.pid)
            if value is not None:
                self.samples.append((self.progress, value))

    def stop(self):
        self._done.set()
        self.join(10)
        assert not self.is_alive(), "the sampler did not stop"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_million_message_job_through_a_master_process_keeps_its_memory_bounded():
    pull, pub, wpull, wpush, db = tcp_addresses(5)
    procs = [in_child(Master, "mem", pull_address=pull, pub_address=pub,
                      worker_pull_address=wpull, worker_push_address=wpush, db_address=db)]
    seen = bytearray(N)
    received = duplicates = 0
    try:
        procs += [in_child(EchoWorker, "w%d" % i, db) for i in range(2)]
        master_pid = procs[0].pid
        with Client("mem", db, timeout=30) as client:
            def answered():
                try:
                    return client.eval("mem.tag", b"ready", timeout=1.0) == b"ready"
                except TimeoutError:
                    return False
            wait_for(answered, timeout=60, what="an answer from the cluster")
            baseline = rss_kb(master_pid)
            sampler = Sampler(master_pid)
            sampler.start()
            t0 = time.monotonic()
            try:
                for reply in client.job("mem.tag", (b"%d" % i for i in range(N)), timeout=60):
                    i = int(reply)
                    duplicates += seen[i]
                    seen[i] = 1
                    received += 1
                    sampler.progress = received
                    if received <= SLOW_UNTIL and received % 1000 == 0:
                        time.sleep(0.02)
            finally:
                seconds = time.monotonic() - t0
                sampler.stop()
    finally:
        failures = []
        for proc in reversed(procs):
            try:
                proc.stop()
            except ServerFailed as exc:
                failures.append(exc)
    peak = max(value for _, value in sampler.samples)
    first = max((v for n, v in sampler.samples if n < N // 4), default=baseline)
    last = max((v for n, v in sampler.samples if n > N * 3 // 4), default=peak)
    print("memory: %d messages in %.1f s (%.0f/s), master RSS baseline %.1f MB, "
          "peak %.1f MB (%d samples; peak over the first quarter of the replies "
          "%.1f MB, over the last %.1f MB), received %d, duplicates %d, missing %d"
          % (N, seconds, N / seconds, baseline / 1024, peak / 1024, len(sampler.samples),
             first / 1024, last / 1024, received, duplicates, N - sum(seen)))
    assert not failures, failures
    assert received == N and duplicates == 0 and sum(seen) == N
    assert peak < PEAK_LIMIT_MB * 1024, "master peak RSS %.1f MB" % (peak / 1024)
    assert last - first < GROWTH_LIMIT_MB * 1024, "master RSS grew by %.1f MB" % (
        (last - first) / 1024)
