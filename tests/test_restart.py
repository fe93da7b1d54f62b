"""A Master (or, opted in, a Server) SIGKILLed mid-call and started again
with the same arguments: the client sends again every call without a reply
once the new server welcomes it, and the caller gets each reply exactly
once (README, "Reliability").  Real processes: the Master and two workers
are spawned children; the workers are not restarted."""

import contextlib
import os
import signal
import threading
import time
from collections import Counter

import pytest

from pylm._testing import Gate, in_child, stop_all, tcp_addresses, wait_for
from pylm.clients import Client
from pylm.servers import Master, Server, Worker

MESSAGES = 20000
WORKER_TIMEOUT = 3.0
#: seconds each reply of a job may take (the restart included)
REPLY_TIMEOUT = 30


class EchoWorker(Worker):
    """Runs in a child process: pickled by reference, so module level."""

    def echo(self, payload):
        return payload


class GatedServer(Server):
    """Holds each call at `gate` (a pylm._testing.Gate) before answering."""

    gate = None

    def held(self, payload):
        self.gate.wait(who=payload.decode())
        return payload


class _GatedServerChild(GatedServer):
    """GatedServer whose gate comes as the last positional argument (a
    child process builds it from pickled arguments)."""

    def __init__(self, name, db, pull, pub, gate):
        super().__init__(name, db, pull, pub)
        self.gate = gate


def master_args(fixed_router):
    """The Master's arguments; its worker ROUTER on a fixed port, or on an
    ephemeral one (another after each restart: the workers find it in the
    cache)."""
    pull, pub, wpull, wpush, db, router = tcp_addresses(6)
    kwargs = dict(worker_timeout=WORKER_TIMEOUT)
    if fixed_router:
        kwargs.update(worker_router_address=router)
    return ("m", pull, pub, wpull, wpush, db), kwargs


def start_master(args, kwargs):
    return in_child(Master, *args, **kwargs)


def kill(proc):
    """SIGKILL a child by PID and reap it."""
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.process.join(10)
    assert not proc.is_alive()


class Cluster:
    """A Master in a child process and two EchoWorkers in theirs."""

    def __init__(self, fixed_router):
        self.args, self.kwargs = master_args(fixed_router)
        self.db = self.args[5]
        self.master = start_master(self.args, self.kwargs)
        self.workers = [in_child(EchoWorker, "w%d" % i, self.db) for i in range(2)]

    def restart_master(self):
        """SIGKILL the Master and start it again with the same arguments."""
        kill(self.master)
        self.master = start_master(self.args, self.kwargs)

    def close(self):
        procs = self.workers + ([self.master] if self.master.is_alive() else [])
        stop_all(procs)


@contextlib.contextmanager
def answering_cluster(fixed_router):
    c = Cluster(fixed_router)
    try:
        with Client("m", c.db, timeout=REPLY_TIMEOUT) as client:
            wait_for(lambda: client.eval("m.echo", b"up", timeout=REPLY_TIMEOUT) == b"up",
                     timeout=REPLY_TIMEOUT, what="the cluster answering")
        yield c
    finally:
        c.close()


@pytest.fixture(params=["ephemeral", "fixed"])
def cluster(request):
    """A cluster whose Master's worker ROUTER port is ephemeral, or fixed."""
    with answering_cluster(request.param == "fixed") as c:
        yield c


@pytest.fixture
def ephemeral_cluster():
    with answering_cluster(False) as c:
        yield c


def run_job(cluster, kill_at, payloads, **job_kw):
    """Run a job of `payloads` through the cluster's Master, restarting the
    Master after each count of replies in `kill_at`.  Returns the replies
    and the monotonic time of the last restart."""
    replies = []
    restarted = None
    kill_at = set(kill_at)
    with Client("m", cluster.db, timeout=REPLY_TIMEOUT) as client:
        for reply in client.job("m.echo", iter(payloads), timeout=REPLY_TIMEOUT, **job_kw):
            replies.append(reply)
            if len(replies) in kill_at:
                cluster.restart_master()
                restarted = time.monotonic()
    return replies, restarted


def assert_exactly_once(replies, payloads):
    counts = Counter(replies)
    missing = [p for p in payloads if p not in counts]
    twice = [p for p, n in counts.items() if n > 1]
    assert not missing and not twice, (
        "%d replies: %d payloads missing (%r...), %d more than once (%r...)"
        % (len(replies), len(missing), missing[:3], len(twice), twice[:3]))
    assert len(replies) == len(payloads)


def test_a_master_restarted_at_30_percent_of_a_job_loses_no_call(cluster):
    payloads = [b"%d" % i for i in range(MESSAGES)]
    replies, restarted = run_job(cluster, [MESSAGES * 3 // 10], payloads)
    finished = time.monotonic()
    assert restarted is not None
    assert_exactly_once(replies, payloads)
    # a timeout with slack, not a speed claim
    assert finished - restarted <= WORKER_TIMEOUT + 10


def test_a_master_restarted_twice_in_one_job_loses_no_call(cluster):
    payloads = [b"%d" % i for i in range(MESSAGES)]
    replies, restarted = run_job(cluster, [MESSAGES * 3 // 10, MESSAGES * 6 // 10], payloads)
    assert_exactly_once(replies, payloads)
    assert time.monotonic() - restarted <= WORKER_TIMEOUT + 10


def test_a_master_that_never_comes_back_ends_the_job_with_timeout_error(ephemeral_cluster):
    cluster = ephemeral_cluster
    payloads = [b"%d" % i for i in range(MESSAGES)]
    replies = []
    timeout = 3
    with Client("m", cluster.db, timeout=REPLY_TIMEOUT) as client:
        with pytest.raises(TimeoutError):
            for reply in client.job("m.echo", iter(payloads), timeout=timeout):
                replies.append(reply)
                if len(replies) == MESSAGES * 3 // 10:
                    kill(cluster.master)
                    killed = time.monotonic()
        assert time.monotonic() - killed <= timeout + 10
    assert len(replies) < MESSAGES
    assert len(set(replies)) == len(replies)


def _restart_server_during_eval(resend, timeout):
    """An eval held in a Server (at a gate) while the Server is SIGKILLed
    and started again; returns what the eval returned or raised."""
    pull, pub, db = tcp_addresses(3)
    outcome = {}
    with Gate() as gate:
        proc = in_child(_GatedServerChild, "s", db, pull, pub, gate)
        try:
            client = Client("s", db, timeout=REPLY_TIMEOUT, resend=resend)

            def call():
                try:
                    outcome["reply"] = client.eval("s.held", b"once", timeout=timeout)
                except BaseException as exc:     # handed to the test's thread
                    outcome["error"] = exc
                finally:
                    client.close()

            caller = threading.Thread(target=call)
            caller.start()
            gate.wait_arrived(1)            # the call is in the server
            kill(proc)
            proc = in_child(_GatedServerChild, "s", db, pull, pub, gate)
            if resend:
                gate.wait_arrived(2)        # sent again to the new server
            gate.open()
            caller.join(30)
            assert not caller.is_alive()
            return outcome, gate.who
        finally:
            if proc.is_alive():
                stop_all([proc])


def test_an_opted_in_eval_survives_a_server_restart():
    outcome, who = _restart_server_during_eval(resend=True, timeout=REPLY_TIMEOUT)
    assert outcome == {"reply": b"once"}
    assert who == ["once", "once"]


def test_an_eval_to_a_server_is_not_sent_again_by_default():
    outcome, who = _restart_server_during_eval(resend=None, timeout=4)
    assert isinstance(outcome.get("error"), TimeoutError)
    assert who == ["once"]
