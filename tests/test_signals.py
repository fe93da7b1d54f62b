"""Signals never corrupt the wire (issue 11, item 3).

A handled signal interrupts a blocking libzmq call with EINTR.  The core
must then run the Python handlers and go on with the call, never give up a
frame of a message half sent or half read: a frame dropped there makes the
peer take the tail of one message for the next one.

The Master and two workers run in child processes whose sockets have tiny
kernel buffers and, from the workers to the Master and from the Master to
its client, tiny high-water marks, so that their sends and receives block
all the time during a job of large payloads; SIGUSR1, handled by a
Python handler in each child, is sent to all three about 1,000 times a
second for the whole job, and to the thread of the test that runs the
client's job.  Every reply must come back exactly once, no
worker may be taken for lost (no message sent again), and the Master must have dropped nothing
(``stats['bad']``).
"""

import json
import os
import signal
import threading
import time
from collections import Counter

import zmq

import pylm._runtime
from pylm._testing import in_child, stop_all, tcp_addresses, wait_for
from pylm.clients import Client
from pylm.servers import MAX_MESSAGE_SIZE, Master, Worker

from palm_reference import batch

N = 6000                # calls in the job
PAYLOAD = 2000          # bytes of filler after each call's id
HWM = 2                 # messages queued by a congested socket
# The other way, from the Master to its workers, queues stay as they are
# (1,000 messages, at least a worker's credit): were both ways congested, a
# Master blocked sending to a worker could wait for a worker blocked
# sending to it.
ROOMY = 1000
KERNEL_BUFFER = 4096    # bytes of TCP send and receive buffer in the children
RATE = 1000             # signals per second to each child


# -- the children (module level: spawned children import them) ----------------

_handled = 0


def _on_usr1(signum, frame):
    global _handled
    _handled += 1


def _congest(ready_path, sndhwm, rcvhwm):
    """In a child: count SIGUSR1 in a Python handler, give every socket of
    the process these high-water marks and tiny kernel buffers, then say
    so (ready_path)."""
    signal.signal(signal.SIGUSR1, _on_usr1)
    ctx = zmq.Context.instance()
    for option, value in ((zmq.SNDHWM, sndhwm), (zmq.RCVHWM, rcvhwm),
                          (zmq.SNDBUF, KERNEL_BUFFER), (zmq.RCVBUF, KERNEL_BUFFER)):
        ctx.setsockopt(option, value)
    with open(ready_path, "w"):
        pass


def _report(path, **figures):
    with open(path + ".tmp", "w") as f:
        json.dump(dict(figures, signals=_handled), f)
    os.replace(path + ".tmp", path)


class SignalledMaster(Master):
    def start(self, ready_path, report_path):
        _congest(ready_path, ROOMY, HWM)
        pylm._runtime.PUB_HWM = HWM     # the XPUB too: publishing blocks
        try:
            super().start()
        finally:
            _report(report_path, stats=self.stats)


class SignalledWorker(Worker):
    def tag(self, payload):
        return payload

    def start(self, ready_path, report_path):
        _congest(ready_path, HWM, ROOMY)
        try:
            super().start()
        finally:
            _report(report_path, stats=self.stats)


# -- the test -----------------------------------------------------------------

def _signal_all(pids, thread, stop, sent):
    """Send SIGUSR1 to every pid and to `thread` of this process about RATE
    times a second until stop is set (at most 10 minutes' worth)."""
    for _ in range(RATE * 600):
        if stop.wait(1 / RATE):
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGUSR1)
                sent[pid] += 1
            except ProcessLookupError:
                pass
        signal.pthread_kill(thread, signal.SIGUSR1)
        sent["client"] += 1


def test_signals_during_a_congested_job_every_reply_exactly_once(tmp_path):
    pull, pub, wpull, wpush, db = tcp_addresses(5)
    paths = {name: (str(tmp_path / (name + ".ready")), str(tmp_path / (name + ".json")))
             for name in ("master", "w0", "w1")}
    procs = []
    stop = threading.Event()
    sent = Counter()
    signaller = None
    replies = []
    handled = Counter()
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: handled.update(["client"]))
    try:
        ready, report = paths["master"]
        procs.append(in_child(
            SignalledMaster, "sig", pull_address=pull, pub_address=pub,
            worker_pull_address=wpull, worker_push_address=wpush, db_address=db,
            worker_timeout=30.0, start_kwargs=dict(ready_path=ready, report_path=report)))
        wait_for(lambda: os.path.exists(ready), timeout=30, what="the Master starting")
        for name in ("w0", "w1"):
            ready, report = paths[name]
            procs.append(in_child(SignalledWorker, name, db, start_kwargs=dict(
                ready_path=ready, report_path=report)))
        wait_for(lambda: all(os.path.exists(paths[n][0]) for n in ("w0", "w1")),
                 timeout=30, what="the workers starting")
        # every child has its SIGUSR1 handler now (else the signal kills it)
        signaller = threading.Thread(
            target=_signal_all, name="signaller", daemon=True,
            args=([p.pid for p in procs], threading.main_thread().ident, stop, sent))
        signaller.start()
        payloads = [b"%06d:" % i + b"x" * PAYLOAD for i in range(N)]
        with Client("sig", db, timeout=30) as client:
            for reply in client.job("sig.tag", iter(payloads), timeout=30):
                replies.append(reply)
    finally:
        stop.set()
        if signaller is not None:
            signaller.join(10)
        signal.signal(signal.SIGUSR1, previous)
        assert signaller is None or not signaller.is_alive(), "the signaller did not stop"
        stop_all(procs[1:] + procs[:1])     # the workers, then the Master

    figures = {}
    for name, (_, report) in paths.items():
        with open(report) as f:
            figures[name] = json.load(f)
    master = figures["master"]["stats"]
    print("signals sent: %s; handled: %s, client %d; master: %s"
          % (dict(sent), {n: f["signals"] for n, f in figures.items()}, handled["client"],
             master))

    counts = Counter(replies)
    assert len(replies) == N, "%d replies for %d calls" % (len(replies), N)
    assert counts == Counter(payloads), "replies differ from the payloads sent"
    assert master["bad"] == 0, master
    # no worker was taken for lost during the job (those leaving at the
    # end are counted in workers_lost, with nothing to send again)
    assert master["requeued"] == master["late"] == master["poisoned"] == 0, master
    for name in ("w0", "w1"):
        assert figures[name]["stats"].get("bad", 0) == 0, figures[name]
    # the signals did come, and Python handled them, during the job
    for name, f in figures.items():
        assert f["signals"] > 0, "%s handled no signal" % name
    assert handled["client"] > 0, "the client's process handled no signal"


# -- a worker blocked sending to a Master that reads nothing still stops --------

def test_sigterm_stops_a_worker_blocked_sending_to_its_master(tmp_path):
    """The worker gets one batch of 20 calls whose results are each a
    frame of their own (300 kB, past its batch size), from a Master that
    then reads nothing: its queue to the Master holds a few, and it blocks
    sending the rest, inside the batch (where it looks for no stop
    request).  SIGTERM must still stop it: its sends wait for room while
    watching the stop socket."""
    from pylm._cache import CacheHandler, serve_cache
    from pylm.parts.messages_pb2 import PalmMessage
    from pylm.persistence.kv import DictDB

    ctx = zmq.Context.instance()
    wpull, wpush, db = tcp_addresses(3)
    router = ctx.socket(zmq.ROUTER)
    control = ctx.socket(zmq.PULL)
    rep = ctx.socket(zmq.REP)
    sockets = [router, control, rep]
    worker = None
    cache_thread = None
    try:
        for sock in sockets:
            sock.linger = 0
        router.rcvhwm = 1
        router.rcvbuf = KERNEL_BUFFER
        router.bind("tcp://127.0.0.1:*")
        control.bind("inproc://test-signals-cache-%d" % id(control))
        rep.bind(db)
        cache = DictDB()
        for key, value in dict(worker_pull_address=wpull, worker_push_address=wpush,
                               max_message_size=str(MAX_MESSAGE_SIZE),
                               worker_router_address=router.getsockopt_string(
                                   zmq.LAST_ENDPOINT)).items():
            cache.set(value.encode(), key)
        cache_thread = threading.Thread(target=serve_cache, daemon=True, args=(
            rep, control, CacheHandler(cache), 100))
        cache_thread.start()

        ready, report = str(tmp_path / "w.ready"), str(tmp_path / "w.json")
        worker = in_child(SignalledWorker, "blocked", db,
                          start_kwargs=dict(ready_path=ready, report_path=report))
        assert router.poll(30_000), "the worker never said READY"
        ident, kind, _credit = router.recv_multipart()
        assert kind == b"R"
        calls = [PalmMessage(pipeline="p", client="c", function="blocked.tag",
                             payload=b"%02d" % i + b"x" * 300_000).SerializeToString()
                 for i in range(20)]
        router.send_multipart([ident, batch(calls)])
        # its first result came: the worker is inside the batch
        assert router.poll(30_000), "no result from the worker"
    finally:
        if worker is not None:
            worker.stop(timeout=10)     # raises ServerFailed when it hangs
        if cache_thread is not None:
            with ctx.socket(zmq.PUSH) as poke:
                poke.connect(control.getsockopt_string(zmq.LAST_ENDPOINT))
                poke.send(b"stop")
                cache_thread.join(10)
        for sock in sockets:
            sock.close(linger=0)
    assert not cache_thread.is_alive()
