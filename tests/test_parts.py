"""The low-level API (pylm.parts): servers built from parts, over real
sockets.  The master built from parts serves pylm Workers in child
processes (pylm 0.14's PUSH/PULL mode) and a real Client; the other tests
put plain pyzmq peers on the outside of the parts."""

import contextlib
import json
import socket
import sys
import threading
from types import SimpleNamespace

import pytest
import zmq

import pylm._context
from pylm._cache import CacheClient
from pylm._testing import Running, peer_sockets, in_child, running, stop_all, tcp_addresses, wait_for
from pylm.clients import Client
from pylm.errors import RemoteError
from pylm.parts import core
from pylm.parts.connections import (PullBypassConnection, PullConnection, PushBypassConnection,
                                    PushConnection, RepConnection, SubConnection)
from pylm.parts.core import ACK, Outbound
from pylm.parts.messages_pb2 import PalmMessage
from pylm.parts.servers import BaseMaster, ServerTemplate
from pylm.parts.services import (CacheService, PubService, PullService, PushPullService,
                                 PushService, RepBypassService, RepService, WorkerPullService,
                                 WorkerPushService)
from pylm.servers import Worker

import legacy

TIMEOUT = 10  # seconds for anything that should answer
MS = 1000


def is_ready(server):
    return server.ready.is_set()


def envelope(payload=b"", function="server.f", **fields):
    return PalmMessage(pipeline="p", client="c", function=function, payload=payload,
                       **fields).SerializeToString()


def sockets():
    """The test's peer sockets (pylm._testing.peer_sockets)."""
    return peer_sockets(TIMEOUT)


@contextlib.contextmanager
def rep_peer(address, answer, bind=True):
    """A REP peer in a thread answering each request with answer(frame)."""
    stop = threading.Event()
    ctx = pylm._context.context()
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    (sock.bind if bind else sock.connect)(address)
    errors = []

    def serve():
        try:
            while not stop.is_set():
                if sock.poll(50):
                    sock.send(answer(sock.recv()))
        except Exception as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(TIMEOUT)
        sock.close(linger=0)
    assert not errors, errors


class ReqConnection(Outbound):
    """A user-made outbound part (as pylm 0.14 allowed): a REQ to a REP
    service; its answers are the feedback."""

    def __init__(self, name, listen_address, broker_address="inproc://broker", logger=None,
                 cache=None, messages=sys.maxsize):
        super().__init__(name, listen_address, zmq.REQ, reply=True,
                         broker_address=broker_address, logger=logger, cache=cache,
                         messages=messages)


def port_free(address):
    """Can `address` (tcp://host:port) be bound now (as libzmq binds)?"""
    host, port = address[len("tcp://"):].rsplit(":", 1)
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError:
            return False
    return True


def upper_envelope(frame):
    message = PalmMessage.FromString(frame)
    message.payload = message.payload.upper()
    return message.SerializeToString()


# -- names -----------------------------------------------------------------------------

def test_the_modules_have_pylm_014_names():
    import pylm.parts.connections as connections
    import pylm.parts.gateways as gateways
    import pylm.parts.servers as servers
    import pylm.parts.services as services
    import pylm.remote.server as remote

    expected = {
        core: ["Router", "Inbound", "Outbound", "BypassInbound", "BypassOutbound"],
        servers: ["ServerTemplate", "BaseMaster"],
        services: ["PullService", "PushService", "PubService", "RepService",
                   "WorkerPullService", "WorkerPushService", "PushPullService",
                   "RepBypassService", "CacheService", "HttpService"],
        connections: ["RepConnection", "SubConnection", "PullConnection", "PushConnection",
                      "PushBypassConnection", "PullBypassConnection", "HttpConnection"],
        gateways: ["GatewayRouter", "GatewayDealer", "HttpGateway"],
        remote: ["RequestHandler", "WSGIApplication", "DebugServer"],
    }
    for module, names in expected.items():
        missing = [name for name in names if not callable(getattr(module, name, None))]
        assert not missing, (module.__name__, missing)


def test_zmq_context_is_made_lazily_and_is_the_library_context():
    assert "zmq_context" not in vars(core)      # PEP 562: made on first access
    from pylm.parts.core import zmq_context

    assert zmq_context is pylm._context.context() is zmq.Context.instance()
    assert core.zmq_context is zmq_context
    assert "zmq_context" in dir(core)
    with pytest.raises(AttributeError):
        core.no_such_name


# -- a master built from parts, with pylm Workers in child processes -----------------

class EchoWorker(Worker):
    """Runs in a child process (spawned: module level)."""

    def tag(self, payload):
        return self.name.encode() + b":" + payload

    def fail(self, payload):
        raise ValueError("failed on " + payload.decode())


def parts_master(name, pull, pub, wpull, wpush, db, server_class=ServerTemplate, **kwargs):
    server = server_class(**kwargs)
    server.register_inbound(PullService, "Pull", pull, route="WorkerPush")
    server.register_inbound(WorkerPullService, "WorkerPull", wpull, route="Pub")
    server.register_outbound(WorkerPushService, "WorkerPush", wpush)
    server.register_outbound(PubService, "Pub", pub)
    server.register_bypass(CacheService, "Cache", db)
    server.preset_cache(name=name, db_address=db, pull_address=pull, pub_address=pub,
                        worker_pull_address=wpull, worker_push_address=wpush)
    return server


@pytest.fixture(scope="module")
def cluster():
    pull, pub, wpull, wpush, db = tcp_addresses(5)
    server = parts_master("parts", pull, pub, wpull, wpush, db)
    with running(server, ready=is_ready):
        procs = []
        try:
            for name in ("worker-a", "worker-b"):
                procs.append(in_child(EchoWorker, name, db))
            with Client("parts", db, timeout=TIMEOUT) as client:
                seen = set()

                def both_answered():
                    for reply in client.job("parts.tag", iter([b""] * 20), timeout=TIMEOUT):
                        seen.add(reply.split(b":")[0])
                    return seen == {b"worker-a", b"worker-b"}

                wait_for(both_answered, timeout=30, what="both workers answering")
                yield SimpleNamespace(server=server, client=client, db=db, pub=pub)
        finally:
            stop_all(procs)


def test_master_from_parts_eval(cluster):
    reply = cluster.client.eval("parts.tag", b"hello", timeout=TIMEOUT)
    name, _, payload = reply.partition(b":")
    assert payload == b"hello" and name in (b"worker-a", b"worker-b")
    assert cluster.client.eval(["parts.tag"], b"", timeout=TIMEOUT).endswith(b":")


def test_master_from_parts_job_spreads_over_both_workers(cluster):
    payloads = [b"%d" % i for i in range(400)]
    replies = list(cluster.client.job("parts.tag", iter(payloads), messages=400,
                                      timeout=TIMEOUT))
    assert sorted(r.partition(b":")[2] for r in replies) == sorted(payloads)
    assert {r.partition(b":")[0] for r in replies} == {b"worker-a", b"worker-b"}


def test_master_from_parts_reports_worker_errors_and_keeps_serving(cluster):
    with pytest.raises(RemoteError) as info:
        cluster.client.eval("parts.fail", b"this", timeout=TIMEOUT)
    assert info.value.remote_type == "ValueError"
    assert "failed on this" in info.value.remote_message
    assert cluster.client.eval("parts.tag", b"after", timeout=TIMEOUT).endswith(b":after")


def test_master_from_parts_serves_its_cache(cluster):
    cache = CacheClient(cluster.db, "parts", timeout=TIMEOUT)
    try:
        assert cache.request("get", b"name") == b"parts"
        assert cache.request("get", b"pub_address") == cluster.pub.encode()
        key = cluster.client.set(b"value")
        assert cluster.client.get(key) == b"value"
        assert cluster.server.cache.get(key) == b"value"
        cluster.client.delete(key)
        assert cluster.client.get(key) == b""
    finally:
        cache.close()


def test_a_second_client_gets_its_own_replies(cluster):
    with Client("parts", cluster.db, timeout=TIMEOUT) as other:
        replies = list(other.job("parts.tag", (b"o%d" % i for i in range(50)), messages=50,
                                 timeout=TIMEOUT))
        mine = cluster.client.eval("parts.tag", b"mine", timeout=TIMEOUT)
    assert sorted(r.partition(b":")[2] for r in replies) == sorted(b"o%d" % i for i in range(50))
    assert mine.endswith(b":mine")


def test_pylm_014_worker_and_client_with_a_master_from_parts(tmp_path):
    """Drop-in: a pylm 0.14 Worker serves the master built from parts, and
    a pylm 0.14 Client calls it (both from PyPI, in their own venv)."""
    try:
        python = legacy.ensure_legacy_venv()
    except legacy.LegacyUnavailable as exc:
        pytest.skip("pylm 0.14 cannot be installed here: %s" % exc)
    pull, pub, wpull, wpush, db = tcp_addresses(5)
    server = parts_master("parts", pull, pub, wpull, wpush, db)
    with running(server, ready=is_ready), \
            legacy.LegacyNode(python, tmp_path, "old-worker", "worker", "w1", db) as worker:
        worker.wait_line("READY")
        with Client("parts", db, timeout=TIMEOUT) as client:
            assert client.eval("parts.foo", b"new", timeout=TIMEOUT) == b"old-worker:new"
        # pylm 0.14's client makes a new SUB for each call and sends at once:
        # the PubService holds each reply until that subscription arrives
        # (pylm_core/subscriptions.pyx), so one plain run gets them all
        old = legacy.LegacyNode(python, tmp_path, "old-client", "client", "parts", db,
                                "--function", "parts.foo", "--evals", 2, "--job", 20)
        with old:
            assert old.wait_exit(40) == 0, old.logs()
            result = json.loads(old.wait_line("RESULT ")[len("RESULT "):])
    assert result["eval"] == ["old-worker:eval-0", "old-worker:eval-1"]
    assert sorted(result["job"]) == sorted("old-worker:job-%d" % i for i in range(20))
    assert (result["set"], result["get"]) == ("legacy-key", "legacy-value")


# -- hooks -------------------------------------------------------------------------------

class Twice(PullService):
    """scatter as a hook of a part: each call goes to the workers twice."""

    def scatter(self, message):
        for suffix in (b"-1", b"-2"):
            copy = PalmMessage.FromString(message.SerializeToString())
            copy.payload = message.payload + suffix
            yield copy


class HookedMaster(ServerTemplate, BaseMaster):
    """pylm 0.14 style: the server's own hooks handed to its parts."""

    def gather(self, message):
        yield self.change_payload(message, b"gathered " + message.payload)


class GatherPull(WorkerPullService):
    def scatter(self, message):
        return self.gather_hook(message)


def test_scatter_and_gather_hooks_of_parts(serve, make_client):
    pull, pub, wpull, wpush, db = tcp_addresses(5)
    server = HookedMaster()
    server.register_inbound(Twice, "Pull", pull, route="WorkerPush")
    gathered = server.register_inbound(GatherPull, "WorkerPull", wpull, route="Pub")
    gathered.gather_hook = server.gather
    server.register_outbound(WorkerPushService, "WorkerPush", wpush)
    server.register_outbound(PubService, "Pub", pub)
    server.register_bypass(CacheService, "Cache", db)
    server.preset_cache(name="hooked", pull_address=pull, pub_address=pub,
                        worker_pull_address=wpull, worker_push_address=wpush)
    serve(server, ready=is_ready)
    serve(EchoWorker("w", db))
    client = make_client("hooked", db, timeout=TIMEOUT)
    replies = client.eval("hooked.tag", b"x", messages=2, timeout=TIMEOUT)
    assert sorted(replies) == [b"gathered w:x-1", b"gathered w:x-2"]


def test_base_master_handle_stream():
    master = BaseMaster()
    master.name = "m"
    message = PalmMessage(client="the-client", stage=1)
    assert master.handle_stream(message) == ("the-client", message)
    master.pipelined = True
    topic, same = master.handle_stream(message)
    assert (topic, same.stage) == ("m", 2)
    assert list(master.scatter(message)) == [message] == list(master.gather(message))


class CustomTopic(PubService):
    """handle_stream overridden on a PubService: custom topic."""

    def handle_stream(self, message):
        return "custom", message


def test_pub_service_publishes_under_handle_stream_topics(serve):
    pull, pub = tcp_addresses(2)
    server = ServerTemplate()
    server.register_inbound(PullService, "Pull", pull, route="Pub")
    server.register_outbound(CustomTopic, "Pub", pub)
    serve(server, ready=is_ready)
    with sockets() as make:
        sub = make(zmq.SUB, connect=pub, SUBSCRIBE=b"custom")
        push = make(zmq.PUSH, connect=pull)

        def published():
            push.send(envelope(b"hi"))
            return sub.poll(100)

        wait_for(published, timeout=TIMEOUT, what="the subscription")
        topic, data = sub.recv_multipart()
    assert topic == b"custom" and PalmMessage.FromString(data).payload == b"hi"


# -- routing: blocking, rerouting, no lock-step ---------------------------------------------

def test_blocking_rep_gets_the_outbound_reply_and_the_feedback_is_rerouted(serve):
    rep, service, audit, pull, push = tcp_addresses(5)
    server = ServerTemplate()
    server.register_inbound(RepService, "Rep", rep, route="Req", block=True)
    server.register_outbound(ReqConnection, "Req", service, route="Audit")
    server.register_outbound(PushService, "Audit", audit)
    server.register_inbound(PullService, "Pull", pull, route="Push")
    server.register_outbound(PushService, "Push", push)
    release = threading.Event()

    def slow_upper(frame):
        release.wait(TIMEOUT)
        return upper_envelope(frame)

    with rep_peer(service, slow_upper), sockets() as make:
        serve(server, ready=is_ready)
        req = make(zmq.REQ, connect=rep)
        audited = make(zmq.PULL, connect=audit)
        flow_in = make(zmq.PUSH, connect=pull)
        flow_out = make(zmq.PULL, connect=push)
        req.send(envelope(b"slow call"))
        # While the REQ service holds the blocking call, the loop routes
        # other messages: no lock-step between parts.
        for i in range(50):
            flow_in.send(envelope(b"%d" % i))
        got = [PalmMessage.FromString(flow_out.recv()).payload for _ in range(50)]
        assert got == [b"%d" % i for i in range(50)]
        assert not req.poll(50)
        release.set()
        assert req.poll(TIMEOUT * MS)
        reply = PalmMessage.FromString(req.recv())
        assert reply.payload == b"SLOW CALL" and reply.client == "c"
        assert PalmMessage.FromString(audited.recv()).payload == b"SLOW CALL"
        # the REP takes the next request once it answered
        req.send(envelope(b"again"))
        assert PalmMessage.FromString(req.recv()).payload == b"AGAIN"


def test_rep_without_route_answers_the_ack_and_rep_connection_connects(serve):
    rep, rep_out = tcp_addresses(2)
    server = ServerTemplate()
    server.register_inbound(RepService, "Rep", rep)
    server.register_inbound(RepConnection, "RepConn", rep_out)
    serve(server, ready=is_ready)
    with sockets() as make:
        req = make(zmq.REQ, connect=rep)
        req.send(envelope(b"x"))
        assert req.recv() == ACK
        asker = make(zmq.REQ, bind=rep_out)       # RepConnection connects to it
        asker.send(envelope(b"y"))
        assert asker.recv() == ACK


class FailingScatter(RepService):
    def scatter(self, message):
        if message.payload == b"boom":
            raise ValueError("scatter exploded")
        yield message


def test_a_failing_hook_answers_an_error_envelope_and_the_part_keeps_serving(serve, caplog):
    rep, service, pull, push = tcp_addresses(4)
    server = ServerTemplate()
    server.register_inbound(FailingScatter, "Rep", rep, route="Req", block=True)
    server.register_outbound(ReqConnection, "Req", service)
    server.register_inbound(PullService, "Pull", pull, route="Push")
    server.register_outbound(PushService, "Push", push)
    with rep_peer(service, upper_envelope), sockets() as make:
        serve(server, ready=is_ready)
        req = make(zmq.REQ, connect=rep)
        req.send(envelope(b"boom"))
        reply = PalmMessage.FromString(req.recv())
        error = RemoteError.from_wire(reply.error)
        assert error.remote_type == "ValueError" and "scatter exploded" in error.remote_message
        req.send(b"\xff\xff not an envelope")
        assert req.recv() == b""
        req.send(envelope(b"fine"))
        assert PalmMessage.FromString(req.recv()).payload == b"FINE"
        # a PULL part drops what is no envelope, and goes on
        push_in = make(zmq.PUSH, connect=pull)
        pull_out = make(zmq.PULL, connect=push)
        push_in.send(b"\x07garbage")
        push_in.send(envelope(b"next"))
        assert PalmMessage.FromString(pull_out.recv()).payload == b"next"
    assert "scatter exploded" in caplog.text


def test_an_outbound_without_a_peer_does_not_hold_up_the_loop(serve):
    pull, push, db = tcp_addresses(3)
    server = ServerTemplate()
    server.register_inbound(PullService, "Pull", pull, route="Push")
    server.register_outbound(PushService, "Push", push)
    server.register_bypass(CacheService, "Cache", db)
    server.preset_cache(name="lonely")
    serve(server, ready=is_ready)
    cache = CacheClient(db, "lonely", timeout=TIMEOUT)
    try:
        with sockets() as make:
            sender = make(zmq.PUSH, connect=pull)
            for i in range(3):
                sender.send(envelope(b"%d" % i))
            # the loop took all three for the PUSH that has no peer ...
            wait_for(lambda: server.router.routed == 3, timeout=TIMEOUT,
                     what="the three messages routed")
            # ... and goes on (pylm 0.14 blocked here: the cache waited)
            assert cache.request("get", b"name") == b"lonely"
            receiver = make(zmq.PULL, connect=push)
            got = [PalmMessage.FromString(receiver.recv()).payload for _ in range(3)]
        assert got == [b"0", b"1", b"2"]
    finally:
        cache.close()


def test_a_full_outbound_pauses_only_the_inbound_parts_that_feed_it(serve, monkeypatch):
    monkeypatch.setattr(core, "BACKLOG_LIMIT", 5)
    pull, push, pull2, push2 = tcp_addresses(4)
    server = ServerTemplate()
    server.register_inbound(PullService, "Pull", pull, route="Push")
    stuck = server.register_outbound(PushService, "Push", push)
    server.register_inbound(PullService, "Pull2", pull2, route="Push2")
    server.register_outbound(PushService, "Push2", push2)
    serve(server, ready=is_ready)
    with sockets() as make:
        sender = make(zmq.PUSH, connect=pull)
        for i in range(20):
            sender.send(envelope(b"%d" % i))
        # the other path flows while Push has no peer and holds its limit
        sender2 = make(zmq.PUSH, connect=pull2)
        receiver2 = make(zmq.PULL, connect=push2)
        for i in range(3):
            sender2.send(envelope(b"other %d" % i))
            assert PalmMessage.FromString(receiver2.recv()).payload == b"other %d" % i
        wait_for(lambda: stuck._backlog_size() == 5, timeout=TIMEOUT, what="a full backlog")
        # one more round of the loop (a message through the other path) ...
        sender2.send(envelope(b"other 3"))
        assert PalmMessage.FromString(receiver2.recv()).payload == b"other 3"
        assert stuck._backlog_size() == 5       # ... and the rest waits in the PULL's queue
        receiver = make(zmq.PULL, connect=push)
        got = [PalmMessage.FromString(receiver.recv()).payload for _ in range(20)]
    assert got == [b"%d" % i for i in range(20)]


def test_router_messages_makes_start_return():
    pull, push = tcp_addresses(2)
    server = ServerTemplate(router_messages=5)
    server.register_inbound(PullService, "Pull", pull, route="Push")
    server.register_outbound(PushService, "Push", push)
    with sockets() as make:
        receiver = make(zmq.PULL, bind=None, connect=push)
        for round in range(2):      # and it starts again
            if round:
                # libzmq closes a listener in its I/O thread, shortly after close()
                wait_for(lambda: all(port_free(a) for a in (pull, push)), timeout=TIMEOUT,
                         what="the ports of the first run closed")
            thread = threading.Thread(target=server.start, daemon=True)
            thread.start()
            # a new PUSH each round: one that was connected to the first run
            # may still hold its pipe to that closed server, and a message
            # it puts there is lost (libzmq notices the close later)
            sender = make(zmq.PUSH, connect=pull)
            for i in range(5):
                sender.send(envelope(b"%d" % i))
            thread.join(TIMEOUT)
            assert not thread.is_alive()
            assert server.router.routed == 5
            got = [PalmMessage.FromString(receiver.recv()).payload for _ in range(5)]
            assert got == [b"%d" % i for i in range(5)]


def test_an_outbound_part_past_its_messages_drops_the_rest_and_serves_on():
    pull, push = tcp_addresses(2)
    server = ServerTemplate()
    server.register_inbound(PullService, "Pull", pull, route="Push")
    outbound = server.register_outbound(PushService, "Push", push, messages=3)
    with sockets() as make:
        receiver = make(zmq.PULL, bind=None, connect=push)
        with running(server, ready=is_ready):
            sender = make(zmq.PUSH, connect=pull)
            for i in range(5):
                sender.send(envelope(b"%d" % i))
            got = [PalmMessage.FromString(receiver.recv()).payload for _ in range(3)]
            wait_for(lambda: outbound._taken == 5, timeout=TIMEOUT, what="5 messages routed")
            assert server.router.routed == 5
            assert got == [b"0", b"1", b"2"]
            assert not receiver.poll(200)       # the two past the limit were dropped

def test_an_unknown_route_is_an_error_at_start():
    server = ServerTemplate()
    server.register_inbound(PullService, "Pull", tcp_addresses(1)[0], route="Nowhere")
    with pytest.raises(ValueError, match="Nowhere"):
        server.start()
    with pytest.raises(ValueError, match="registered already"):
        server.register_outbound(PushService, "Pull", tcp_addresses(1)[0])


def test_stop_while_a_blocking_call_waits_for_a_silent_peer():
    rep, silent = tcp_addresses(2)
    server = ServerTemplate()
    server.register_inbound(RepService, "Rep", rep, route="Req", block=True)
    server.register_outbound(ReqConnection, "Req", silent)
    with sockets() as make:
        peer = make(zmq.REP, bind=silent)     # connected, never answers
        with running(server, ready=is_ready):
            req = make(zmq.REQ, connect=rep)
            req.send(envelope(b"never answered"))
            # the call reached the silent peer: the server waits for its answer
            assert peer.poll(TIMEOUT * MS)
        # running() stopped it: start() returned though the call still
        # waits (else ServerFailed, pylm._testing.STOP_TIMEOUT after stop(),
        # when it should return at once)
    assert not server.ready.is_set()


# -- connections -----------------------------------------------------------------------

def test_sub_pull_and_push_connections(serve):
    pub, sink, source, sink2 = tcp_addresses(4)
    server = ServerTemplate()
    server.register_inbound(SubConnection, "Sub", pub, route="Push", previous="wanted")
    server.register_outbound(PushConnection, "Push", sink)
    server.register_inbound(PullConnection, "Pull", source, route="Push2")
    server.register_outbound(PushConnection, "Push2", sink2)
    with sockets() as make:
        publisher = make(zmq.PUB, bind=pub)
        receiver = make(zmq.PULL, bind=sink)
        feeder = make(zmq.PUSH, bind=source)
        receiver2 = make(zmq.PULL, bind=sink2)
        serve(server, ready=is_ready)

        def arrived():
            publisher.send_multipart([b"other", envelope(b"not for us")])
            publisher.send_multipart([b"wanted", envelope(b"for us")])
            return receiver.poll(100)

        wait_for(arrived, timeout=TIMEOUT, what="the subscription")
        assert PalmMessage.FromString(receiver.recv()).payload == b"for us"
        feeder.send(envelope(b"pulled"))
        assert PalmMessage.FromString(receiver2.recv()).payload == b"pulled"


class Collect(PullBypassConnection):
    def recv(self):
        data = self.listen_to.recv()
        self.got.append(PalmMessage.FromString(data).payload)
        return data


class Announce(PullService):
    """A hook that sends on a bypass part."""

    def scatter(self, message):
        self.announcer.send(b"seen " + message.payload)
        yield message


def test_bypass_parts(serve):
    pull, logs, source, rep_bypass = tcp_addresses(4)
    server = ServerTemplate()
    announce = server.register_inbound(Announce, "Pull", pull)
    announce.announcer = server.register_bypass(PushBypassConnection, "Log", logs)
    collect = server.register_bypass(Collect, "Collect", source)
    collect.got = []
    server.register_bypass(RepBypassService, "RepBypass", rep_bypass)
    with sockets() as make:
        log_sink = make(zmq.PULL, bind=logs)
        feeder = make(zmq.PUSH, bind=source)
        serve(server, ready=is_ready)
        make(zmq.PUSH, connect=pull).send(envelope(b"m"))
        assert log_sink.recv() == b"seen m"
        feeder.send(envelope(b"collected"))
        wait_for(lambda: collect.got == [b"collected"], timeout=TIMEOUT, what="recv()")
        req = make(zmq.REQ, connect=rep_bypass)
        req.send(b"anything")
        assert req.recv() == b""
    assert server.router.routed == 1    # only the Pull part's message was routed


def test_push_pull_service_waits_for_each_worker_answer(serve):
    rep, push, pull = tcp_addresses(3)
    server = ServerTemplate()
    server.register_inbound(RepService, "Rep", rep, route="Workers", block=True)
    server.register_outbound(PushPullService, "Workers", push, pull_address=pull)
    stop = threading.Event()
    with sockets() as make:
        work = make(zmq.PULL, connect=push)
        done = make(zmq.PUSH, connect=pull)

        def worker():
            while not stop.is_set():
                if work.poll(50):
                    done.send(upper_envelope(work.recv()))

        thread = threading.Thread(target=worker, daemon=True)
        serve(server, ready=is_ready)
        thread.start()
        try:
            req = make(zmq.REQ, connect=rep)
            for word in (b"one", b"two"):
                req.send(envelope(word))
                assert PalmMessage.FromString(req.recv()).payload == word.upper()
        finally:
            stop.set()
            thread.join(TIMEOUT)


def test_cache_service_alone():
    (db,) = tcp_addresses(1)
    service = CacheService("cache", db)
    service.cache.set(b"v", "k")
    with running(service, ready=lambda s: s.listen_to is not None):
        cache = CacheClient(db, "x", timeout=TIMEOUT)
        try:
            assert cache.request("get", b"k") == b"v"
            key = cache.request("set", b"new").decode()
            assert service.cache.get(key) == b"new"
        finally:
            cache.close()


def test_a_bypass_part_alone_returns_after_its_messages():
    """start() of a part served alone runs a core Router of its own and
    returns by itself once `messages` requests were read."""
    (db,) = tcp_addresses(1)
    service = CacheService("cache", db, messages=3)
    service.cache.set(b"v", "k")
    run = Running(service, {})
    run.thread.start()
    cache = CacheClient(db, "x", timeout=TIMEOUT)
    try:
        assert [cache.request("get", b"k") for _ in range(3)] == [b"v"] * 3
        run.join(TIMEOUT)           # returned by itself, and did not raise
    finally:
        cache.close()
        service.stop()
        run.thread.join(TIMEOUT)
    assert service.listen_to is None or service.listen_to.closed

class AckServer(ServerTemplate):
    """A server from parts that runs in a child process."""

    def __init__(self, rep, db):
        super().__init__()
        self.register_inbound(RepService, "Rep", rep)
        self.register_bypass(CacheService, "Cache", db)
        self.preset_cache(name="ack")


def test_a_server_from_parts_in_a_child_process_stops_on_sigterm(child):
    rep, db = tcp_addresses(2)
    proc = child(AckServer, rep, db)
    cache = CacheClient(db, "ack", timeout=TIMEOUT)
    try:
        assert cache.request("get", b"name") == b"ack"      # it serves
    finally:
        cache.close()
    with sockets() as make:
        req = make(zmq.REQ, connect=rep)
        req.send(envelope(b"x"))
        assert req.recv() == ACK
    proc.stop()
    assert proc.exitcode == 0       # start() returned on SIGTERM: a clean exit


def test_the_server_logger_has_no_handlers_of_its_own():
    server = ServerTemplate(logging_level=10)
    assert server.logger.handlers == [] and server.logger.level == 10
    assert ServerTemplate().cache is not server.cache
