"""A worker may ask for more credit than the Master's socket to it holds
(Worker(credit=...) up to 100,000 messages; a ROUTER queue holds 1,000):
the Master never blocks its loop on a send to a worker.  A worker that
stops reading is then given up at `worker_timeout` like any silent one,
and what it held reaches the others.

The Master runs in a child process (a Master stuck in a send could not be
stopped in a thread); the workers that stop reading speak the worker
protocol (pylm_core/consts.pxi) from raw DEALER sockets, so that what they
hold is known exactly.
"""

import threading
import time
from collections import Counter

import zmq

from pylm_core import _core
from pylm._testing import in_child, stop_all, tcp_addresses
from pylm.clients import Client
from pylm.servers import Master, Worker

CALLS = 20_000             # sent one per message when A leaves: far more than
                            # the sockets and TCP buffers between Master and C hold
MARK = b"\xfe\xfdcall"      # in every payload: counts the calls a fake worker got


class EchoWorker(Worker):
    def tag(self, payload):
        return payload


class FakeWorker:
    """A worker from raw DEALER sockets: says READY asking for the most
    credit, then reads only what the test reads.  Its heartbeats come from
    a thread while `beating` is set."""

    def __init__(self, ctx, address, ident):
        self.sock = ctx.socket(zmq.DEALER)
        self.beat = ctx.socket(zmq.DEALER)
        for sock, routing_id in ((self.sock, ident), (self.beat, ident + _core.HB_SUFFIX)):
            sock.setsockopt(zmq.ROUTING_ID, routing_id)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(address)
        self.beating = threading.Event()
        self.beating.set()
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()
        self.sock.send_multipart([b"R", b"100000"])

    def _beat(self):
        while not self.closed.wait(0.1):
            if self.beating.is_set():
                self.beat.send(_core.W_BEAT_)

    def close(self):
        self.closed.set()
        self.thread.join(5)
        self.sock.close()
        self.beat.close()


def test_a_worker_with_credit_beyond_its_socket_never_blocks_the_master():
    pull, pub, wpull, wpush, db, router = tcp_addresses(6)
    master = in_child(Master, "master", pull, pub, wpull, wpush, db,
                      worker_router_address=router, worker_timeout=3.0)
    procs = [master]
    ctx = zmq.Context()
    fakes = []
    try:
        with Client("master", db, timeout=30) as client:
            # A takes every call (the only worker), reads them, never answers
            a = FakeWorker(ctx, router, b"w-fake-a")
            fakes.append(a)
            payloads = [MARK + b"%07d" % i + b"." * 200 for i in range(CALLS)]
            replies = []
            failure = []

            def run_job():
                try:
                    replies.extend(client.job("master.tag", iter(payloads), timeout=30,
                                              window=CALLS))
                except Exception as exc:    # reported by the test below
                    failure.append(exc)

            job = threading.Thread(target=run_job, daemon=True)
            job.start()
            got = 0
            deadline = time.monotonic() + 60
            while got < CALLS and time.monotonic() < deadline:
                if a.sock.poll(1000):
                    got += sum(frame.count(MARK) for frame in a.sock.recv_multipart())
            assert got == CALLS
            # C asks for as much and reads nothing: a worker busy on a long
            # call, or congested both ways
            c = FakeWorker(ctx, router, b"w-fake-c")
            fakes.append(c)
            # A leaves: its calls go to C, one per message, far more of them
            # than C's socket holds
            a.beating.clear()
            a.sock.send(b"B")
            # a real worker joins; C falls silent and is given up; its calls,
            # and those the Master held back, reach the real worker
            procs.append(in_child(EchoWorker, "echo", db))
            c.beating.clear()
            job.join(120)
            assert not job.is_alive() and not failure, failure
            assert Counter(replies) == Counter(payloads)
    finally:
        for fake in fakes:
            fake.close()
        try:
            stop_all(procs)
        finally:
            ctx.destroy(linger=0)
