"""A Master whose context lowers every socket's SNDHWM still stops.

The core keeps at most MAX_BATCHES_IN_FLIGHT batches in flight to one
worker, under half the SNDHWM of the Master's ROUTER to its workers, so
that its blocking send to a worker never waits.  That holds only if the
ROUTER's SNDHWM is the one the core counts on (WORKER_HWM), whatever the
context's default: pylm/servers.py sets it on the socket.
"""

import os
import signal
import threading

import zmq

from pylm._testing import in_child, stop_all, tcp_addresses, wait_for
from pylm.clients import Client
from pylm.servers import Master, Worker

N = 100                 # calls, each a batch of its own (past BATCH_BYTES)
PAYLOAD = 300_000       # bytes per call
KERNEL_BUFFER = 4096    # bytes of TCP send buffer in the Master


class LowHwmMaster(Master):
    def start(self):
        ctx = zmq.Context.instance()
        ctx.setsockopt(zmq.SNDHWM, 1)
        ctx.setsockopt(zmq.SNDBUF, KERNEL_BUFFER)
        super().start()


class TagWorker(Worker):
    def tag(self, payload):
        return payload[:8]


def test_a_master_with_a_low_default_sndhwm_stops_while_its_worker_reads_nothing():
    """The worker is frozen (SIGSTOP) before a job of N large calls, so it
    reads nothing: the Master must queue the batches for it (they are far
    fewer than WORKER_HWM) rather than block in a send, and a SIGTERM must
    stop it.  Before the ROUTER's SNDHWM was set, the context's default
    of 1 made the Master block sending the second or third batch, and it
    could not stop."""
    pull, pub, wpull, wpush, db = tcp_addresses(5)
    master = in_child(LowHwmMaster, "lowhwm", pull_address=pull, pub_address=pub,
                      worker_pull_address=wpull, worker_push_address=wpush,
                      db_address=db, worker_timeout=120.0)
    worker = None
    frozen = False
    job = None
    outcome = []
    yielded = []
    try:
        worker = in_child(TagWorker, "w0", db)
        with Client("lowhwm", db, timeout=30) as client:
            wait_for(lambda: client.eval("lowhwm.tag", b"12345678xyz", timeout=30)
                     == b"12345678", timeout=60, what="the worker answering")
        os.kill(worker.pid, signal.SIGSTOP)
        frozen = True

        def run_job():
            try:
                with Client("lowhwm", db, timeout=30) as client:
                    payloads = (yielded.append(i) or b"%08d" % i + b"x" * PAYLOAD
                                for i in range(N))
                    outcome.extend(client.job("lowhwm.tag", payloads, timeout=10))
            except Exception as exc:         # the Master stops under it
                outcome.append(exc)

        job = threading.Thread(target=run_job, name="job", daemon=True)
        job.start()
        # the client sent (most of) the calls; the Master reads them at
        # once and, before the fix, blocks sending them to the frozen worker
        wait_for(lambda: len(yielded) >= N // 2, timeout=60, what="the client sending")
        master.stop(timeout=20)
    finally:
        if frozen:
            os.kill(worker.pid, signal.SIGCONT)
        stop_all([p for p in (worker, master) if p is not None])
        if job is not None:
            job.join(60)
    assert job is None or not job.is_alive(), "the client's job did not end"
