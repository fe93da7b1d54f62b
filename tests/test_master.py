"""Master and workers: the Master in a thread, workers in spawned child
processes (the main cluster) or in threads (hooks, MuxWorker, load
balancing), a real Client, real ZeroMQ sockets."""

import contextlib
import threading
from collections import Counter
from types import SimpleNamespace

import pytest

from pylm._testing import Gate, in_child, running, stop_all, tcp_addresses, wait_for
from pylm.clients import Client
from pylm.errors import RemoteError
from pylm.servers import Master, MuxWorker, Worker

TIMEOUT = 10  # seconds for any call that should answer


class EchoWorker(Worker):
    """Runs in a child process: pickled by reference, so module level."""

    def tag(self, payload):
        return payload

    def who(self, payload):
        return self.name.encode()

    def fail(self, payload):
        raise ValueError("worker failed on " + payload.decode())

    def maybe_fail(self, payload):
        if payload.startswith(b"bad"):
            raise ValueError("bad payload " + payload.decode())
        return payload


def master_addresses():
    pull, pub, wpull, wpush, db = tcp_addresses(5)
    return dict(pull_address=pull, pub_address=pub, worker_pull_address=wpull,
                worker_push_address=wpush, db_address=db)


@pytest.fixture(scope="module")
def cluster():
    """A Master in a thread and two EchoWorkers in child processes; ready
    when both workers have answered."""
    master = Master("master", **master_addresses())
    with running(master) as run:
        procs = []
        try:
            for name in ("worker-a", "worker-b"):
                procs.append(in_child(EchoWorker, name, master.db_address))
            with Client("master", master.db_address, timeout=TIMEOUT) as client:
                seen = set()

                def both_answered():
                    # enough calls to spread over both (calls may travel in batches)
                    seen.update(client.job("master.who", iter([b""] * 4000), timeout=20))
                    return seen == {b"worker-a", b"worker-b"}

                wait_for(both_answered, timeout=30, what="both workers answering")
            yield SimpleNamespace(master=master, run=run, db=master.db_address, procs=procs)
        finally:
            stop_all(procs)
            # SIGTERM made start() return: a clean exit, not death by signal
            assert [proc.exitcode for proc in procs] == [0, 0]


@pytest.fixture
def client(cluster, make_client):
    return make_client("master", cluster.db)


def test_eval_through_workers(client):
    assert client.eval("master.tag", b"hello", timeout=TIMEOUT) == b"hello"
    assert client.eval("master.who", b"", timeout=TIMEOUT) in (b"worker-a", b"worker-b")


def test_a_job_of_20000_every_reply_exactly_once(client):
    payloads = [b"%d" % i for i in range(20_000)]
    replies = list(client.job("master.tag", iter(payloads), timeout=30))
    assert len(replies) == len(payloads)
    assert Counter(replies) == Counter(payloads)


def test_a_raising_worker_method_reaches_the_caller(cluster, client):
    with pytest.raises(RemoteError) as info:
        client.eval("master.fail", b"x", timeout=TIMEOUT)
    assert info.value.remote_type == "ValueError"
    assert info.value.remote_message == "worker failed on x"
    assert "Traceback" in info.value.remote_traceback
    # a job that meets an error raises it; the cluster, and the next job, go on
    payloads = [b"ok%d" % i for i in range(500)]
    with pytest.raises(RemoteError):
        list(client.job("master.maybe_fail", iter(payloads[:250] + [b"bad"] + payloads[250:]),
                        timeout=TIMEOUT))
    replies = list(client.job("master.maybe_fail", iter(payloads), timeout=TIMEOUT))
    assert Counter(replies) == Counter(payloads)
    assert all(proc.is_alive() for proc in cluster.procs)


@pytest.mark.parametrize("name", ["start", "stop", "set", "get", "delete", "handle_stream",
                                  "_fetch_addresses", "_config", "missing"])
def test_only_public_worker_methods_are_callable(cluster, client, name):
    with pytest.raises(RemoteError) as info:
        client.eval("master." + name, b"x", timeout=TIMEOUT)
    assert info.value.remote_type == "LookupError", info.value
    assert client.eval("master.tag", b"still", timeout=TIMEOUT) == b"still"
    assert all(proc.is_alive() for proc in cluster.procs)


def test_worker_cache_operations_on_the_master_cache(cluster, client):
    worker = EchoWorker("cache-user", cluster.db)
    try:
        assert worker.set(b"value", "worker-key") == "worker-key"
        assert worker.get("worker-key") == b"value"
        assert client.get("worker-key") == b"value"
        assert cluster.master.cache.get("worker-key") == b"value"
        key = worker.set(b"auto")
        assert key and client.get(key) == b"auto"
        assert worker.delete("worker-key") == "worker-key"
        assert worker.get("worker-key") == b""
        assert "worker-key" not in cluster.master.cache
        with pytest.raises(TypeError):
            worker.set("not bytes", "k")
    finally:
        worker._cache_client.close()


def test_worker_needs_a_db_address():
    with pytest.raises(ValueError):
        Worker()
    with pytest.raises(ValueError):
        Worker("named")
    with pytest.raises(ValueError):
        EchoWorker(name="named", db_address="")


# -- masters and workers in threads -------------------------------------------

@contextlib.contextmanager
def master_with_workers(master, *workers):
    with running(master) as run:
        with contextlib.ExitStack() as stack:
            for worker in workers:
                stack.enter_context(running(worker))
            with Client(master.name, master.db_address, timeout=TIMEOUT) as client:
                yield client, run


class Triple(MuxWorker):
    def three(self, payload):
        for i in range(3):
            yield payload + b"-%d" % i

    def none_between(self, payload):
        yield b"first"
        yield None  # skipped
        yield b"second"


def test_mux_worker_yields_several_replies():
    master = Master("mux", **master_addresses())
    worker = Triple("triple", master.db_address)
    with master_with_workers(master, worker) as (client, _):
        assert client.eval("mux.three", b"x", messages=3, timeout=TIMEOUT) == [
            b"x-0", b"x-1", b"x-2"]
        assert client.eval("mux.none_between", b"", messages=2, timeout=TIMEOUT) == [
            b"first", b"second"]
        # and single replies after that
        assert client.eval("mux.three", b"y", messages=3, timeout=TIMEOUT) == [
            b"y-0", b"y-1", b"y-2"]


class Named(Worker):
    """Answers its name; while `hold` (a Gate) is set, each call waits there."""

    def __init__(self, name, db_address, **kwargs):
        super().__init__(name, db_address, **kwargs)
        self.handled = 0
        self.hold = None

    def who(self, payload):
        self.handled += 1
        if self.hold is not None and not self.hold.wait():
            raise TimeoutError("the test never opened the gate")
        return self.name.encode()


def test_a_held_worker_gets_no_more_than_its_credit_the_other_takes_the_rest():
    """Least-loaded dispatch by credit: while one worker is held in a call
    by the test, it has at most its credit (2) of a job, and the other
    worker must run all the rest.  Round robin would give the held worker
    half, and the job could not get past it."""
    master = Master("balance", **master_addresses())
    slow = Named("slow", master.db_address, credit=2)
    fast = Named("fast", master.db_address)
    n = 400
    with master_with_workers(master, slow) as (client, _):
        assert client.eval("balance.who", b"", timeout=TIMEOUT) == b"slow"
        with running(fast):
            # idle, the fast worker has the most credit: it answers once up
            wait_for(lambda: client.eval("balance.who", b"", timeout=TIMEOUT) == b"fast",
                     timeout=TIMEOUT, what="the fast worker answering")
            base = fast.handled
            with Gate() as gate:

                def release():
                    try:
                        wait_for(lambda: fast.handled - base >= n - slow.credit, timeout=60,
                                 what="the fast worker running all but the held calls")
                    finally:
                        gate.open()

                slow.hold = gate
                opener = threading.Thread(target=release, daemon=True)
                opener.start()
                try:
                    counts = Counter(client.job("balance.who", iter([b""] * n), timeout=60))
                finally:
                    gate.open()
                    opener.join(TIMEOUT)
                    slow.hold = None
    assert sum(counts.values()) == n
    assert set(counts) <= {b"fast", b"slow"}
    assert counts[b"slow"] <= slow.credit, counts
    assert counts[b"fast"] >= n - slow.credit, counts


# -- Master hooks -------------------------------------------------------------

class Plain(Worker):
    def tag(self, payload):
        return payload


class ScatterMaster(Master):
    def scatter(self, message):
        payload = message.payload
        for i in range(2):
            message.payload = payload + b"-part%d" % i
            yield message


class GatherMaster(Master):
    def gather(self, message):
        yield self.change_payload(message, b"gathered:" + message.payload)


class StreamMaster(Master):
    def handle_stream(self, message):
        message.payload = b"stream:" + message.payload
        return message.client, message


@pytest.mark.parametrize("cls, payload, messages, expected", [
    (ScatterMaster, b"x", 2, [b"x-part0", b"x-part1"]),
    (GatherMaster, b"x", 1, b"gathered:x"),
    (StreamMaster, b"x", 1, b"stream:x"),
])
def test_master_hooks(cls, payload, messages, expected):
    master = cls("hooked", **master_addresses())
    with master_with_workers(master, Plain("plain", master.db_address)) as (client, _):
        result = client.eval("hooked.tag", payload, messages=messages, timeout=TIMEOUT)
        if messages > 1:
            result = sorted(result)
        assert result == expected
        # the hook runs for every message of a job, and the Master goes on
        if messages == 1:
            replies = list(client.job("hooked.tag", (b"%d" % i for i in range(100)),
                                      timeout=TIMEOUT))
            prefix = expected[:-len(payload)]
            assert Counter(replies) == Counter(prefix + b"%d" % i for i in range(100))
        assert client.eval("hooked.tag", payload, messages=messages, timeout=TIMEOUT)


def test_a_job_through_scatter_gets_every_reply():
    master = ScatterMaster("hooked", **master_addresses())
    with master_with_workers(master, Plain("plain", master.db_address)) as (client, _):
        replies = list(client.job("hooked.tag", (b"%d" % i for i in range(100)),
                                  messages=200, timeout=TIMEOUT))
        assert Counter(replies) == Counter(b"%d-part%d" % (i, j)
                                           for i in range(100) for j in range(2))


def test_a_job_through_a_mux_worker_gets_every_reply():
    master = Master("mux", **master_addresses())
    with master_with_workers(master, Triple("triple", master.db_address)) as (client, _):
        replies = list(client.job("mux.three", (b"%d" % i for i in range(100)),
                                  messages=300, timeout=TIMEOUT))
        assert Counter(replies) == Counter(b"%d-%d" % (i, j)
                                           for i in range(100) for j in range(3))


def test_change_payload():
    from pylm.parts.messages_pb2 import PalmMessage

    master = Master("m", **master_addresses())
    message = PalmMessage(pipeline="p", client="c", function="m.f", payload=b"old")
    assert master.change_payload(message, b"new") is message
    assert message.payload == b"new"
    assert (message.pipeline, message.client, message.function) == ("p", "c", "m.f")
