"""Stage links: a stage of ours sends batches to the next stages when all of
them are ours, single envelopes when any is not (a pylm 0.14 stage,
subscribed to the plain topic only), and switches as subscribers come and
go without losing, repeating or reordering a message
(pylm_core/subscriptions.pyx, "Stage links").

The first stage is a Server or a Master (with a worker), pipelined.  The
servers run in threads (pylm._testing.running); the other subscribers
of the first stage's publisher are raw SUB sockets here, subscribed as a
stage of ours subscribes (both topics) or as a pylm 0.14 stage does (the
plain topic only), reading what the publisher sends them frame by frame.
tests/test_interop.py runs real pylm 0.14 stages next to ours.
"""

import contextlib
import time

import pytest
import zmq

from palm_reference import unbatch
from pylm._testing import running, tcp_addresses
from pylm.clients import Client
from pylm.parts.messages_pb2 import PalmMessage
from pylm.servers import Master, Pipeline, Server, Worker
from pylm_core import _core

TIMEOUT = 10.0          # seconds for anything that should come
FUNCTION = ["first.tag", "last.tag"]
TOPIC = b"first"        # the first stage's name: the topic of its link


class Tagging:
    def tag(self, payload):
        return payload + b">" + self.name.encode()


class First(Tagging, Server):
    pass


class Last(Tagging, Pipeline):
    pass


class FirstWorker(Worker):
    """A Master named 'first' has it run first.tag."""

    def tag(self, payload):
        return payload + b">first"


def expected(numbers):
    return [b"%d>first>last" % i for i in numbers]


class Tap:
    """A SUB on the first stage's publisher: subscribed as a stage of ours
    (`ours`: the plain and the marked topic) or as a pylm 0.14 stage (the
    plain topic only).  Records each message it reads: ("batch" or
    "single", [payloads])."""

    def __init__(self, ctx, address, ours):
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, TOPIC)
        if ours:
            self.sock.setsockopt(zmq.SUBSCRIBE, _core.STAGE_MARK + TOPIC)
        self.sock.connect(address)
        self.ours = ours
        self.messages = []

    def read(self, timeout):
        """Read what comes within `timeout` seconds of the last message;
        the number of envelopes read."""
        n = 0
        while self.sock.poll(int(timeout * 1000)):
            frames = self.sock.recv_multipart()
            if len(frames) == 3:
                assert frames[0] == _core.STAGE_MARK + TOPIC
                assert frames[1] == _core.BATCH_MARK
                envelopes = unbatch(frames[2])
                kind = "batch"
            else:
                assert len(frames) == 2 and frames[0] == TOPIC, frames
                envelopes = [frames[1]]
                kind = "single"
            payloads = []
            for data in envelopes:
                msg = PalmMessage()
                msg.ParseFromString(data)
                if not msg.function:
                    # a client's ping: for stages of ours only
                    assert self.ours, "a ping reached a pylm 0.14 subscriber"
                    continue
                payloads.append(msg.payload)
            self.messages.append((kind, payloads))
            n += len(payloads)
            timeout = min(timeout, 0.5)
        return n

    def read_until(self, predicate):
        """Read until predicate(self) holds (bounded by TIMEOUT)."""
        deadline = time.monotonic() + TIMEOUT
        while not predicate(self):
            assert time.monotonic() < deadline, "the tap never saw what it waited for"
            self.read(0.2)

    def kinds(self):
        return {kind for kind, _ in self.messages}

    def payloads(self):
        return [p for _, payloads in self.messages for p in payloads]

    def numbers(self):
        """The call numbers seen (the payloads are b"<i>>first")."""
        return [int(p.split(b">")[0]) for p in self.payloads() if not p.startswith(b"probe")]

    def close(self):
        self.sock.close()


@contextlib.contextmanager
def first_stage(kind, db, pull, pub):
    """The first stage, pipelined: a Server, or a Master and its worker."""
    if kind == "server":
        with running(First("first", db, pull, pub, pipelined=True)):
            yield
        return
    wpull, wpush = tcp_addresses(2)
    with running(Master("first", pull, pub, wpull, wpush, db, pipelined=True)), \
            running(FirstWorker("w", db)):
        yield


@pytest.fixture
def chain():
    """First(pipelined) -> Last -> a Client, in threads; yields (client,
    a function making taps on the first stage's publisher)."""
    with kind_of_chain("server") as c:
        yield c


@contextlib.contextmanager
def kind_of_chain(kind):
    """first_stage(kind) -> Last -> a Client; yields (client, tap), where
    tap(ours) makes a Tap on the first stage's publisher (closed after)."""
    db0, pull0, pub0, db1, pub1 = tcp_addresses(5)
    ctx = zmq.Context.instance()
    taps = []
    with first_stage(kind, db0, pull0, pub0), \
            running(Last("last", db1, pub0, pub1, "first")), \
            Client("first", db0, sub_address=pub1, timeout=TIMEOUT) as client:

        def tap(ours):
            t = Tap(ctx, pub0, ours)
            taps.append(t)
            return t

        try:
            yield client, tap
        finally:
            for t in taps:
                t.close()


def probe_until_seen(client, taps):
    """Call through the chain until the chain answers and every tap has
    seen a call (their subscriptions are live); the taps are emptied."""
    deadline = time.monotonic() + TIMEOUT
    i = 0
    while True:
        try:
            client.eval(FUNCTION, b"probe-%d" % i, timeout=0.5)
            if all(t.read(0.2) for t in taps):
                break
        except TimeoutError:
            pass
        assert time.monotonic() < deadline, "the chain never answered every tap"
        i += 1
    for t in taps:
        t.read(0.2)
        t.messages.clear()


def run_job(client, numbers):
    replies = list(client.job(FUNCTION, (b"%d" % i for i in numbers), timeout=TIMEOUT))
    assert replies == expected(numbers)


N = 3000


@pytest.mark.parametrize("kind", ["server", "master"])
def test_all_ours_batched_in_order(kind):
    with kind_of_chain(kind) as (client, tap):
        all_ours_batched_in_order(client, tap)


def all_ours_batched_in_order(client, tap):
    ours = tap(ours=True)
    probe_until_seen(client, [ours])
    run_job(client, range(N))
    ours.read_until(lambda t: len(t.payloads()) >= N)
    assert ours.numbers() == list(range(N))
    assert ours.kinds() == {"batch"}
    assert len(ours.messages) < N


@pytest.mark.parametrize("kind", ["server", "master"])
def test_plain_subscriber_gets_single_envelopes(kind):
    with kind_of_chain(kind) as (client, tap):
        plain_subscriber_gets_single_envelopes(client, tap)


def plain_subscriber_gets_single_envelopes(client, tap):
    ours = tap(ours=True)
    plain = tap(ours=False)
    probe_until_seen(client, [ours, plain])
    run_job(client, range(N))
    for t in (ours, plain):
        t.read_until(lambda t: len(t.payloads()) >= N)
        assert t.numbers() == list(range(N))
        assert t.kinds() == {"single"}


def test_back_to_batches_when_the_plain_subscriber_leaves(chain):
    """Every message once and in order across the switch to batches."""
    client, tap = chain
    ours = tap(ours=True)
    plain = tap(ours=False)
    probe_until_seen(client, [ours, plain])
    run_job(client, range(N))
    plain.close()
    sent = N
    deadline = time.monotonic() + TIMEOUT
    while True:
        ours.read(0.05)
        if "batch" in ours.kinds():
            break
        assert time.monotonic() < deadline, "no batch after the plain subscriber left"
        run_job(client, range(sent, sent + 100))
        sent += 100
    ours.read_until(lambda t: len(t.numbers()) >= sent)
    assert ours.numbers() == list(range(sent))
    assert ours.kinds() == {"single", "batch"}


@pytest.mark.parametrize("joiner", ["ours", "plain"])
def test_subscriber_joins_mid_stream(chain, joiner):
    """A tap that joins while a job runs sees an unbroken run of the calls,
    up to the last one, in order; the chain's client gets every reply once
    and in order."""
    client, tap = chain
    probe_until_seen(client, [])
    joined = []
    numbers = []

    def payloads():
        i = 0
        deadline = time.monotonic() + TIMEOUT
        while i < N // 2:
            numbers.append(i)
            yield b"%d" % i
            i += 1
        joined.append(tap(ours=joiner == "ours"))
        # go on until the joiner read something, then some more
        while not joined[0].read(0) and time.monotonic() < deadline and i < 100 * N:
            numbers.append(i)
            yield b"%d" % i
            i += 1
        for _ in range(N // 2):
            numbers.append(i)
            yield b"%d" % i
            i += 1

    replies = list(client.job(FUNCTION, payloads(), timeout=TIMEOUT))
    assert replies == expected(numbers)
    t = joined[0]
    t.read_until(lambda t: t.numbers() and t.numbers()[-1] == numbers[-1])
    seen = t.numbers()
    assert seen == list(range(seen[0], numbers[-1] + 1))
    if joiner == "plain":
        assert t.kinds() == {"single"}
