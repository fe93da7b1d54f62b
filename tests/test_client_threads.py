"""The sync Client belongs to one thread: the first that calls it, while
that thread lives.  Another thread's call raises a clear RuntimeError (and
changes nothing); close() works from anywhere, except from another thread
during a call.  A Server in a thread, real sockets."""

import threading

import pytest

from pylm._testing import Gate
from pylm.clients import Client
from pylm.servers import Server

TIMEOUT = 10  # seconds for any call that should answer


class Upper(Server):
    gate = None

    def upper(self, payload):
        return payload.upper()

    def hold(self, payload):
        self.gate.wait()
        return payload


@pytest.fixture
def svc(addresses, serve):
    db, pull, pub = addresses(3)
    server = Upper("upper", db, pull, pub)
    serve(server)
    return server


def in_thread(fn):
    """fn() in another thread: what it returned or raised."""
    outcome = {}

    def run():
        try:
            outcome["value"] = fn()
        except BaseException as exc:    # reported to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="other")
    thread.start()
    thread.join(2 * TIMEOUT)
    assert not thread.is_alive()
    return outcome


@pytest.mark.parametrize("call", [
    lambda c: c.eval("upper.upper", b"x", timeout=TIMEOUT),
    lambda c: list(c.job("upper.upper", [b"x"], timeout=TIMEOUT)),
    lambda c: c.set(b"v", "k"),
    lambda c: c.get("k"),
    lambda c: c.delete("k"),
    lambda c: c.stats(timeout=TIMEOUT),
], ids=["eval", "job", "set", "get", "delete", "stats"])
def test_a_call_from_a_second_thread_raises_a_clear_error(svc, make_client, call):
    client = make_client("upper", svc.db_address, timeout=TIMEOUT)
    assert client.eval("upper.upper", b"mine", timeout=TIMEOUT) == b"MINE"
    outcome = in_thread(lambda: call(client))
    error = outcome.get("error")
    assert isinstance(error, RuntimeError), outcome
    message = str(error)
    assert "MainThread" in message and "'other'" in message
    assert "not thread-safe" in message
    assert "one Client per thread" in message and "pylm.futures.Executor" in message
    # its own thread still uses it, as if nothing happened
    assert client.eval("upper.upper", b"still", timeout=TIMEOUT) == b"STILL"
    assert list(client.job("upper.upper", [b"a", b"b"], timeout=TIMEOUT)) == [b"A", b"B"]


def test_a_client_made_in_one_thread_belongs_to_the_first_that_calls_it(svc):
    client = Client("upper", svc.db_address, timeout=TIMEOUT)
    called, release = threading.Event(), threading.Event()
    outcome = {}

    def first():
        outcome["value"] = client.eval("upper.upper", b"a", timeout=TIMEOUT)
        called.set()
        release.wait(2 * TIMEOUT)

    thread = threading.Thread(target=first, name="first")
    thread.start()
    try:
        assert called.wait(2 * TIMEOUT) and outcome == {"value": b"A"}
        with pytest.raises(RuntimeError, match="one Client per thread"):
            client.eval("upper.upper", b"b", timeout=TIMEOUT)
    finally:
        release.set()
        thread.join(2 * TIMEOUT)
    assert not thread.is_alive()
    try:
        # its thread ended: the next thread to call takes the client over
        assert client.eval("upper.upper", b"c", timeout=TIMEOUT) == b"C"
        assert isinstance(in_thread(lambda: client.eval("upper.upper", b"d")).get("error"),
                          RuntimeError)
    finally:
        client.close()          # from any thread


def test_a_job_started_in_one_thread_cannot_be_iterated_in_another(svc, make_client):
    client = make_client("upper", svc.db_address, timeout=TIMEOUT)
    replies = client.job("upper.upper", [b"a"], timeout=TIMEOUT)
    outcome = in_thread(lambda: next(replies))
    assert isinstance(outcome.get("error"), RuntimeError), outcome
    assert list(client.job("upper.upper", [b"c"], timeout=TIMEOUT)) == [b"C"]


def test_close_from_another_thread_is_allowed(svc):
    client = Client("upper", svc.db_address, timeout=TIMEOUT)
    assert client.eval("upper.upper", b"a", timeout=TIMEOUT) == b"A"
    assert in_thread(client.close) == {"value": None}
    assert client._push is None and client._sub is None


def test_close_from_another_thread_during_a_call_raises(svc, make_client):
    """Closing the sockets under a running call would make it fail inside
    libzmq: close() from another thread refuses while a call runs."""
    client = make_client("upper", svc.db_address, timeout=TIMEOUT)
    with Gate() as gate:
        svc.gate = gate
        outcome = {}

        def call():
            outcome["value"] = client.eval("upper.hold", b"x", timeout=2 * TIMEOUT)

        thread = threading.Thread(target=call, name="caller")
        thread.start()
        try:
            gate.wait_arrived(1)
            with pytest.raises(RuntimeError, match="in a call in thread 'caller'"):
                client.close()
        finally:
            gate.open()
            thread.join(3 * TIMEOUT)
    assert outcome == {"value": b"x"}
    # between calls it closes
    client.close()
    assert client._push is None and client._sub is None


def test_close_from_another_thread_during_a_job_raises(svc, make_client):
    client = make_client("upper", svc.db_address, timeout=TIMEOUT)
    replies = client.job("upper.upper", [b"a", b"b"], timeout=TIMEOUT)
    assert next(replies) == b"A"
    assert isinstance(in_thread(client.close).get("error"), RuntimeError)
    assert list(replies) == [b"B"]
    assert in_thread(client.close) == {"value": None}
    assert client._push is None and client._sub is None
