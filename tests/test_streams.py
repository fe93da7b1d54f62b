"""Streams: Server(pipelined) -> Pipeline -> ... -> Client, tees, custom
topics from handle_stream, Sinks joining branches, Master -> Pipeline,
Server -> Hub, back-pressure, and bad stage/function input -- all with real
servers in threads (pylm._testing.running), workers in threads or spawned
child processes, real Clients and real ZeroMQ sockets.

Server names are chosen so that no topic is a prefix of another topic
published on the same socket (ZeroMQ subscriptions match prefixes) and so
that none starts with two hex digits (client topics are UUIDs).
"""

import contextlib
import re
import threading
import time
import uuid
from collections import Counter
from types import SimpleNamespace

import pytest
import zmq

from pylm._testing import Gate, in_child, running, tcp_addresses, wait_for
from pylm.clients import Client
from pylm.errors import RemoteError
from pylm.parts.messages_pb2 import PalmMessage
from pylm.servers import Hub, Master, MuxWorker, Pipeline, Server, Sink, Worker

TIMEOUT = 10    # seconds for anything that should answer
SILENCE = 0.5   # seconds to wait for a reply that must not come


# -- the servers of these tests ---------------------------------------------------

class Steps:
    """Methods every stage of these tests has.  `label` (default: the
    server's name) is what `tag` appends; every call is logged in `calls`
    as (method, payload)."""

    label = None

    def _log(self, method, payload):
        self.__dict__.setdefault("calls", []).append((method, payload))

    def _label(self):
        return (self.label or self.name).encode()

    def tag(self, payload):
        self._log("tag", payload)
        return payload + b">" + self._label()

    def upper(self, payload):
        self._log("upper", payload)
        return payload.upper()

    def fail(self, payload):
        self._log("fail", payload)
        raise ValueError("failed on " + payload.decode())

    def picky(self, payload):
        """Raises for payloads with b'bad' in them."""
        self._log("picky", payload)
        if b"bad" in payload:
            raise ValueError("bad payload " + payload.decode())
        return payload + b">" + self._label()

    def maybe(self, payload):
        """None (nothing is sent on) for payloads with b'drop' in them."""
        self._log("maybe", payload)
        if b"drop" in payload:
            return None
        return payload + b">" + self._label()


class Source(Steps, Server):
    pass


class Stage(Steps, Pipeline):
    pass


class Join(Steps, Sink):
    pass


class StageRecorder:
    """A pylm 0.14-style handle_stream override that records what it sees
    and routes as the defaults do (stage += 1 and the server's name as the
    topic when pipelined, else the client)."""

    def handle_stream(self, message):
        self.__dict__.setdefault("seen", []).append(
            (message.stage, message.function, message.payload))
        if self.pipelined:
            message.stage += 1
            return self.name, message
        return message.client, message


class RecordingSource(StageRecorder, Source):
    pass


class RecordingStage(StageRecorder, Stage):
    pass


class Splitter(Source):
    """Sends results on topic 'even' or 'odd' by the number the payload
    starts with; payloads starting with b'skip' go nowhere."""

    def handle_stream(self, message):
        if message.payload.startswith(b"skip"):
            return None
        number = int(re.match(rb"\d+", message.payload).group())
        message.stage += 1
        return ("even" if number % 2 == 0 else "odd"), message


class RaisingStream:
    """A handle_stream that raises for payloads starting with b'boom'."""

    def handle_stream(self, message):
        if message.payload.startswith(b"boom"):
            raise ValueError("handle_stream failed on " + message.payload.decode())
        return message.client, message


class RaisingRouter(RaisingStream, Source):
    pass


class RaisingMaster(RaisingStream, Master):
    pass


class TagWorker(Worker):
    """Runs in a child process: pickled by reference, so module level."""

    def tag(self, payload):
        return payload + b">" + self.name.encode()

    def fail(self, payload):
        raise ValueError("worker failed on " + payload.decode())


class MuxTagWorker(MuxWorker):
    def tag(self, payload):
        yield payload + b">" + self.name.encode() + b"#1"
        yield payload + b">" + self.name.encode() + b"#2"


class Fast(Server):
    done = 0

    def work(self, payload):
        self.done += 1
        return payload + b">fast"


class Slow(Pipeline):
    """A stage held by the test (its next call waits at the Gate `hold`)
    that measures how far behind its upstream it is."""

    upstream = None
    done = 0
    max_lag = 0
    hold = None

    def work(self, payload):
        gate, self.hold = self.hold, None
        if gate is not None and not gate.wait():
            raise TimeoutError("the test never opened the gate")
        self.done += 1
        lag = self.upstream.done - self.done
        if lag > self.max_lag:
            self.max_lag = lag
        return payload + b">slow"


# -- helpers -------------------------------------------------------------------

def answered(client, function, payload, timeout=15.0):
    """Call until the stream answers: the subscriptions of the later stages
    reach their publishers a moment after they connect (and a stream whose
    handle_stream is overridden does not carry the client's pings)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.eval(function, payload, timeout=SILENCE)
        except TimeoutError:
            if time.monotonic() > deadline:
                raise AssertionError("%s never answered within %s s" % (function, timeout))


def calls_since(server, mark):
    return server.__dict__.get("calls", [])[mark:]


def marks(*servers):
    return [len(s.__dict__.get("calls", [])) for s in servers]


def numbers(n):
    return [b"%d" % i for i in range(n)]


@contextlib.contextmanager
def stream_client(*args, **kwargs):
    client = Client(*args, timeout=TIMEOUT, **kwargs)
    try:
        yield client
    finally:
        client.close()


# -- Server(pipelined) -> Pipeline -> Pipeline -> Client --------------------------

@pytest.fixture(scope="module")
def chain():
    db1, pull, pub1, db2, pub2, db3, pub3 = tcp_addresses(7)
    src = Source("src", db1, pull, pub1, pipelined=True)
    p1 = Stage("p1", db2, pub1, pub2, "src", to_client=False)
    p2 = Stage("p2", db3, pub2, pub3, "p1", to_client=True)
    with running(p2), running(p1), running(src), \
            stream_client("src", db1, sub_address=pub3) as client:
        assert answered(client, "src.tag p1.tag p2.tag", b"probe") == b"probe>src>p1>p2"
        yield SimpleNamespace(src=src, p1=p1, p2=p2, client=client, stages=(src, p1, p2))


FUNCTIONS = {"list": ["src.tag", "p1.tag", "p2.tag"], "string": "src.tag p1.tag p2.tag"}


@pytest.mark.parametrize("form", sorted(FUNCTIONS))
def test_eval_through_three_stages(chain, form):
    before = marks(*chain.stages)
    assert chain.client.eval(FUNCTIONS[form], b"x", timeout=TIMEOUT) == b"x>src>p1>p2"
    # each stage ran once, on what the stage before it produced
    assert calls_since(chain.src, before[0]) == [("tag", b"x")]
    assert calls_since(chain.p1, before[1]) == [("tag", b"x>src")]
    assert calls_since(chain.p2, before[2]) == [("tag", b"x>src>p1")]


@pytest.mark.parametrize("form", sorted(FUNCTIONS))
def test_job_of_5000_through_three_stages(chain, form):
    payloads = numbers(5000)
    before = marks(*chain.stages)
    replies = list(chain.client.job(FUNCTIONS[form], iter(payloads), timeout=TIMEOUT))
    assert len(replies) == len(payloads)
    assert Counter(replies) == Counter(p + b">src>p1>p2" for p in payloads)
    # every stage saw every message exactly once, transformed by the stages before
    assert Counter(calls_since(chain.src, before[0])) == Counter(("tag", p) for p in payloads)
    assert Counter(calls_since(chain.p1, before[1])) == Counter(
        ("tag", p + b">src") for p in payloads)
    assert Counter(calls_since(chain.p2, before[2])) == Counter(
        ("tag", p + b">src>p1") for p in payloads)


def test_each_server_runs_the_entry_at_its_stage(chain):
    client = chain.client
    before = marks(*chain.stages)
    assert client.eval("src.upper p1.tag p2.upper", b"ab", timeout=TIMEOUT) == b"AB>P1"
    assert client.eval("src.tag p1.upper p2.tag", b"ab", timeout=TIMEOUT) == b"AB>SRC>p2"
    assert client.eval(["src.echo", "p1.echo", "p2.tag"], b"ab", timeout=TIMEOUT) == b"ab>p2"
    assert calls_since(chain.src, before[0]) == [("upper", b"ab"), ("tag", b"ab")]
    assert calls_since(chain.p1, before[1]) == [("tag", b"AB"), ("upper", b"ab>src")]
    assert calls_since(chain.p2, before[2]) == [("upper", b"AB>p1"), ("tag", b"AB>SRC"),
                                               ("tag", b"ab")]


def test_a_method_returning_none_sends_nothing(chain):
    client = chain.client
    before = marks(*chain.stages)
    # in the middle of the stream ...
    with pytest.raises(TimeoutError):
        client.eval("src.tag p1.maybe p2.tag", b"drop-1", timeout=SILENCE)
    # ... and at its first stage
    with pytest.raises(TimeoutError):
        client.eval("src.maybe p1.tag p2.tag", b"drop-2", timeout=SILENCE)
    assert calls_since(chain.p1, before[1]) == [("maybe", b"drop-1>src")]
    assert calls_since(chain.p2, before[2]) == []   # nothing reached the last stage
    # the stream keeps serving, through the same methods
    assert client.eval("src.tag p1.maybe p2.tag", b"keep", timeout=TIMEOUT) == b"keep>src>p1>p2"
    assert client.eval("src.maybe p1.tag p2.tag", b"keep", timeout=TIMEOUT) == b"keep>src>p1>p2"


def test_handle_stream_overrides_see_the_stage_of_their_entry():
    """pylm 0.14 user code: handle_stream does ``message.stage += 1`` itself,
    and each Pipeline subscribes to the name of the server before it."""
    db1, pull, pub1, db2, pub2, db3, pub3 = tcp_addresses(7)
    src = RecordingSource("src", db1, pull, pub1, pipelined=True)
    p1 = RecordingStage("p1", db2, pub1, pub2, "src", to_client=False)
    p2 = RecordingStage("p2", db3, pub2, pub3, "p1", to_client=True)
    function = "src.tag p1.upper p2.tag"
    with running(p2), running(p1), running(src), \
            stream_client("src", db1, sub_address=pub3) as client:
        answered(client, function, b"probe")
        for who in (src, p1, p2):
            who.seen = []
        replies = list(client.job(function, iter([b"a", b"b"]), timeout=TIMEOUT))
        assert sorted(replies) == [b"A>SRC>p2", b"B>SRC>p2"]
    # each saw the stage of the entry it ran, the function unchanged, its own result
    assert sorted(src.seen) == [(0, function, b"a>src"), (0, function, b"b>src")]
    assert sorted(p1.seen) == [(1, function, b"A>SRC"), (1, function, b"B>SRC")]
    assert sorted(p2.seen) == [(2, function, b"A>SRC>p2"), (2, function, b"B>SRC>p2")]


# -- a tee: two Pipelines on one server, joined by a Sink -------------------------

@pytest.fixture(scope="module")
def tee():
    db, pull, pub, dba, puba, dbb, pubb, dbj, pubj = tcp_addresses(9)
    src = Source("src", db, pull, pub, pipelined=True)
    # both run the entry 'tee.*' of the function: they share the name
    tee_a = Stage("tee", dba, pub, puba, "src", to_client=False)
    tee_b = Stage("tee", dbb, pub, pubb, "src", to_client=False)
    tee_a.label, tee_b.label = "a", "b"
    join = Join("join", dbj, [puba, pubb], pubj, ["tee", "tee"], to_client=True)
    with running(join), running(tee_a), running(tee_b), running(src), \
            stream_client("src", db, sub_address=pubj) as client:
        # both branches must be live: probe until one call gets both replies
        def both():
            try:
                return sorted(client.eval("src.tag tee.tag join.tag", b"probe", messages=2,
                                          timeout=SILENCE))
            except TimeoutError:
                return None
        wait_for(both, timeout=15, what="both branches of the tee answering")
        yield SimpleNamespace(src=src, a=tee_a, b=tee_b, join=join, client=client)


def test_tee_both_pipelines_run(tee):
    before = marks(tee.a, tee.b)
    replies = tee.client.eval("src.tag tee.tag join.tag", b"x", messages=2, timeout=TIMEOUT)
    assert sorted(replies) == [b"x>src>a>join", b"x>src>b>join"]
    assert calls_since(tee.a, before[0]) == [("tag", b"x>src")]
    assert calls_since(tee.b, before[1]) == [("tag", b"x>src")]


def test_tee_job_gets_both_copies_of_every_message(tee):
    payloads = numbers(1000)
    replies = list(tee.client.job("src.tag tee.tag join.tag", iter(payloads),
                                  messages=2 * len(payloads), timeout=TIMEOUT))
    assert len(replies) == 2 * len(payloads)
    expected = [p + b">src>" + side + b">join" for p in payloads for side in (b"a", b"b")]
    assert Counter(replies) == Counter(expected)


# -- custom topics: even/odd split, joined back by a Sink -----------------------------

@pytest.fixture(scope="module")
def split():
    db, pull, pub, dbe, pube, dbo, pubo, dbj, pubj = tcp_addresses(9)
    src = Splitter("split", db, pull, pub, pipelined=True)
    # both branches run the entry 'branch.*'; they differ in what they subscribe to
    even = Stage("branch", dbe, pub, pube, "even", to_client=False)
    odd = Stage("branch", dbo, pub, pubo, "odd", to_client=False)
    even.label, odd.label = "even", "odd"
    join = Join("join", dbj, [pube, pubo], pubj, ["branch", "branch"], to_client=True)
    with running(join), running(even), running(odd), running(src), \
            stream_client("split", db, sub_address=pubj) as client:
        function = "split.tag branch.tag join.tag"
        assert answered(client, function, b"0") == b"0>split>even>join"
        assert answered(client, function, b"1") == b"1>split>odd>join"
        yield SimpleNamespace(src=src, even=even, odd=odd, join=join, client=client,
                              function=function)


def test_split_even_and_odd_to_two_pipelines_and_join_them(split):
    payloads = numbers(2000)
    before = marks(split.even, split.odd, split.join)
    replies = list(split.client.job(split.function, iter(payloads), timeout=TIMEOUT))
    assert len(replies) == len(payloads)
    assert Counter(replies) == Counter(
        b"%d>split>%s>join" % (i, b"even" if i % 2 == 0 else b"odd")
        for i in range(len(payloads)))
    # each branch got exactly its half
    assert sorted(calls_since(split.even, before[0])) == sorted(
        ("tag", b"%d>split" % i) for i in range(0, len(payloads), 2))
    assert sorted(calls_since(split.odd, before[1])) == sorted(
        ("tag", b"%d>split" % i) for i in range(1, len(payloads), 2))
    assert len(calls_since(split.join, before[2])) == len(payloads)


def test_split_eval_takes_the_branch_of_its_payload(split):
    assert split.client.eval(split.function, b"42", timeout=TIMEOUT) == b"42>split>even>join"
    assert split.client.eval(split.function, b"7", timeout=TIMEOUT) == b"7>split>odd>join"


def test_handle_stream_returning_none_sends_nothing(split):
    before = marks(split.src, split.even, split.odd)
    with pytest.raises(TimeoutError):
        split.client.eval(split.function, b"skip", timeout=SILENCE)
    assert calls_since(split.src, before[0]) == [("tag", b"skip")]  # it ran ...
    assert marks(split.even, split.odd) == before[1:]               # ... and went nowhere
    # and the stream keeps serving
    assert split.client.eval(split.function, b"8", timeout=TIMEOUT) == b"8>split>even>join"


def test_a_branch_method_returning_none_sends_nothing(split):
    before = marks(split.odd, split.join)
    with pytest.raises(TimeoutError):
        split.client.eval("split.tag branch.maybe join.tag", b"3drop", timeout=SILENCE)
    assert calls_since(split.odd, before[0]) == [("maybe", b"3drop>split")]
    assert calls_since(split.join, before[1]) == []
    assert split.client.eval("split.tag branch.maybe join.tag", b"9",
                             timeout=TIMEOUT) == b"9>split>odd>join"


@pytest.mark.parametrize("kind", ["Server", "Master"])
def test_a_handle_stream_that_raises_does_not_stop_the_server(kind):
    if kind == "Server":
        db, pull, pub = tcp_addresses(3)
        server = RaisingRouter("router", db, pull, pub)
        workers = []
    else:
        pull, pub, wpull, wpush, db = tcp_addresses(5)
        server = RaisingMaster("router", pull, pub, wpull, wpush, db)
        workers = [TagWorker("w1", db)]
    with contextlib.ExitStack() as stack:
        run = stack.enter_context(running(server))
        for worker in workers:
            stack.enter_context(running(worker))
        client = stack.enter_context(stream_client("router", db))
        assert answered(client, "router.tag", b"a") in (b"a>router", b"a>w1")
        # the caller gets the hook's exception ...
        with pytest.raises(RemoteError) as info:
            client.eval("router.tag", b"boom", timeout=TIMEOUT)
        assert info.value.remote_type == "ValueError", info.value
        assert "handle_stream failed on boom" in info.value.remote_message
        # ... the server keeps serving (its loop went on after the hook
        # failed) ...
        assert client.eval("router.tag", b"b", timeout=TIMEOUT) in (b"b>router", b"b>w1")
        run.check()     # ... and start() did not raise
        assert not run.returned.is_set()


# -- Master(pipelined) -> Pipeline; Server(pipelined) -> Hub ------------------------------

def test_master_pipelined_into_a_pipeline_with_workers_in_processes():
    pull, pub, wpull, wpush, db, dbp, pubp = tcp_addresses(7)
    master = Master("m", pull, pub, wpull, wpush, db, pipelined=True)
    after = Stage("after", dbp, pub, pubp, "m", to_client=True)
    with running(after), running(master):
        procs = [in_child(TagWorker, name, db) for name in ("w1", "w2")]
        try:
            with stream_client("m", db, sub_address=pubp) as client:
                function = "m.tag after.tag"
                assert answered(client, function, b"x", timeout=30) in (
                    b"x>w1>after", b"x>w2>after")
                seen = set()

                def both_serve():
                    # enough calls to spread over both (calls travel in batches)
                    seen.update(r.split(b">")[1] for r in client.job(
                        function, iter([b"w"] * 4000), timeout=TIMEOUT))
                    return seen == {b"w1", b"w2"}

                wait_for(both_serve, timeout=30, what="both workers serving")
                payloads = numbers(5000)
                replies = list(client.job(function, iter(payloads), timeout=TIMEOUT))
                assert len(replies) == len(payloads)
                by_payload = {}
                for reply in replies:
                    head, worker, tail = reply.split(b">")
                    assert worker in (b"w1", b"w2") and tail == b"after", reply
                    by_payload[head] = by_payload.get(head, 0) + 1
                assert by_payload == {p: 1 for p in payloads}
                # a worker's error travels along the stream to the client
                with pytest.raises(RemoteError) as info:
                    client.eval("m.fail after.tag", b"x", timeout=TIMEOUT)
                assert info.value.remote_type == "ValueError"
                assert info.value.remote_message == "worker failed on x"
                assert answered(client, function, b"z") in (b"z>w1>after", b"z>w2>after")
        finally:
            for proc in procs:
                proc.stop()
        assert [proc.exitcode for proc in procs] == [0, 0]


@pytest.mark.parametrize("worker_class", [TagWorker, MuxTagWorker], ids=["Worker", "MuxWorker"])
def test_server_pipelined_into_a_hub_with_workers(worker_class):
    db, pull, pub, dbh, pubh, wpull, wpush = tcp_addresses(7)
    src = Source("src", db, pull, pub, pipelined=True)
    hub = Hub("hub", pub, pubh, wpull, wpush, dbh, "src")
    workers = [worker_class(name, dbh) for name in ("w1", "w2")]
    per_call = 2 if worker_class is MuxTagWorker else 1
    function = "src.tag hub.tag"
    with running(hub), running(src), running(workers[0]), running(workers[1]), \
            stream_client("src", db, sub_address=pubh) as client:
        first = answered(client, function, b"x")
        assert first in (b"x>src>w1", b"x>src>w2", b"x>src>w1#1", b"x>src>w2#1")
        replies = client.eval(function, b"y", messages=per_call, timeout=TIMEOUT)
        if per_call == 1:
            assert replies in (b"y>src>w1", b"y>src>w2")
        else:
            assert sorted(r[:-2] for r in replies) in ([b"y>src>w1"] * 2, [b"y>src>w2"] * 2)
            assert sorted(r[-2:] for r in replies) == [b"#1", b"#2"]
        payloads = numbers(2000)
        replies = list(client.job(function, iter(payloads), messages=per_call * len(payloads),
                                  timeout=TIMEOUT))
        assert len(replies) == per_call * len(payloads)
        seen = Counter()
        for reply in replies:
            head, via, worker = reply.split(b">")
            assert via == b"src", reply
            assert worker.split(b"#")[0] in (b"w1", b"w2"), reply
            seen[(head, worker.partition(b"#")[2])] += 1
        suffixes = [b""] if per_call == 1 else [b"1", b"2"]
        assert seen == Counter((p, s) for p in payloads for s in suffixes)


# -- back-pressure ---------------------------------------------------------------

@pytest.mark.parametrize("n, window", [(20_000, 50), (5_000, 5_000)],
                         ids=["window=50", "window=n"])
def test_a_slow_pipeline_behind_a_fast_server_loses_nothing_and_stays_bounded(n, window):
    """A job through a fast Server into a Pipeline held by the test on its
    first call, until the fast server has run all it may run ahead (the
    client's `window`, or all n): every reply arrives exactly once, the
    client never has more than `window` calls in flight, and the slow
    stage is never more than `window` messages behind the fast one.  With
    window=n nothing bounds the lag but the client: the fast server's PUB
    queue (XPUB_NODROP, SNDHWM 100,000) holds what the slow stage has not
    taken yet."""
    db, pull, pub, dbs, pubs = tcp_addresses(5)
    fast = Fast("fast", db, pull, pub, pipelined=True)
    slow = Slow("slow", dbs, pub, pubs, "fast", to_client=True)
    slow.upstream = fast
    function = "fast.work slow.work"
    ahead = min(n, window)
    with running(slow), running(fast), stream_client("fast", db, sub_address=pubs) as client, \
            Gate() as gate:
        answered(client, function, b"probe")
        slow.done = slow.max_lag = 0
        fast.done = 0
        sent = 0
        max_in_flight = 0

        def release():
            try:
                wait_for(lambda: fast.done >= ahead, timeout=60,
                         what="the fast server %d calls ahead" % ahead)
            finally:
                gate.open()

        slow.hold = gate
        opener = threading.Thread(target=release, daemon=True)
        opener.start()

        def payloads():
            nonlocal sent
            for i in range(n):
                sent += 1
                yield b"%d" % i

        replies = []
        try:
            for reply in client.job(function, payloads(), timeout=60, window=window):
                max_in_flight = max(max_in_flight, sent - len(replies))
                replies.append(reply)
        finally:
            gate.open()
            opener.join(TIMEOUT)
        assert gate.arrived == 1
    assert len(replies) == n
    assert Counter(replies) == Counter(b"%d>fast>slow" % i for i in range(n))
    assert fast.done == slow.done == n
    assert 0 < max_in_flight <= window
    # held, the slow stage fell `ahead` calls behind, and never more than window
    assert ahead - 1 <= slow.max_lag <= window
    if window >= n:     # unbounded by the client: the slow stage fell far behind
        assert slow.max_lag > 1000


# -- bad input ---------------------------------------------------------------------

@contextlib.contextmanager
def raw_sockets(push_address, sub_address, topics):
    """A raw PUSH to a server and a raw SUB on a publisher, subscribed to
    `topics` and to the welcome; yields (push, sub)."""
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    sub = ctx.socket(zmq.SUB)
    try:
        for topic in topics:
            sub.setsockopt_string(zmq.SUBSCRIBE, topic)
        sub.setsockopt(zmq.SUBSCRIBE, b"\x00pylm-welcome")
        sub.connect(sub_address)
        push.connect(push_address)
        yield push, sub
    finally:
        push.close(linger=0)
        sub.close(linger=0)


def raw_call(push, sub, pipeline, expect, **fields):
    """Send an envelope crafted by hand; return the replies with `pipeline`
    as {topic: PalmMessage}: those until every topic in `expect` answered
    (within TIMEOUT), and any other within SILENCE after that."""
    push.send(PalmMessage(pipeline=pipeline, **fields).SerializeToString())
    replies = {}
    deadline = time.monotonic() + TIMEOUT
    while sub.poll(max(1, int((deadline - time.monotonic()) * 1000))):
        frames = sub.recv_multipart()
        if len(frames) != 2:
            continue    # the welcome
        reply = PalmMessage()
        reply.ParseFromString(frames[1])
        if reply.pipeline == pipeline:
            assert frames[0].decode() not in replies, "a reply came twice"
            replies[frames[0].decode()] = reply
            if set(expect) <= set(replies):
                deadline = min(deadline, time.monotonic() + SILENCE)
    return replies


def test_raw_envelopes_with_a_bad_stage_or_server_get_lookup_errors(chain):
    client_id = "raw-" + uuid.uuid4().hex
    with raw_sockets(chain.src.pull_address, chain.src.pub_address,
                     [client_id, "src"]) as (push, sub):
        # the subscription is live once a call comes back on 'src' (pings
        # go on along a stream to the stages of ours only: Subscriptions.ping_topic)
        def joined():
            push.send(PalmMessage(pipeline="join", client=client_id, function="src.tag p1.tag",
                                  payload=b"j").SerializeToString())
            return sub.poll(200) and len(sub.recv_multipart()) == 2
        wait_for(joined, timeout=TIMEOUT, what="the raw subscription")

        # Errors go to the client's topic here (and along the stream, topic
        # 'src', to a client subscribed at the last stage).
        # A stage past the end of function:
        replies = raw_call(push, sub, "p-stage", [client_id], client=client_id, stage=3,
                           function="src.tag p1.tag", payload=b"x")
        assert client_id in replies, replies
        assert set(replies) <= {client_id, "src"}
        for reply in replies.values():
            error = RemoteError.from_wire(reply.error)
            assert error.remote_type == "LookupError", reply.error
            assert "past the end" in error.remote_message and "3" in error.remote_message
            assert reply.payload == b""

        # the entry at the stage names another server
        replies = raw_call(push, sub, "p-other", [client_id], client=client_id, stage=1,
                           function="p1.tag other.tag", payload=b"x")
        assert client_id in replies, replies
        assert set(replies) <= {client_id, "src"}
        for reply in replies.values():
            error = RemoteError.from_wire(reply.error)
            assert error.remote_type == "LookupError", reply.error
            assert "other.tag" in error.remote_message
            assert "another server" in error.remote_message

        # a good envelope at stage 1 runs entry 1, and goes on at stage 2
        replies = raw_call(push, sub, "p-good", ["src"], client=client_id, stage=1,
                           function="p9.tag src.tag p1.tag p2.tag", payload=b"ok")
        assert list(replies) == ["src"]
        reply = replies["src"]
        assert (reply.stage, reply.payload, reply.error) == (2, b"ok>src", "")
    # and the stream keeps serving
    assert chain.client.eval("src.tag p1.tag p2.tag", b"after", timeout=TIMEOUT) == \
        b"after>src>p1>p2"


def test_client_of_the_first_server_gets_its_lookup_errors(chain):
    with stream_client("src", chain.src.db_address) as client:   # sub: src's own pub
        with pytest.raises(RemoteError) as info:
            client.eval("other.tag p1.tag p2.tag", b"x", timeout=TIMEOUT)
        assert info.value.remote_type == "LookupError"
        assert "another server" in info.value.remote_message
    assert chain.client.eval("src.tag p1.tag p2.tag", b"y", timeout=TIMEOUT) == b"y>src>p1>p2"


def test_bad_entries_at_the_last_stage_reach_the_client(chain):
    client = chain.client
    with pytest.raises(RemoteError) as info:
        client.eval("src.tag p1.tag other.tag", b"x", timeout=TIMEOUT)
    assert info.value.remote_type == "LookupError"
    assert "other.tag" in info.value.remote_message
    assert "another server" in info.value.remote_message
    with pytest.raises(RemoteError) as info:
        client.eval("src.tag p1.tag", b"x", timeout=TIMEOUT)    # p2 has no entry
    assert info.value.remote_type == "LookupError"
    assert "past the end" in info.value.remote_message
    assert client.eval("src.tag p1.tag p2.tag", b"y", timeout=TIMEOUT) == b"y>src>p1>p2"


def test_bad_entries_before_the_last_stage_reach_the_client(chain):
    client = chain.client
    with pytest.raises(RemoteError) as info:
        client.eval("src.tag other.tag p2.tag", b"x", timeout=TIMEOUT)   # at p1
    assert info.value.remote_type == "LookupError"
    with pytest.raises(RemoteError) as info:
        client.eval("src.tag", b"x", timeout=TIMEOUT)                     # at p1
    assert info.value.remote_type == "LookupError"
    with pytest.raises(RemoteError) as info:
        client.eval("other.tag p1.tag p2.tag", b"x", timeout=TIMEOUT)     # at src
    assert info.value.remote_type == "LookupError"
    # the stream goes on after each
    assert client.eval("src.tag p1.tag p2.tag", b"y", timeout=TIMEOUT) == b"y>src>p1>p2"


def test_a_method_raising_in_the_middle_of_a_stream_reaches_the_client(chain):
    before = marks(chain.p2)
    with pytest.raises(RemoteError) as info:
        chain.client.eval("src.tag p1.fail p2.tag", b"x", timeout=TIMEOUT)
    assert info.value.remote_type == "ValueError"
    assert info.value.remote_message == "failed on x>src"
    assert "Traceback" in info.value.remote_traceback
    assert calls_since(chain.p2, before[0]) == []      # the error was not run as a call
    # a job that meets the error raises it; the next job goes through
    payloads = numbers(300)
    function = "src.tag p1.picky p2.tag"
    with pytest.raises(RemoteError) as info:
        list(chain.client.job(function, iter(payloads[:150] + [b"bad"] + payloads[150:]),
                              timeout=TIMEOUT))
    assert info.value.remote_message == "bad payload bad>src"
    replies = list(chain.client.job(function, iter(payloads), timeout=TIMEOUT))
    assert Counter(replies) == Counter(p + b">src>p1>p2" for p in payloads)
