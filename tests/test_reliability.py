"""Reliability (issue "Reliability"): workers killed, frozen and poisoned
during jobs, garbage at every bound socket, timeouts, graceful shutdown.

Real processes (spawned workers, stopped or killed by PID) and real sockets;
every loop is bounded in count and time; durations are asserted only as
generous upper bounds of timeouts.  Figures (kills, counters of the Master)
are printed: run with ``-s`` to see them.  The random choices are seeded;
the seed is printed, replay with PYLM_CHAOS_SEED=<seed>.
"""

import contextlib
import logging
import os
import random
import signal
import threading
import time
from collections import Counter

import pytest
import zmq

import pylm.servers
from pylm import WorkerLost
from pylm._testing import Gate, ServerFailed, in_child, running, tcp_addresses, wait_for
from pylm.clients import Client
from pylm.parts.messages_pb2 import PalmMessage
from pylm.servers import Master, Pipeline, Server, Worker
from pylm_core import _core

from palm_reference import varint

TIMEOUT = 10        # seconds for a call that should answer
WORKER_TIMEOUT = 1.0  # the Masters' worker_timeout here: keeps requeues short
HEARTBEAT = 0.2     # workers' heartbeat: well inside WORKER_TIMEOUT
POISON = b"poison"
#: Slack on top of a timeout for a loaded machine (a timeout path must act
#: within its timeout plus this).
TIMEOUT_SLACK = 5.0
#: A worker frozen to be given up stays frozen worker_timeout plus this.
IDLE_FREEZE_SLACK = 5.0
#: start() returns this soon after stop(): at most a Master's drain of its
#: last replies (DRAIN_MS), plus TIMEOUT_SLACK.
STOP_WITHIN = _core.DRAIN_MS / 1000 + TIMEOUT_SLACK


# -- workers run in spawned children: module level, pickled by reference ------

class SleepyWorker(Worker):
    def tag(self, payload):
        return payload

    def work(self, payload):
        time.sleep(0.0005)
        return payload + b"@" + self.name.encode()


class PoisonWorker(Worker):
    def work(self, payload):
        if payload == POISON:
            os._exit(1)         # the process dies with the message on it
        return payload


def master_addresses():
    pull, pub, wpull, wpush, db = tcp_addresses(5)
    return dict(pull_address=pull, pub_address=pub, worker_pull_address=wpull,
                worker_push_address=wpush, db_address=db)


@pytest.fixture
def seed():
    value = os.environ.get("PYLM_CHAOS_SEED")
    value = int(value) if value else random.SystemRandom().randrange(2**32)
    print("chaos seed: %d  [replay: PYLM_CHAOS_SEED=%d]" % (value, value))
    return value


class WorkerPool:
    """Worker child processes of one Master, each handled by its PID: killed
    (SIGKILL), frozen (SIGSTOP/SIGCONT), replaced, and at the end stopped by
    SIGTERM (live ones) or reaped (dead ones).  At most `limit` are ever
    started."""

    def __init__(self, cls, db_address, limit=60, **kwargs):
        self.cls = cls
        self.db_address = db_address
        self.kwargs = kwargs
        self.limit = limit
        self.procs = []
        self.kills = 0
        self._lock = threading.Lock()

    def spawn(self):
        with self._lock:
            if len(self.procs) >= self.limit:
                raise AssertionError("more than %d worker processes started" % self.limit)
            name = "w%d" % len(self.procs)
            proc = in_child(self.cls, name, self.db_address,
                            log_level=logging.ERROR, **self.kwargs)
            proc.worker_name = name
            self.procs.append(proc)
            return proc

    def alive(self):
        with self._lock:
            return [p for p in self.procs if p.is_alive()]

    def kill(self, proc):
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        proc.process.join(5)
        self.kills += 1

    def close(self):
        """SIGCONT and SIGTERM the live workers (each must exit with 0),
        reap the dead ones."""
        failures = []
        for proc in list(self.procs):
            if proc.is_alive():
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                try:
                    proc.stop()
                except ServerFailed as exc:
                    failures.append(exc)
            else:
                proc.process.join(1)
        if failures:
            raise failures[0]


def until_answers(client, function, timeout=30):
    """Call until the cluster answers (workers still starting)."""
    def answered():
        try:
            return client.eval(function, b"ready?", timeout=1.0) == b"ready?"
        except TimeoutError:
            return False
    wait_for(answered, timeout=timeout, what="an answer to %s" % function)


def report(name, **figures):
    print("%s: %s" % (name, ", ".join("%s=%s" % kv for kv in figures.items())))


def exactly_once(replies, payloads):
    """Assert every payload came back exactly once; describe what did not."""
    counts = Counter(replies)
    duplicates = {k: v for k, v in counts.items() if v > 1}
    missing = [p for p in payloads if p not in counts]
    expected = set(payloads)
    extra = [k for k in counts if k not in expected]
    assert not duplicates and not missing and not extra, (
        "%d replies for %d payloads: %d duplicated (e.g. %r), %d missing (e.g. %r), "
        "%d unknown" % (len(replies), len(payloads), len(duplicates),
                        list(duplicates.items())[:5], len(missing), missing[:5], len(extra)))
    return len(duplicates)


# -- 1. workers killed during a job -------------------------------------------

def test_sigkill_a_worker_every_half_second_every_reply_exactly_once(seed):
    """SIGKILL a worker every 0.5 s during a job: the one that sent the
    latest reply (it is busy: it holds batches of the job) when there is
    one, else any.  The last 3,000 payloads are only sent after the first
    kill, so that at least one kill is always in the job, however fast the
    machine is."""
    n = 20_000
    master = Master("chaos", worker_timeout=WORKER_TIMEOUT, **master_addresses())
    payloads = [b"%d" % i for i in range(n)]
    replies = []
    latest = []         # the name of the worker of the latest reply
    rnd = random.Random(seed)
    done = threading.Event()
    killed = threading.Event()
    pool = WorkerPool(SleepyWorker, master.db_address, heartbeat=HEARTBEAT)
    killer_error = []

    def killer():
        try:
            while not done.wait(0.5) and pool.kills < 100:
                alive = pool.alive()
                busy = [p for p in alive if latest and p.worker_name == latest[-1]]
                if alive:
                    pool.kill(busy[0] if busy else rnd.choice(alive))
                    killed.set()
                pool.spawn()
        except BaseException as exc:  # reported in the test thread
            killer_error.append(exc)
            killed.set()

    def gen():
        for i, payload in enumerate(payloads):
            if i == n - 3000:
                assert killed.wait(30), "no worker was killed"
            yield payload

    t0 = time.monotonic()
    with running(master):
        try:
            for _ in range(4):
                pool.spawn()
            with Client("chaos", master.db_address, timeout=TIMEOUT) as client:
                until_answers(client, "chaos.tag")
                thread = threading.Thread(target=killer, name="killer", daemon=True)
                thread.start()
                try:
                    for reply in client.job("chaos.work", gen(), timeout=30):
                        payload, _, name = reply.partition(b"@")
                        replies.append(payload)
                        latest[:] = [name.decode()]
                finally:
                    done.set()
                    thread.join(30)
                    assert not thread.is_alive(), "the killer thread did not stop"
        finally:
            pool.close()
    assert not killer_error, killer_error
    stats = master.stats
    report("sigkill", seconds="%.1f" % (time.monotonic() - t0), kills=pool.kills,
           processes=len(pool.procs), results=len(replies),
           duplicates=len(replies) - len(set(replies)),
           **{k: stats.get(k) for k in ("workers_lost", "requeued", "late", "poisoned")})
    exactly_once(replies, payloads)
    assert pool.kills >= 1
    assert stats["workers_lost"] >= 1
    assert stats["poisoned"] == 0


# -- 2. a worker frozen during a job ------------------------------------------

class FastWorker(Worker):
    def tag(self, payload):
        return payload

    def signed(self, payload):
        return payload + b"@" + self.name.encode()

    def who(self, payload):
        return self.name.encode()


class HeldWorker(FastWorker):
    """A FastWorker whose call of payload `hold_at` waits at `gate`
    (announcing the worker's name) until the test opens it."""

    def __init__(self, *args, gate, hold_at, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = gate
        self.hold_at = hold_at

    def signed(self, payload):
        if payload == self.hold_at and not self.gate.wait(who=self.name):
            raise TimeoutError("the test never opened the gate")
        return super().signed(payload)


def test_a_worker_frozen_mid_job_every_reply_exactly_once():
    """SIGSTOP the worker that holds payload 1000 (held at a gate, so it
    surely holds messages) during a job of 9,000: the job can only end
    when the Master gave the frozen worker up (worker_timeout) and sent its
    messages to the others.  A second job of 3,000 then runs, and the
    worker is continued during it: its results must be dropped as late
    while the job runs.  After the job the test calls until the continued
    worker answers again, so its late results (sent before, on the same
    socket) reached the Master.  (Before 5127eb8 the Master registered the
    worker again at its first late [D] and published its next batches
    twice.)"""
    master = Master("freeze", worker_timeout=WORKER_TIMEOUT, **master_addresses())
    n, second = 12_000, 3_000
    payloads = [b"%d" % i for i in range(n)]
    replies = []
    stopped_at = []
    victim = None
    gate = Gate()
    pool = WorkerPool(HeldWorker, master.db_address, heartbeat=HEARTBEAT, gate=gate,
                      hold_at=b"1000")

    def second_job():
        for i, payload in enumerate(payloads[n - second:]):
            if i == 500:
                os.kill(victim.pid, signal.SIGCONT)
            yield payload

    with running(master), gate:
        try:
            procs = [pool.spawn() for _ in range(3)]
            with Client("freeze", master.db_address, timeout=TIMEOUT) as client:
                until_answers(client, "freeze.tag")
                try:
                    for reply in client.job("freeze.signed", iter(payloads[:n - second]),
                                            timeout=30):
                        replies.append(reply.partition(b"@")[0])
                        if len(replies) == 1500:
                            # payload 1000 was sent with the first 2,000 (the window)
                            gate.wait_arrived(1, timeout=TIMEOUT)
                            victim = procs[int(gate.who[0][1:])]
                            os.kill(victim.pid, signal.SIGSTOP)
                            stopped_at.append(time.monotonic())
                            gate.open()         # it goes on once continued
                    assert stopped_at, "the first job ended before a worker was frozen"
                    for reply in client.job("freeze.signed", second_job(), timeout=30):
                        replies.append(reply.partition(b"@")[0])
                finally:
                    if victim is not None:
                        os.kill(victim.pid, signal.SIGCONT)
                assert client.eval("freeze.tag", b"after", timeout=TIMEOUT) == b"after"
                # the continued worker answers new calls only after it sent
                # its late results (one socket, in order)
                seen = set()

                def victim_answered():
                    # enough calls to spread over all three: calls travel in
                    # batches (of up to 256), to the least loaded first
                    seen.update(client.job("freeze.who", iter([b""] * 3000), timeout=TIMEOUT))
                    return victim.worker_name.encode() in seen

                wait_for(victim_answered, timeout=60, what="the continued worker answering")
            assert all(p.is_alive() for p in procs)
        finally:
            pool.close()
    stats = master.stats
    report("sigstop", results=len(replies), duplicates=len(replies) - len(set(replies)),
           **{k: stats.get(k) for k in ("workers_lost", "requeued", "late", "poisoned")})
    exactly_once(replies, payloads)
    assert stats["workers_lost"] >= 1
    assert stats["requeued"] > 0 and stats["late"] > 0


# -- 3. a poison message --------------------------------------------------------

class PoisonCluster:
    """A Master in a thread and 4 PoisonWorker processes, kept at 4 by a
    supervisor thread that replaces dead ones (at most 40 processes).

    The Master charges a lost worker's first message with the loss; a live
    worker given up because a loaded machine delayed its heartbeats would
    charge an innocent message.  So worker_timeout leaves the heartbeats 5 s
    of slack here, though each death then takes that long to notice."""

    def __init__(self, name, **worker_kwargs):
        self.master = Master(name, worker_timeout=HEARTBEAT + TIMEOUT_SLACK,
                             **master_addresses())
        self.pool = WorkerPool(PoisonWorker, self.master.db_address, limit=40,
                               heartbeat=HEARTBEAT, **worker_kwargs)
        self._done = threading.Event()
        self._errors = []

    def _supervise(self):
        try:
            while not self._done.wait(0.05):
                for _ in range(4 - len(self.pool.alive())):
                    self.pool.spawn()
        except BaseException as exc:        # reported in the test thread
            self._errors.append(exc)

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(running(self.master))
        self._stack.callback(self.pool.close)
        for _ in range(4):
            self.pool.spawn()
        thread = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        thread.start()

        def stop_supervisor():
            self._done.set()
            thread.join(10)
            assert not thread.is_alive(), "the supervisor did not stop"
        self._stack.callback(stop_supervisor)
        try:
            self.client = self._stack.enter_context(
                Client(self.master.name, self.master.db_address, timeout=TIMEOUT))
            until_answers(self.client, self.master.name + ".work")
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc):
        self._stack.close()
        assert not self._errors, self._errors

    @property
    def deaths(self):
        return len(self.pool.procs) - 4


def test_a_poison_message_alone_raises_worker_lost():
    """eval of a payload that kills every worker that runs it: after
    MAX_LOST deaths the Master answers WorkerLost; the cluster goes on."""
    with PoisonCluster("poison") as cluster:
        t0 = time.monotonic()
        with pytest.raises(WorkerLost):
            cluster.client.eval("poison.work", POISON, timeout=30)
        seconds = time.monotonic() - t0
        deaths = cluster.deaths
        assert cluster.client.eval("poison.work", b"alive", timeout=TIMEOUT) == b"alive"
    stats = cluster.master.stats
    report("poison-eval", seconds="%.1f" % seconds, deaths=deaths,
           **{k: stats.get(k) for k in ("workers_lost", "requeued", "poisoned")})
    assert deaths >= 3
    assert stats["poisoned"] == 1


@pytest.mark.parametrize("credit", [1, 1000])
def test_a_poison_message_in_a_job_the_rest_is_delivered(credit):
    """A job of 2,000 messages plus the poison: every other reply arrives
    exactly once, and the job raises WorkerLost at its end.  With credit=1
    a worker holds only the message it runs; with the default credit it
    holds batches, and the messages of a lost worker are sent again one
    per batch, so only the poison is charged its losses."""
    payloads = [b"%d" % i for i in range(2000)]
    job = payloads[:1000] + [POISON] + payloads[1000:]
    replies = []
    with PoisonCluster("poison", credit=credit) as cluster:
        with pytest.raises(WorkerLost) as info:
            for reply in cluster.client.job("poison.work", iter(job), timeout=30):
                replies.append(reply)
        deaths = cluster.deaths
    stats = cluster.master.stats
    report("poison-job", results=len(replies), deaths=deaths,
           **{k: stats.get(k) for k in ("workers_lost", "requeued", "poisoned")})
    if credit == 1:
        assert stats["poisoned"] == 1
        exactly_once(replies, payloads)
        assert "1 message(s)" in str(info.value)
        return
    # With batches, a worker killed by the poison may die before it sent
    # the results of innocent messages it ran; under load the Master has
    # then charged one of those a loss too (a known fault of the charge, see
    # the issue-11 note: poisoned=2, 1999 of 2000 replies on a CI run).
    # What must hold regardless: no duplicate, nothing unknown, and every
    # payload that did not come back was declared lost, none silently.
    counts = Counter(replies)
    assert max(counts.values()) == 1 and set(counts) <= set(payloads)
    missing = [p for p in payloads if p not in counts]
    assert stats["poisoned"] >= 1 and len(missing) == stats["poisoned"] - 1, (
        stats, missing[:5])
    assert "%d message(s)" % stats["poisoned"] in str(info.value)


def test_a_poison_message_behind_another_in_its_batch():
    """A job of [b"innocent", POISON]: both go to a worker in one batch; the
    innocent one runs, then the poison kills the worker.  Only the poison
    may be declared lost."""
    replies = []
    with PoisonCluster("poison") as cluster:
        with pytest.raises(WorkerLost) as info:
            for reply in cluster.client.job("poison.work", iter([b"innocent", POISON]),
                                            timeout=30):
                replies.append(reply)
        deaths = cluster.deaths
    stats = cluster.master.stats
    report("poison-batch", results=len(replies), deaths=deaths,
           **{k: stats.get(k) for k in ("workers_lost", "requeued", "poisoned")})
    assert replies == [b"innocent"], "%s; %s" % (replies, info.value)
    assert stats["poisoned"] == 1


def test_a_worker_frozen_while_idle_works_again_after_sigcont():
    """A worker frozen (SIGSTOP) longer than worker_timeout while it holds
    no message is given up; after SIGCONT its heartbeats resume, and it
    must get work again.  (Before 5127eb8 only [R] or [D] registered it
    again, and an idle worker sends only heartbeats.)"""
    master = Master("idle", worker_timeout=WORKER_TIMEOUT, **master_addresses())
    pool = WorkerPool(FastWorker, master.db_address, heartbeat=HEARTBEAT)
    with running(master):
        try:
            proc = pool.spawn()
            with Client("idle", master.db_address, timeout=TIMEOUT) as client:
                until_answers(client, "idle.tag")
                # the reply was published: in the Master's books the worker
                # holds nothing.  Frozen past worker_timeout, with slack
                # for a loaded machine (the Master's check must run).
                os.kill(proc.pid, signal.SIGSTOP)
                try:
                    time.sleep(WORKER_TIMEOUT + IDLE_FREEZE_SLACK)
                finally:
                    os.kill(proc.pid, signal.SIGCONT)
                # the only worker: the call is answered once it is back
                assert client.eval("idle.tag", b"back", timeout=TIMEOUT) == b"back"
        finally:
            pool.close()
    report("idle-freeze", **{k: master.stats.get(k) for k in ("workers_lost", "requeued", "late")})
    assert master.stats["workers_lost"] >= 1


# -- 4. garbage at every bound socket ------------------------------------------

MAX_SIZE = 64 * 1024            # MAX_MESSAGE_SIZE for the garbage tests
MARK = _core.BATCH_MARK


def envelope(function, payload=b"", client=None, **fields):
    return PalmMessage(pipeline="garbage", client=client or "nobody-%x" % random.getrandbits(32),
                       function=function, payload=payload, **fields).SerializeToString()


def truncated(rnd):
    """A valid envelope cut inside its last field (the payload): always a
    decoding error."""
    data = envelope("x.echo", rnd.randbytes(40 + rnd.randrange(40)))
    return data[:len(data) - 1 - rnd.randrange(30)]


def broken_batch(rnd):
    """A batch whose first length runs past its end."""
    return varint(200 + rnd.randrange(100)) + rnd.randbytes(rnd.randrange(150))


class Garbage:
    """Garbage for one kind of socket: ``next(rnd) -> (frames, surely_bad)``;
    `surely_bad` when the server must count it in its `bad` counter (random
    bytes may happen to decode)."""

    def __init__(self, makers):
        self.makers = makers

    def __call__(self, rnd):
        return rnd.choice(self.makers)(rnd)


def _plain_makers(name):
    """For a PULL of calls (a Server's, a Master's client inbound)."""
    return [
        lambda r: ([r.randbytes(r.randrange(1, 300))], False),
        lambda r: ([b""], False),
        lambda r: ([r.randbytes(r.randrange(50)) for _ in range(r.randrange(2, 6))], True),
        lambda r: ([truncated(r)], True),
        lambda r: ([MARK, broken_batch(r)], True),
        lambda r: ([MARK, varint(3) + b"abc" + varint(90) + b"x"], True),
        lambda r: ([MARK, b"", b""], True),
        lambda r: ([MARK, r.randbytes(r.randrange(100))], False),
        # well formed, answered with a LookupError (to a topic nobody reads)
        lambda r: ([envelope(r.choice(["%s._x" % name, "%s.start" % name, "%s.stop" % name,
                                      "%s._config" % name, "%s.nope" % name, "other.echo",
                                      "echo", "", "%s.echo %s._x" % (name, name)]))], False),
        lambda r: ([envelope("%s.echo" % name, stage=7)], False),
    ]


def plain_garbage(name):
    return Garbage(_plain_makers(name))


ROUTER_GARBAGE = Garbage([
    lambda r: ([r.randbytes(r.choice([0, 2, 5, 40]))], True),           # no kind frame
    lambda r: ([r.randbytes(r.randrange(2, 9)), b"1"], True),            # kind of 2+ bytes
    lambda r: ([r.choice([b"X", b"r", b"d", b"\x00"]), b"1"], True),    # unknown kind
    lambda r: ([b"R"], True),
    lambda r: ([b"R", r.choice([b"", b"-1", b"abc", b"1234567890", b"1 "])], True),
    lambda r: ([b"R", b"5", b"extra"], True),
    lambda r: ([b"D", b"1"], True),
    lambda r: ([b"D", b"x1", r.randbytes(20)], True),
    lambda r: ([b"D", b"1", b"a", b"b"], True),
    lambda r: ([b"H", b"extra"], True),
    lambda r: ([b"B", b"extra"], True),
    lambda r: ([r.choice([b"H", b"B"])], False),                  # from nobody: ignored
])

WPULL_GARBAGE = Garbage([                                          # pylm 0.14 results
    lambda r: ([r.randbytes(r.randrange(1, 300))], False),
    lambda r: ([r.randbytes(20) for _ in range(r.randrange(2, 5))], True),
    lambda r: ([truncated(r)], True),
    lambda r: ([envelope("m.echo", b"result for nobody")], False),
])

CACHE_GARBAGE = Garbage([
    lambda r: ([r.randbytes(r.randrange(1, 300))], False),
    lambda r: ([r.randbytes(20) for _ in range(r.randrange(2, 5))], False),
    lambda r: ([truncated(r)], False),
    lambda r: ([envelope("x.bogus", b"k")], False),
    lambda r: ([b""], False),
])

XPUB_GARBAGE = Garbage([
    lambda r: ([r.randbytes(r.randrange(0, 100))], False),
    lambda r: ([b"\x01" + r.randbytes(r.randrange(0, 50))], False),
    lambda r: ([b"\x00" + r.randbytes(r.randrange(0, 50))], False),
    lambda r: ([r.randbytes(10) for _ in range(r.randrange(2, 4))], False),
])


def sub_garbage(topic):
    t = topic.encode()
    return Garbage([
        lambda r: ([t, r.randbytes(r.randrange(1, 300))], False),
        lambda r: ([t], True),
        lambda r: ([t] + [r.randbytes(20) for _ in range(r.randrange(2, 5))], True),
        lambda r: ([t, truncated(r)], True),
        lambda r: ([t, MARK, broken_batch(r)], True),
        lambda r: ([t + b"-more", r.randbytes(40)], False),
        lambda r: ([b"not-" + t, r.randbytes(40)], False),      # filtered by the SUB
        lambda r: ([t, envelope("pipe._x")], False),
    ])


class Spray:
    """Garbage senders: `n` sockets of `kind` connected to `address`, used
    round robin; counts what was sent and what was surely bad."""

    def __init__(self, ctx, kind, address, n=4, **options):
        self.socks = []
        for _ in range(n):
            sock = ctx.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            for name, value in options.items():
                sock.setsockopt(getattr(zmq, name), value)
            sock.connect(address)
            self.socks.append(sock)
        self.kind = kind
        self.sent = self.surely_bad = 0

    def send(self, rnd, garbage):
        frames, bad = garbage(rnd)
        sock = self.socks[self.sent % len(self.socks)]
        if self.kind == zmq.REQ:
            sock.send_multipart(frames)
            assert sock.poll(TIMEOUT * 1000), "the cache did not answer garbage"
            assert sock.recv_multipart() == [b""]
        else:
            sock.send_multipart(frames)
        self.sent += 1
        self.surely_bad += bad

    def oversized(self, i=0):
        """A frame over MAX_SIZE on socket `i` (the garbage is sent on
        others): libzmq on the server drops that connection."""
        self.socks[i].send(b"\x0a" + os.urandom(MAX_SIZE + 1000), zmq.DONTWAIT)

    def close(self):
        for sock in self.socks:
            sock.close(linger=0)


def spray(rnd, targets, total, check, every=50):
    """Send `total` garbage messages spread over `targets` [(Spray,
    Garbage)], and `check()` (a valid call) after every `every`."""
    checks = 0
    for i in range(total):
        sock, garbage = targets[i % len(targets)]
        sock.send(rnd, garbage)
        if i % every == every - 1:
            check()
            checks += 1
    return checks


@pytest.fixture
def small_max(monkeypatch):
    """Bound sockets take frames up to MAX_SIZE (ZMQ MAXMSGSIZE)."""
    monkeypatch.setattr(pylm.servers, "MAX_MESSAGE_SIZE", MAX_SIZE)


@pytest.fixture
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


class Tagger(Server):
    def tag(self, payload):
        return payload


def test_garbage_at_every_socket_of_a_server(small_max, zctx, seed):
    rnd = random.Random(seed)
    pull, pub, db = tcp_addresses(3)
    server = Tagger("srv", db, pull, pub)
    with running(server):
        with Client("srv", db, timeout=TIMEOUT) as client:
            calls = Counter()

            def check():
                payload = b"valid-%d" % calls["n"]
                assert client.eval("srv.tag", payload, timeout=TIMEOUT) == payload
                calls["n"] += 1

            sprays = [Spray(zctx, zmq.PUSH, pull), Spray(zctx, zmq.REQ, db),
                      Spray(zctx, zmq.XSUB, pub)]
            big = [Spray(zctx, zmq.PUSH, pull, n=2), Spray(zctx, zmq.REQ, db, n=2)]
            try:
                for s in big:
                    s.oversized(0)
                spray(rnd, [(sprays[0], plain_garbage("srv"))] * 8
                      + [(sprays[1], CACHE_GARBAGE), (sprays[2], XPUB_GARBAGE)], 6500, check)
                for s in big:
                    s.oversized(1)
                check()
                # an oversized request gets no answer: its connection was dropped
                assert not big[1].socks[0].poll(200)
                assert client.get("nothing") == b""
                client.set(b"v", "k")
                assert client.get("k") == b"v"
            finally:
                for s in sprays + big:
                    s.close()
            assert client.eval("srv.tag", b"after", timeout=TIMEOUT) == b"after"
    stats = server.stats
    report("garbage-server", garbage=sum(s.sent for s in sprays), valid_calls=calls["n"],
           surely_bad=sprays[0].surely_bad, **stats)
    assert stats["bad"] >= sprays[0].surely_bad > 0
    assert stats["bad"] <= sprays[0].sent
    assert stats["processed"] >= calls["n"]


def test_garbage_at_every_socket_of_a_master(small_max, zctx, seed):
    rnd = random.Random(seed)
    # no worker may be given up here (the test counts requeues): heartbeats
    # well inside worker_timeout, with slack for a loaded machine
    master = Master("m", worker_timeout=HEARTBEAT + TIMEOUT_SLACK, **master_addresses())
    worker = FastWorker("fw", master.db_address, heartbeat=HEARTBEAT)
    with running(master), running(worker):
        with Client("m", master.db_address, timeout=TIMEOUT) as client:
            until_answers(client, "m.tag")
            router = client.get("worker_router_address").decode()
            assert router.startswith("tcp://")
            calls = Counter()

            def check():
                payload = b"valid-%d" % calls["n"]
                assert client.eval("m.tag", payload, timeout=TIMEOUT) == payload
                calls["n"] += 1

            inbound = Spray(zctx, zmq.PUSH, master.pull_address)
            wpull = Spray(zctx, zmq.PUSH, master.worker_pull_address)
            dealers = Spray(zctx, zmq.DEALER, router, n=8)
            cache = Spray(zctx, zmq.REQ, master.db_address)
            xsub = Spray(zctx, zmq.XSUB, master.pub_address)
            counted = [inbound, wpull, dealers]
            big = [Spray(zctx, kind, address, n=2) for kind, address in [
                (zmq.PUSH, master.pull_address), (zmq.PUSH, master.worker_pull_address),
                (zmq.DEALER, router), (zmq.REQ, master.db_address)]]
            try:
                for s in big:
                    s.oversized(0)
                spray(rnd, [(inbound, plain_garbage("m"))] * 4 + [(wpull, WPULL_GARBAGE)] * 3
                      + [(dealers, ROUTER_GARBAGE)] * 3
                      + [(cache, CACHE_GARBAGE), (xsub, XPUB_GARBAGE)], 10_000, check)
                for s in big:
                    s.oversized(1)
                check()
                # a job through the Master after all that
                payloads = [b"%d" % i for i in range(2000)]
                exactly_once(list(client.job("m.tag", iter(payloads), timeout=TIMEOUT)),
                             payloads)
            finally:
                for s in counted + [cache, xsub] + big:
                    s.close()
            assert client.eval("m.tag", b"after", timeout=TIMEOUT) == b"after"
    stats = master.stats
    surely_bad = sum(s.surely_bad for s in counted)
    report("garbage-master", garbage=sum(s.sent for s in counted + [cache, xsub]),
           valid_calls=calls["n"], surely_bad=surely_bad, **stats)
    assert stats["bad"] >= surely_bad > 0
    assert stats["bad"] <= sum(s.sent for s in counted)
    assert stats["late"] == 0 and stats["requeued"] == 0


class PipeCaller:
    """Valid calls to a Pipeline from the PUB it subscribes to, replies on a
    SUB of its pub_address (raw sockets: a Client has no PUB)."""

    def __init__(self, ctx, pub_bind, pipe_pub, topic):
        self.topic = topic.encode()
        self.me = "caller-%x" % random.getrandbits(64)
        self.pub = ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 0)
        self.pub.bind(pub_bind)
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt_string(zmq.SUBSCRIBE, self.me)
        self.sub.connect(pipe_pub)
        self.n = 0

    def call(self, payload, timeout=TIMEOUT):
        self.pub.send_multipart([self.topic, envelope("pipe.echo", payload, client=self.me)])
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sub.poll(int(left * 1000) + 1):
                raise TimeoutError("no reply from the pipeline within %s s" % timeout)
            frames = self.sub.recv_multipart()
            if len(frames) == 2 and PalmMessage.FromString(frames[1]).payload == payload:
                self.n += 1
                return payload

    def until_answers(self, timeout=20, what="an answer from the pipeline"):
        def answered():
            try:
                return self.call(b"ready-%x" % random.getrandbits(32), timeout=0.3)
            except TimeoutError:
                return False
        wait_for(answered, timeout=timeout, what=what)

    def close(self):
        self.pub.close(linger=0)
        self.sub.close(linger=0)


def test_garbage_in_the_subscription_of_a_pipeline(small_max, zctx, seed):
    rnd = random.Random(seed)
    sub, pub, db = tcp_addresses(3)
    pipe = Pipeline("pipe", db, sub, pub, "up")
    with running(pipe, ready=lambda s: True):
        caller = PipeCaller(zctx, sub, pub, "up")
        try:
            caller.until_answers(what="a first answer")
            garbage = sub_garbage("up")
            stats = Counter()

            class Publisher:
                kind = zmq.PUB

                def send(self, r, g):
                    frames, bad = g(r)
                    caller.pub.send_multipart(frames)
                    stats["sent"] += 1
                    stats["surely_bad"] += bad

            spray(rnd, [(Publisher(), garbage)], 3500,
                  lambda: caller.call(b"valid-%d" % caller.n), every=25)
            assert caller.call(b"after") == b"after"
        finally:
            caller.close()
    report("garbage-pipeline", garbage=stats["sent"], valid_calls=caller.n,
           surely_bad=stats["surely_bad"], **pipe.stats)
    assert pipe.stats["bad"] >= stats["surely_bad"] > 0
    assert pipe.stats["bad"] <= stats["sent"]


def test_a_frame_over_the_maximum_does_not_cut_a_pipeline_off(small_max, zctx):
    """(Before 5127eb8 the Pipeline's SUB had MAXMSGSIZE too: on a connecting
    socket libzmq ends the session for good, the stage was cut off.)"""
    sub, pub, db = tcp_addresses(3)
    pipe = Pipeline("pipe", db, sub, pub, "up")
    with running(pipe, ready=lambda s: True):
        caller = PipeCaller(zctx, sub, pub, "up")
        try:
            caller.until_answers(what="a first answer")
            caller.pub.send_multipart([b"up", os.urandom(MAX_SIZE + 1000)])
            # cut off, it would never answer again
            caller.until_answers(timeout=20, what="an answer after a frame over the maximum")
        finally:
            caller.close()



@pytest.mark.parametrize("kind", ["Server", "Master"])
def test_a_job_of_messages_under_the_maximum_whose_batches_are_over_it(small_max, kind):
    payloads = [b"%05d" % i + os.urandom(MAX_SIZE // 8) for i in range(16)]
    with contextlib.ExitStack() as stack:
        if kind == "Server":
            pull, pub, db = tcp_addresses(3)
            stack.enter_context(running(Tagger("big", db, pull, pub)))
        else:
            master = Master("big", worker_timeout=WORKER_TIMEOUT, **master_addresses())
            db = master.db_address
            stack.enter_context(running(master))
            stack.enter_context(running(FastWorker("fw", db, heartbeat=HEARTBEAT)))
        client = stack.enter_context(Client("big", db, timeout=TIMEOUT))
        until_answers(client, "big.tag")
        # each call alone is answered
        assert client.eval("big.tag", payloads[0], timeout=TIMEOUT) == payloads[0]
        replies = list(client.job("big.tag", iter(payloads), timeout=TIMEOUT))
    exactly_once(replies, payloads)


# -- 5. timeouts ------------------------------------------------------------------

def test_a_call_to_a_master_without_workers_times_out():
    master = Master("lonely", **master_addresses())
    with running(master):
        with Client("lonely", master.db_address, timeout=TIMEOUT) as client:
            for call in (lambda: client.eval("lonely.tag", b"x", timeout=1.0),
                         lambda: list(client.job("lonely.tag", iter([b"x"] * 10), timeout=1.0))):
                t0 = time.monotonic()
                with pytest.raises(TimeoutError):
                    call()
                assert time.monotonic() - t0 <= 1.0 + TIMEOUT_SLACK


def test_a_client_or_worker_of_a_cache_nobody_serves_times_out():
    (db,) = tcp_addresses(1)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        Client("nobody", db, timeout=1.0)
    assert time.monotonic() - t0 <= 1.0 + TIMEOUT_SLACK
    worker = FastWorker("w", db, timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        worker.start()
    assert time.monotonic() - t0 <= 1.0 + TIMEOUT_SLACK


class SlowServer(Server):
    """At least 2 ms a call: a job of 5,000 takes 10 s or more, far longer
    than a stop or kill after its 300th reply needs to act."""

    def slow(self, payload):
        time.sleep(0.002)
        return payload


def test_stop_mid_job_makes_a_server_return_and_the_job_time_out():
    """stop() while a client keeps calls coming: start() returns, the job
    times out.  (Before 5127eb8 the executor looked at stop() only when its
    inbound ran dry: the job ran to its end.)"""
    pull, pub, db = tcp_addresses(3)
    replies = []
    stopped = None
    with running(SlowServer("srv", db, pull, pub)) as run:
        with Client("srv", db, timeout=TIMEOUT) as client:
            with pytest.raises(TimeoutError):
                for reply in client.job("srv.slow", (b"%d" % i for i in range(5000)),
                                        timeout=TIMEOUT_SLACK):
                    replies.append(reply)
                    if len(replies) == 300:
                        run.server.stop()
                        stopped = time.monotonic()
                    elif stopped and time.monotonic() - stopped > TIMEOUT_SLACK:
                        assert run.returned.is_set(), (
                            "start() still runs %s s after stop(): %d replies since"
                            % (TIMEOUT_SLACK, len(replies) - 300))
    assert stopped, "the job timed out before its 300th reply"
    assert len(replies) < 5000


def test_a_server_killed_mid_job_times_the_job_out_and_a_new_one_serves_the_client():
    """SIGKILL the server process mid-job: the job raises TimeoutError (it
    does not hang); a new Server on the same addresses answers the same
    Client object (the old job's calls still queued in its PUSH reach the
    new server first: they are answered and dropped as stale)."""
    pull, pub, db = tcp_addresses(3)
    replies = []
    proc = in_child(SlowServer, "srv", db, pull, pub)
    try:
        client = Client("srv", db, timeout=30)
        try:
            with pytest.raises(TimeoutError):
                for reply in client.job("srv.slow", (b"%d" % i for i in range(5000)),
                                        timeout=TIMEOUT_SLACK):
                    replies.append(reply)
                    if len(replies) == 300:
                        os.kill(proc.pid, signal.SIGKILL)
                        killed = time.monotonic()
            waited = time.monotonic() - killed
            assert 300 <= len(replies) < 5000
            assert len(set(replies)) == len(replies)
            assert waited <= TIMEOUT_SLACK + TIMEOUT_SLACK     # the job's timeout, and slack
        except BaseException:
            client.close()
            raise
    finally:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
        proc.process.join(5)
    with running(SlowServer("srv", db, pull, pub)), client:
        t0 = time.monotonic()
        attempts = Counter()

        def answered():
            attempts["n"] += 1
            try:
                return client.eval("srv.slow", b"again", timeout=1.0) == b"again"
            except TimeoutError:
                return False
        wait_for(answered, timeout=20, what="the client answered by the new server")
        seconds = time.monotonic() - t0
        payloads = [b"new%d" % i for i in range(500)]
        exactly_once(list(client.job("srv.slow", iter(payloads), timeout=TIMEOUT)), payloads)
    report("restart", replies_before_kill=len(replies), seconds_to_timeout="%.1f" % waited,
           evals_until_answered=attempts["n"], seconds_to_answer="%.1f" % seconds)


# -- 6. graceful shutdown ------------------------------------------------------------

def new_threads(before):
    return [t for t in threading.enumerate() if t not in before]


@pytest.mark.parametrize("kind", ["Server", "Master", "Pipeline", "Worker"])
def test_stop_returns_start_and_leaves_no_thread(kind):
    addresses = master_addresses()
    db, pull, pub = addresses["db_address"], addresses["pull_address"], addresses["pub_address"]
    master = None
    if kind == "Server":
        server = Tagger("srv", db, pull, pub)
    elif kind == "Pipeline":
        server = Pipeline("pipe", db, tcp_addresses(1)[0], pub, "up")
    else:
        master = Master("m", **addresses)
        server = master if kind == "Master" else FastWorker("fw", db, heartbeat=HEARTBEAT)
    with running(master) if kind == "Worker" else _nothing():
        before = set(threading.enumerate())     # (with the Worker's Master)
        with running(server, ready=(lambda s: True) if kind == "Pipeline" else None) as run:
            if kind == "Worker":
                with Client("m", db, timeout=TIMEOUT) as client:
                    until_answers(client, "m.tag")
            server.stop()
            run.join(timeout=STOP_WITHIN)   # start() returned (else ServerFailed)
            assert not [t for t in new_threads(before) if t is not run.thread], (
                "left behind: %s" % new_threads(before))
        wait_for(lambda: not new_threads(before), timeout=TIMEOUT, what="no thread left")


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _answers_cache(db, name):
    from pylm._cache import CacheClient
    cache = CacheClient(db, name, timeout=0.5)
    try:
        return cache.request("get", b"name") == name.encode()
    except TimeoutError:
        return False
    finally:
        cache.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_makes_start_return_in_a_child_process(sig):
    """Server, Master, Pipeline and Worker in child processes (spawned
    together): once each runs start(), the signal makes start() return and
    the process exit with code 0."""
    master = Master("m", **master_addresses())
    s_pull, s_pub, s_db, p_sub, p_pub, p_db = tcp_addresses(6)
    m2 = master_addresses()
    children = {}
    with running(master):
        try:
            children["Server"] = in_child(Tagger, "srv", s_db, s_pull, s_pub)
            children["Master"] = in_child(Master, "m2", **m2)
            children["Pipeline"] = in_child(Pipeline, "pipe", p_db, p_sub, p_pub, "up")
            children["Worker"] = in_child(FastWorker, "fw", master.db_address,
                                          heartbeat=HEARTBEAT)
            wait_for(lambda: _answers_cache(s_db, "srv"), timeout=30, what="the server")
            wait_for(lambda: _answers_cache(m2["db_address"], "m2"), timeout=30,
                     what="the master")
            wait_for(lambda: _answers_cache(p_db, "pipe"), timeout=30, what="the pipeline")
            with Client("m", master.db_address, timeout=TIMEOUT) as client:
                until_answers(client, "m.tag")
            assert all(c.is_alive() for c in children.values())
            for child in children.values():
                os.kill(child.pid, sig)
            for child in children.values():
                child.process.join(10)      # bounded: a child still alive has no exit code
            assert {k: c.exitcode for k, c in children.items()} == dict.fromkeys(children, 0)
        finally:
            for child in children.values():
                if child.is_alive():
                    os.kill(child.pid, signal.SIGKILL)
                    child.process.join(5)


class Recorder(Worker):
    """Records what it ran; the call of payload `hold_at` waits at the Gate
    `gate` until the test opens it."""

    def __init__(self, *args, hold_at, gate, **kwargs):
        super().__init__(*args, **kwargs)
        self.done = []
        self.hold_at = hold_at
        self.gate = gate

    def rec(self, payload):
        if payload == self.hold_at and not self.gate.wait():
            raise TimeoutError("the test never opened the gate")
        self.done.append(payload)
        return payload


def test_a_master_stopped_mid_job_delivers_what_its_workers_hold(monkeypatch):
    """stop() while the worker is held by the test in a call of the job
    (payload 400; the job's window sent it at once): the Master stops
    taking calls but waits for what its worker holds (the drain), and
    delivers it; the job then times out."""
    # the drain's bound (2 s), with slack for a loaded machine: it ends as
    # soon as the worker answered
    monkeypatch.setattr(_core, "DRAIN_MS", int((2.0 + TIMEOUT_SLACK) * 1000))
    master = Master("drain", **master_addresses())
    replies = []
    at_stop = {}
    with Gate() as gate:
        worker = Recorder("rec", master.db_address, heartbeat=HEARTBEAT, hold_at=b"400",
                          gate=gate)

        def stop_when_held():
            try:
                gate.wait_arrived(1, timeout=30)
                master.stop()
                at_stop.update(done=len(worker.done), replies=len(replies))
            finally:
                gate.open()

        with running(worker):
            with running(master) as run:
                with Client("drain", master.db_address, timeout=TIMEOUT) as client:
                    stopper = threading.Thread(target=stop_when_held, daemon=True)
                    stopper.start()
                    try:
                        with pytest.raises(TimeoutError):
                            for reply in client.job("drain.rec",
                                                    (b"%d" % i for i in range(5000)),
                                                    timeout=TIMEOUT_SLACK):
                                replies.append(reply)
                    finally:
                        gate.open()
                        stopper.join(TIMEOUT)
                run.join(timeout=2.0 + 2 * TIMEOUT_SLACK)   # start() returned after the drain
    assert at_stop, "the worker never reached the held call"
    stats = master.stats
    processed = worker.done
    after_stop = len(worker.done) - at_stop["done"]
    report("drain", replies_at_stop=at_stop["replies"], replies=len(replies),
           processed_after_stop=after_stop, **stats)
    assert len(set(replies)) == len(replies) < 5000
    # every message a worker ran was delivered, those run after stop() too
    # (at least the held one)
    assert Counter(replies) == Counter(processed)
    assert after_stop > 0 and b"400" in replies
    assert stats["to_workers"] == len(replies)
