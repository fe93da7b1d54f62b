"""pylm.futures.Executor against a Master with two worker processes (and a
Server process for the calls held at a gate): ordered map, submit from many
threads, errors on futures, cancellation, shutdown, timeouts."""

import concurrent.futures
import itertools
import threading

import pytest

from pylm._testing import Gate, in_child, stop_all, tcp_addresses, wait_for
from pylm.clients import Client
from pylm.errors import RemoteError
from pylm.futures import Executor
from pylm.servers import Master, Server, Worker

TIMEOUT = 30  # seconds for anything that should answer


class ReverseWorker(Worker):
    """Runs in a child process (module level: pickled by reference)."""

    def rev(self, payload):
        return payload[::-1]

    def who(self, payload):
        return self.name.encode()

    def fail(self, payload):
        raise ValueError("refused " + payload.decode())

    def picky(self, payload):
        if payload.startswith(b"bad"):
            raise ValueError("bad payload " + payload.decode())
        return payload[::-1]


class HeldServer(Server):
    """A Server whose `held` calls wait at `gate` (arriving as their
    payload) before answering with it; `rev` answers at once."""

    def __init__(self, *args, gate=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = gate

    def held(self, payload):
        if not self.gate.wait(who=payload.decode()):
            raise TimeoutError("the test never opened the gate")
        return payload

    def rev(self, payload):
        return payload[::-1]


@pytest.fixture(scope="module")
def cluster():
    """A Master and two ReverseWorkers, each a process; yields the db
    address once both workers answer."""
    pull, pub, wpull, wpush, db = tcp_addresses(5)
    procs = [in_child(Master, "master", pull, pub, wpull, wpush, db)]
    try:
        for name in ("worker-a", "worker-b"):
            procs.append(in_child(ReverseWorker, name, db))
        with Client("master", db, timeout=TIMEOUT) as client:
            seen = set()

            def both_answered():
                seen.update(client.job("master.who", iter([b""] * 4000), timeout=TIMEOUT))
                return seen == {b"worker-a", b"worker-b"}

            wait_for(both_answered, timeout=TIMEOUT, what="both workers answering")
        yield db
    finally:
        stop_all(procs)


@pytest.fixture
def executor(cluster):
    ex = Executor("master", cluster, timeout=TIMEOUT)
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def held():
    """A HeldServer process and its gate: yields (gate, db address)."""
    db, pull, pub = tcp_addresses(3)
    with Gate() as gate:
        proc = in_child(HeldServer, "held", db, pull, pub, gate=gate)
        try:
            with Client("held", db, timeout=TIMEOUT) as client:
                assert client.eval("held.rev", b"ab", timeout=TIMEOUT) == b"ba"
            yield gate, db
        finally:
            gate.open()
            proc.stop()


def test_map_of_100000_from_one_thread_in_order(executor):
    payloads = [b"%06d" % i for i in range(100_000)]
    assert list(executor.map("master.rev", payloads, timeout=120)) == [p[::-1] for p in payloads]


def test_map_on_an_endless_iterable_takes_payloads_only_a_window_ahead(executor):
    taken = itertools.count()
    payloads = (b"%d" % next(taken) for _ in itertools.count())
    replies = executor.map("master.rev", payloads, timeout=TIMEOUT)
    first = list(itertools.islice(replies, 5000))
    assert first == [(b"%d" % i)[::-1] for i in range(5000)]
    replies.close()
    # the group being read, then twice the window (2000) plus the group
    # being filled: never the whole stream
    assert next(taken) <= 5000 + 256 + 2 * 2000 + 256
    assert executor.submit("master.rev", b"after").result(TIMEOUT) == b"retfa"


def test_submit_from_8_threads_at_once(executor):
    per_thread = 2000
    barrier = threading.Barrier(8)
    outcome = {}

    def run(t):
        try:
            barrier.wait(TIMEOUT)
            futures = [executor.submit("master.rev", b"%d-%d" % (t, i)) for i in range(per_thread)]
            outcome[t] = [f.result(TIMEOUT) for f in futures]
        except Exception as exc:    # reported below
            outcome[t] = exc

    threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(2 * TIMEOUT)
    assert not any(thread.is_alive() for thread in threads)
    for t in range(8):
        assert outcome[t] == [(b"%d-%d" % (t, i))[::-1] for i in range(per_thread)]


def test_a_raising_method_sets_remote_error_on_its_future(executor):
    bad = executor.submit("master.fail", b"this")
    good = executor.submit("master.rev", b"that")
    assert good.result(TIMEOUT) == b"taht"
    exc = bad.exception(TIMEOUT)
    assert isinstance(exc, RemoteError)
    assert exc.remote_type == "ValueError" and "refused this" in exc.remote_message
    with pytest.raises(RemoteError):
        bad.result()


def test_map_raises_the_error_of_a_call_when_it_gets_to_it(executor):
    payloads = [b"ok%d" % i for i in range(600)]
    payloads[450] = b"bad one"
    replies = executor.map("master.picky", payloads, timeout=TIMEOUT)
    got = []
    with pytest.raises(RemoteError, match="bad payload bad one"):
        for reply in replies:
            got.append(reply)
    assert got == [p[::-1] for p in payloads[:450]]
    assert executor.submit("master.rev", b"next").result(TIMEOUT) == b"txen"


def test_futures_work_with_as_completed_and_wait(executor):
    futures = {executor.submit("master.rev", b"%d" % i): i for i in range(300)}
    seen = {}
    for future in concurrent.futures.as_completed(futures, timeout=TIMEOUT):
        seen[futures[future]] = future.result()
    assert seen == {i: (b"%d" % i)[::-1] for i in range(300)}
    more = [executor.submit("master.rev", b"x%d" % i) for i in range(50)]
    done, not_done = concurrent.futures.wait(more, timeout=TIMEOUT)
    assert len(done) == 50 and not not_done


def test_payloads_are_checked_in_the_caller(executor):
    with pytest.raises(TypeError):
        executor.submit("master.rev", "text")
    with pytest.raises(TypeError):
        list(executor.map("master.rev", [b"a", 42]))
    assert executor.submit("master.rev", bytearray(b"ab")).result(TIMEOUT) == b"ba"


def test_submit_and_map_after_shutdown_raise_runtime_error(cluster):
    with Executor("master", cluster, timeout=TIMEOUT) as ex:
        assert ex.submit("master.rev", b"abc").result(TIMEOUT) == b"cba"
    assert not ex._thread.is_alive()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit("master.rev", b"abc")
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.map("master.rev", [b"abc"])
    ex.shutdown()                   # again: nothing happens


def test_shutdown_cancels_pending_futures_and_resolves_running_ones(held):
    gate, db = held
    ex = Executor("held", db, timeout=TIMEOUT, window=2)
    try:
        futures = [ex.submit("held.held", b"call-%d" % i) for i in range(10)]
        gate.wait_arrived(1)
        # two calls went (the window), the rest wait in the executor
        wait_for(lambda: sum(f.running() for f in futures) == 2, timeout=TIMEOUT,
                 what="two calls running")
        ex.shutdown(wait=False, cancel_futures=True)
        wait_for(lambda: all(f.cancelled() for f in futures[2:]), timeout=TIMEOUT,
                 what="the pending calls cancelled")
        assert not futures[0].done() and not futures[1].done()
        gate.open()
        assert [f.result(TIMEOUT) for f in futures[:2]] == [b"call-0", b"call-1"]
        ex.shutdown(wait=True)
        assert not ex._thread.is_alive()
        assert gate.who == ["call-0", "call-1"]     # no cancelled call was sent
    finally:
        gate.open()
        ex.shutdown(wait=True)


def test_a_future_cancelled_before_it_is_sent_is_never_sent(held):
    gate, db = held
    with Executor("held", db, timeout=TIMEOUT, window=1) as ex:
        first = ex.submit("held.held", b"first")
        gate.wait_arrived(1)
        second = ex.submit("held.held", b"second")
        assert second.cancel()
        third = ex.submit("held.held", b"third")
        gate.open()
        assert first.result(TIMEOUT) == b"first"
        assert third.result(TIMEOUT) == b"third"
        assert second.cancelled()
    assert gate.who == ["first", "third"]


def test_map_timeout_raises_timeout_error(held):
    gate, db = held
    with Executor("held", db, timeout=TIMEOUT) as ex:
        replies = ex.map("held.held", [b"slow"], timeout=0.5)
        with pytest.raises(TimeoutError):
            next(replies)
        gate.open()
        # the late reply of the dropped call reaches no later call
        assert ex.submit("held.rev", b"late").result(TIMEOUT) == b"etal"
        assert list(ex.map("held.held", [b"a", b"b"], timeout=TIMEOUT)) == [b"a", b"b"]


def test_call_timeout_fails_the_future_and_the_late_reply_is_dropped(held):
    gate, db = held
    with Executor("held", db, timeout=TIMEOUT, call_timeout=0.5) as ex:
        slow = ex.submit("held.held", b"slow")
        assert isinstance(slow.exception(TIMEOUT), TimeoutError)
        gate.open()
        assert [ex.submit("held.held", b"n%d" % i).result(TIMEOUT) for i in range(3)] == \
            [b"n0", b"n1", b"n2"]
        assert ex._table.stale == 1     # the late reply, dropped


def test_a_wrong_server_name_raises_in_the_constructor(cluster):
    with pytest.raises(ValueError):
        Executor("not-master", cluster, timeout=TIMEOUT)


def test_large_payloads_are_lent_and_every_buffer_comes_back(cluster):
    from pylm_core import _core
    from test_resources import balanced_again, outstanding

    before = outstanding()
    start = _core.resource_counts()
    payloads = [b"%d:" % i + b"y" * (70_000 if i % 4 == 0 else 10) for i in range(400)]
    with Executor("master", cluster, timeout=TIMEOUT) as ex:
        assert list(ex.map("master.rev", payloads, timeout=TIMEOUT)) == \
            [p[::-1] for p in payloads]
        big = b"z" * 100_000 + b"!"
        assert ex.submit("master.rev", big).result(TIMEOUT) == big[::-1]
    # the large ones went lent (no copy), and came back
    assert _core.resource_counts()["payloads_lent"] >= start["payloads_lent"] + 101
    balanced_again(before)


def test_an_executor_dropped_without_shutdown_ends_its_thread(cluster):
    import gc

    ex = Executor("master", cluster, timeout=TIMEOUT)
    future = ex.submit("master.rev", b"dropped")
    thread = ex._thread
    del ex
    gc.collect()
    assert future.result(TIMEOUT) == b"deppord"      # answered all the same
    thread.join(TIMEOUT)
    assert not thread.is_alive()


def test_an_executor_takes_the_clients_security_keywords(tmp_path):
    import shutil

    from pylm._testing import running
    from pylm.security import generate_keys

    made = {name: generate_keys(str(tmp_path / name), name)
            for name in ("server", "client", "outsider")}
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    for name in ("server", "client"):
        shutil.copy(made[name][0], authorized)
    server_public, server_secret = made["server"]
    good = dict(server_key=server_public, secret_key=made["client"][1])
    db, pull, pub = tcp_addresses(3)
    server = HeldServer("curve", db, pull, pub, secret_key=server_secret,
                        authorized_keys=str(authorized))
    with running(server, client_kwargs=good):
        with Executor("curve", db, timeout=TIMEOUT, **good) as ex:
            assert ex.submit("curve.rev", b"secret").result(TIMEOUT) == b"terces"
            payloads = [b"%d" % i for i in range(1000)]
            assert list(ex.map("curve.rev", payloads, timeout=TIMEOUT)) == \
                [p[::-1] for p in payloads]
        with pytest.raises(TimeoutError):     # refused at the handshake
            Executor("curve", db, timeout=1.0, server_key=server_public,
                     secret_key=made["outsider"][1])
