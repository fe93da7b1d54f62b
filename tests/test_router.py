"""The one Router of pylm_core: the low-level API runs on it, a Master can
be assembled by hand from its C parts (intake -> worker pool -> publisher),
bad wiring is refused, and a server made of parts tells our clients its
protocol.  Real sockets, workers in threads, a real Client."""

import logging
import sys
import threading
import uuid

import pytest
import zmq

import pylm_core
from pylm_core import _core
from pylm._cache import CONFIG_PROTOCOL_KEY, PROTOCOL, PROTOCOL_PARTS, CacheHandler, serve_cache
from pylm._context import context
from pylm._dispatch import DropLog
from pylm._runtime import Runtime, StopHandle
from pylm._testing import running, tcp_addresses, wait_for
from pylm.clients import Client
from pylm.parts import core as parts_core
from pylm.parts.servers import ServerTemplate
from pylm.parts.services import PullService
from pylm.persistence.kv import DictDB
from pylm.servers import MAX_MESSAGE_SIZE, Server, Worker

import test_parts
from palm_reference import batch, unbatch

TIMEOUT = 10


class Doubler(Worker):
    def double(self, payload):
        return payload * 2


class HandMaster:
    """A Master written against pylm_core directly: a cache, and the three
    C parts of pylm.servers.Master routed on one core Router, with a
    scatter on the intake and a gather on the publisher."""

    def __init__(self, name):
        self.name = name
        (self.pull_address, self.pub_address, self.worker_pull_address,
         self.worker_push_address, self.db_address) = tcp_addresses(5)
        self.logger = logging.getLogger("pylm.test.handmaster")
        self._stopper = StopHandle()
        self.stats = {}
        self.cache = DictDB()

    @staticmethod
    def scatter(message):
        yield message                   # each call goes to the workers once ...

    @staticmethod
    def gather(message):
        message.payload = message.payload + b"!"    # ... and comes back marked
        yield message

    def stop(self):
        self._stopper.stop()

    def start(self):
        with Runtime(self._stopper, self.logger) as rt:
            router = rt.socket(zmq.ROUTER, ROUTER_MANDATORY=1, MAXMSGSIZE=MAX_MESSAGE_SIZE)
            router.bind(self.worker_push_address.rsplit(":", 1)[0] + ":*")
            for key, value in dict(
                    name=self.name, pull_address=self.pull_address,
                    pub_address=self.pub_address, db_address=self.db_address,
                    worker_pull_address=self.worker_pull_address,
                    worker_push_address=self.worker_push_address,
                    worker_router_address=router.getsockopt_string(zmq.LAST_ENDPOINT),
                    max_message_size=str(MAX_MESSAGE_SIZE),
                    **{CONFIG_PROTOCOL_KEY: PROTOCOL.decode()}).items():
                self.cache.set(value.encode(), key)
            rep = rt.socket(zmq.REP, bind=self.db_address)
            rt.thread(serve_cache, "cache", rep, rt.control(),
                      CacheHandler(self.cache, drop_log=DropLog(self.logger)), sys.maxsize)
            pull = rt.socket(zmq.PULL, bind=self.pull_address)
            pub = rt.publisher(self.pub_address, MAX_MESSAGE_SIZE)
            wpush = rt.socket(zmq.PUSH, bind=self.worker_push_address)
            wpull = rt.socket(zmq.PULL, bind=self.worker_pull_address)
            runner = _core.Router()
            publisher = runner.add(_core.Publisher(pub, self.name, gather=self.gather))
            pool = runner.add(_core.WorkerPool(router, wpush, wpull), target=publisher)
            runner.add(_core.Intake(pull, _core.IN_PLAIN_, publisher, scatter=self.scatter),
                       target=pool)
            try:
                runner.run(rt.control(), rt.wakeup_fd, _core.DRAIN_MS)
            finally:
                self.stats = runner.counters()


def test_the_low_level_api_runs_on_the_core_router():
    server = ServerTemplate()
    assert isinstance(server.router, _core.Router)
    assert issubclass(parts_core._Part, _core.Part)
    # the loop and the routing table are the core's, not Python's
    assert parts_core.Router.run is _core.Router.run
    assert parts_core.Router.backlog is _core.Router.backlog
    assert parts_core.ACK == _core.ACK == b"1"


@pytest.mark.timeout(60)
def test_a_master_assembled_from_core_parts_serves_calls_and_jobs():
    master = HandMaster("hand")
    with running(master):
        with running(Doubler("w1", master.db_address)), \
                Client("hand", master.db_address, timeout=TIMEOUT) as client:
            assert client.eval("hand.double", b"ab", timeout=TIMEOUT) == b"abab!"
            payloads = [b"%d" % i for i in range(2000)]
            got = sorted(client.job("hand.double", iter(payloads), messages=len(payloads),
                                    timeout=TIMEOUT))
            assert got == sorted(p * 2 + b"!" for p in payloads)
    # the counters of the three parts, summed by the Router
    assert master.stats["received"] >= 2001         # pings count too
    assert master.stats["to_workers"] == 2001
    assert master.stats["sent"] >= 2001
    assert master.stats["bad"] == 0


@pytest.fixture
def sockets():
    ctx = context()
    made = []

    def make(kind):
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        made.append(sock)
        return sock
    yield make
    for sock in made:
        sock.close(linger=0)


def test_the_core_router_refuses_parts_wired_the_wrong_way(sockets):
    pub = sockets(zmq.XPUB)
    publisher = _core.Publisher(pub, "m")
    pool = _core.WorkerPool(sockets(zmq.ROUTER), sockets(zmq.PUSH), sockets(zmq.PULL))
    runner = _core.Router()
    with pytest.raises(TypeError, match="Publisher"):
        runner.add(pool)                            # results must go somewhere
    with pytest.raises(TypeError, match="WorkerPool"):
        runner.add(_core.Intake(sockets(zmq.PULL), _core.IN_PLAIN_, publisher),
                   target=publisher)
    with pytest.raises(ValueError, match="inbound kind"):
        _core.Intake(sockets(zmq.PULL), 7, publisher)
    closed = sockets(zmq.PULL)
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        _core.Intake(closed, _core.IN_PLAIN_, publisher)


def test_a_route_to_an_unregistered_part_is_refused():
    server = ServerTemplate()
    a, = tcp_addresses(1)
    server.register_inbound(PullService, "Pull", a, route="Nowhere")
    with pytest.raises(ValueError, match="Nowhere"):
        server.start()


def parts_master(name):
    server = test_parts.parts_master(name, *tcp_addresses(5))
    server.db_address = server.cache.get("db_address").decode()
    return server


def is_ready(server):
    return server.ready.is_set()


@pytest.mark.timeout(60)
def test_a_parts_master_tells_clients_its_protocol_and_they_handshake():
    server = parts_master("pm")
    with running(server, ready=is_ready):
        assert server.cache.get(CONFIG_PROTOCOL_KEY) == PROTOCOL_PARTS
        with running(Doubler("w1", server.db_address)), \
                Client("pm", server.db_address, timeout=TIMEOUT) as client:
            # the client found the protocol: it waited for the XPUB's
            # welcome (not pylm 0.14's fixed wait), and sends single envelopes
            assert client.eval("pm.double", b"x", timeout=TIMEOUT) == b"xx"
            assert client._protocol == PROTOCOL_PARTS
            assert client._joined_by == "welcome"
            payloads = [b"%d" % i for i in range(500)]
            got = sorted(client.job("pm.double", iter(payloads), messages=len(payloads),
                                    timeout=TIMEOUT))
            assert got == sorted(p * 2 for p in payloads)


def test_a_protocol_preset_by_the_user_is_kept():
    server = parts_master("pm2")
    server.preset_cache(**{CONFIG_PROTOCOL_KEY: "legacy"})
    with running(server, ready=is_ready):
        wait_for(server.ready.is_set, what="parts master ready")
        assert server.cache.get(CONFIG_PROTOCOL_KEY) == b"legacy"


@pytest.mark.timeout(60)
def test_a_worker_batch_mixing_two_clients_reaches_each_client():
    """A worker (raw, speaking our worker protocol) answers the calls of
    two clients in one batch: the publisher must not forward that batch
    whole to one client's topic; each client gets its own reply."""
    import threading
    from pylm._cache import CacheClient
    from pylm.servers import Master
    pull, pub, wpull, wpush, db = tcp_addresses(5)
    master = Master("mix", pull, pub, wpull, wpush, db)
    replies, errors = {}, []
    with running(master):
        cache = CacheClient(db, "mix", timeout=TIMEOUT)
        try:
            router_address = cache.request("get", b"worker_router_address").decode()
        finally:
            cache.close()
        worker = context().socket(zmq.DEALER)
        worker.setsockopt(zmq.LINGER, 0)
        worker.setsockopt(zmq.ROUTING_ID, b"raw-worker")
        worker.connect(router_address)
        try:
            worker.send_multipart([b"R", b"10"])

            def call(tag):
                try:
                    with Client("mix", db, timeout=TIMEOUT) as client:
                        replies[tag] = client.eval("mix.double", tag, timeout=TIMEOUT)
                except Exception as exc:    # reported below
                    errors.append(exc)

            threads = [threading.Thread(target=call, args=(tag,)) for tag in (b"a", b"b")]
            for thread in threads:
                thread.start()
            calls = []
            while len(calls) < 2:           # both calls, in one or two batches
                assert worker.poll(TIMEOUT * 1000), "the Master sent no work"
                calls += [_core.PalmMessage.FromString(e)
                          for e in unbatch(worker.recv_multipart()[-1])]
            for message in calls:
                message.payload = message.payload * 2
            worker.send_multipart([b"D", b"2", batch([m.SerializeToString() for m in calls])])
            for thread in threads:
                thread.join(TIMEOUT + 5)
        finally:
            worker.close(linger=0)
    assert not errors, errors
    assert replies == {b"a": b"aa", b"b": b"bb"}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("size", [10, 70000])
def test_clients_sharing_a_master_each_get_exactly_their_replies(size):
    """Three clients run jobs at once through one Master and one worker,
    with small calls (batches forwarded by reference) and big ones (the
    queue's buffer handed to libzmq): each client gets its own replies,
    each once."""
    from pylm.servers import Master
    import threading
    pull, pub, wpull, wpush, db = tcp_addresses(5)
    master = Master("shared", pull, pub, wpull, wpush, db)
    n = 300 if size > 1000 else 3000
    results, errors = {}, []

    def run(tag):
        try:
            with Client("shared", db, timeout=TIMEOUT) as client:
                payloads = [tag + b"-%d-" % i + b"x" * size for i in range(n)]
                results[tag] = (sorted(client.job("shared.double", iter(payloads),
                                                  messages=n, timeout=30)),
                                sorted(p * 2 for p in payloads))
        except Exception as exc:        # reported below
            errors.append(exc)

    with running(master), running(Doubler("w1", db, credit=50)):
        threads = [threading.Thread(target=run, args=(b"c%d" % i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    assert sorted(results) == [b"c0", b"c1", b"c2"]
    for tag, (got, expected) in results.items():
        assert got == expected, tag
    assert master.stats["bad"] == 0


def test_the_router_sees_messages_a_handler_left_unread():
    """A handler that reads one message per call leaves the rest queued, and
    libzmq signals no new command for them: the Router's wait must still
    find them (wait_items asks every socket's events before it sleeps)."""
    ctx = context()
    tag = uuid.uuid4().hex
    control, stop = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    inbound, outbound = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    sockets = (control, stop, inbound, outbound)
    try:
        control.bind("inproc://control-" + tag)
        stop.connect("inproc://control-" + tag)
        inbound.bind("inproc://in-" + tag)
        outbound.connect("inproc://in-" + tag)
        for i in range(5):
            outbound.send(b"%d" % i)
        router = _core.Router()
        got = []

        def one(revents):
            got.append(inbound.recv(zmq.DONTWAIT))
            if len(got) == 5:
                router._quit()

        router._watch(inbound, one, zmq.POLLIN)
        loop = threading.Thread(target=router.run, args=(control,), daemon=True)
        loop.start()
        loop.join(TIMEOUT)
        if loop.is_alive():
            stop.send(b"")
            loop.join(TIMEOUT)
        assert got == [b"0", b"1", b"2", b"3", b"4"]
    finally:
        for sock in sockets:
            sock.close(linger=0)


class _Echo(Server):
    def f(self, payload):
        return payload


def test_a_server_reads_a_burst_longer_than_its_batch_without_a_tick():
    """More calls at once than the Executor takes per wake-up (BATCH): the
    rest stay queued with no new libzmq command to signal them, so the
    Router's wait must ask that socket again (it skips the ask only after
    the Executor's receive said EAGAIN: wait_items' `drained`).  With
    hold_replies=0 the Server has no tick that would wake it anyway: a
    wrong skip hangs here."""
    n = 3 * 256 + 5
    db, pull, pub = tcp_addresses(3)
    server = _Echo("burst", db, pull, pub, hold_replies=0)
    ctx = context()
    push, sub = ctx.socket(zmq.PUSH), ctx.socket(zmq.SUB)
    try:
        with running(server):
            sub.setsockopt(zmq.RCVTIMEO, TIMEOUT * 1000)
            sub.setsockopt(zmq.SUBSCRIBE, b"c")
            sub.setsockopt(zmq.SUBSCRIBE, _core.WELCOME)
            sub.connect(pub)
            assert sub.recv() == _core.WELCOME        # subscribed
            push.connect(pull)
            for i in range(n):
                push.send(test_parts.envelope(b"%d" % i, function="burst.f"))
            got = set()
            for _ in range(n):
                got.add(_core.PalmMessage.FromString(sub.recv_multipart()[-1]).payload)
            assert got == {b"%d" % i for i in range(n)}
    finally:
        push.close(linger=0)
        sub.close(linger=0)
