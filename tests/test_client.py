"""Client against a real Server (in a thread) over real ZeroMQ sockets."""

import itertools
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest

from pylm._testing import Gate
from pylm.clients import Client
from pylm.servers import Server

TIMEOUT = 10  # seconds for any call that should answer


class Svc(Server):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def upper(self, payload):
        return payload.upper()

    def count(self, payload):
        self.calls += 1
        return b"%d" % self.calls

    def nothing(self, payload):
        return None  # never answers

    def late(self, payload):
        """Answers once the test opens self.gate (a pylm._testing.Gate)."""
        if not self.gate.wait():
            raise TimeoutError("the test never opened the gate")
        return b"late"


@pytest.fixture
def svc(addresses, serve):
    db, pull, pub = addresses(3)
    server = Svc("svc", db, pull, pub)
    serve(server)
    return server


@pytest.fixture
def client(svc, make_client):
    return make_client("svc", svc.db_address)


def test_wrong_server_name_is_a_value_error(svc):
    with pytest.raises(ValueError):
        Client("not-svc", svc.db_address, timeout=TIMEOUT)


def test_a_client_of_nobody_times_out(addresses):
    (db,) = addresses(1)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        Client("svc", db, timeout=0.5)
    assert time.monotonic() - started < 0.5 + 5       # a timeout, with slack for load


@pytest.mark.parametrize("payload", ["text", 42, None, [1, 2], 1.5])
def test_non_bytes_payload_is_a_type_error_before_sending(svc, client, payload):
    with pytest.raises(TypeError):
        client.eval("svc.count", payload, timeout=TIMEOUT)
    # nothing reached the server: the next call is its first
    assert client.eval("svc.count", b"", timeout=TIMEOUT) == b"1"
    assert svc.calls == 1


def test_non_bytes_item_of_a_job_is_a_type_error(svc, client):
    with pytest.raises(TypeError):
        list(client.job("svc.upper", iter([b"a", "b"]), timeout=TIMEOUT))
    assert client.eval("svc.upper", b"next", timeout=TIMEOUT) == b"NEXT"


@pytest.mark.parametrize("payload", [
    memoryview(b"a memoryview"),
    bytearray(b"a bytearray"),
    np.arange(16, dtype=np.uint8),
    np.linspace(0.0, 1.0, 5),
], ids=["memoryview", "bytearray", "numpy-uint8", "numpy-float64"])
def test_bytes_like_payloads(client, payload):
    expected = bytes(memoryview(payload).cast("B"))
    assert client.eval("svc.echo", payload, timeout=TIMEOUT) == expected
    assert list(client.job("svc.echo", iter([payload]), timeout=TIMEOUT)) == [expected]


def test_eval_timeout_then_the_client_still_works(client):
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        client.eval("svc.nothing", b"", timeout=0.5)
    assert time.monotonic() - started < 0.5 + 5       # a timeout, with slack for load
    assert client.eval("svc.upper", b"next", timeout=TIMEOUT) == b"NEXT"


@pytest.fixture
def gate(svc):
    """svc.late is held at this gate until the test opens it."""
    with Gate() as gate:
        svc.gate = gate
        yield gate


def test_a_late_reply_is_not_returned_to_the_next_call(client, gate):
    with pytest.raises(TimeoutError):
        client.eval("svc.late", b"", timeout=0.2)     # held: no reply can come
    gate.wait_arrived(1)
    gate.open()
    # the server is serial: the late reply is published before this one
    assert client.eval("svc.upper", b"next", timeout=TIMEOUT) == b"NEXT"
    assert client.eval("svc.upper", b"then", timeout=TIMEOUT) == b"THEN"


def test_a_late_reply_is_not_returned_to_the_next_call_with_session(svc, make_client, gate):
    client = make_client("svc", svc.db_address, session="my-session")
    with pytest.raises(TimeoutError):
        client.eval("svc.late", b"", timeout=0.2)     # held: no reply can come
    gate.wait_arrived(1)
    gate.open()
    assert client.eval("svc.upper", b"next", timeout=TIMEOUT) == b"NEXT"


_WAIT_FOREVER = """
import sys
from pylm.clients import Client
client = Client("svc", sys.argv[1], timeout=10)
try:
    client.eval("svc.late", b"", timeout=None)
except KeyboardInterrupt:
    sys.exit(3)
sys.exit(0)
"""


def test_sigint_interrupts_an_eval_that_waits_forever(svc, gate):
    """The reply wait is a blocking receive (no timeout here): a signal
    still ends it, with the handler's exception (KeyboardInterrupt)."""
    child = subprocess.Popen([sys.executable, "-c", _WAIT_FOREVER, svc.db_address])
    try:
        gate.wait_arrived(1)            # the call reached the server: the child waits
        os.kill(child.pid, signal.SIGINT)
        assert child.wait(timeout=30) == 3
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        gate.open()


def test_context_manager_and_idempotent_close(svc):
    with Client("svc", svc.db_address, timeout=TIMEOUT) as client:
        assert client.eval("svc.upper", b"in", timeout=TIMEOUT) == b"IN"
    client.close()
    client.clean()
    client.close()
    # a client that never called anything
    other = Client("svc", svc.db_address, timeout=TIMEOUT)
    other.clean()
    other.clean()
    other.close()


def test_this_config_with_explicit_addresses(svc, make_client):
    client = make_client("svc", svc.db_address, svc.pull_address, svc.pub_address,
                         this_config=True)
    assert client.eval("svc.upper", b"explicit", timeout=TIMEOUT) == b"EXPLICIT"


def test_function_as_a_list(client):
    assert client.eval(["svc.upper"], b"list", timeout=TIMEOUT) == b"LIST"
    assert client.eval(("svc.upper",), b"tuple", timeout=TIMEOUT) == b"TUPLE"
    assert list(client.job(["svc.upper"], iter([b"job"]), timeout=TIMEOUT)) == [b"JOB"]


def test_a_job_of_10000_twice_on_the_same_client(client):
    payloads = [b"%d" % i for i in range(10_000)]
    first = list(client.job("svc.echo", iter(payloads), timeout=30))
    assert len(first) == len(payloads)
    assert Counter(first) == Counter(payloads)
    second = list(client.job("svc.echo", iter(payloads), messages=len(payloads), timeout=30))
    assert len(second) == len(payloads)
    assert Counter(second) == Counter(payloads)


def test_a_job_with_an_endless_generator_and_messages(client):
    produced = itertools.count()
    replies = list(client.job("svc.echo", (b"%d" % next(produced) for _ in itertools.repeat(None)),
                              messages=50, timeout=TIMEOUT))
    assert len(replies) == 50
    assert len(set(replies)) == 50
    sent = next(produced)
    # the job stopped: the generator is not pulled any more (job() pulls it
    # only in this thread, from inside the iteration)
    assert next(produced) == sent + 1
    # replies to the job's other messages are not returned to later calls
    assert client.eval("svc.upper", b"after", timeout=TIMEOUT) == b"AFTER"
    assert list(client.job("svc.upper", iter([b"x", b"y"]), timeout=TIMEOUT)) in (
        [b"X", b"Y"], [b"Y", b"X"])
