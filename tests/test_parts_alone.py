"""pylm 0.14's parts run alone (shared/API.md, "Low-level API"): each part's
``start()`` serves its own socket and talks to a broker at
``broker_address``, in the style of pylm 0.14's own tests: the part in a
thread, inproc addresses, a fake broker socket made by the test, and
``messages=`` to make start() return.  Inbound parts send each envelope to
a bound ROUTER (or REP) over a REQ named after the part; outbound parts
read theirs from a bound REQ (or ROUTER) over a REP.  HTTP parts are
served over real HTTP on 127.0.0.1."""

import contextlib
import http.client
import http.server
import threading
import uuid

import pytest
import zmq

from pylm._cache import CacheClient
from pylm._testing import Running, peer_sockets, free_port, tcp_addresses, wait_for
from pylm.parts import core
from pylm.parts.connections import (HttpConnection, PullBypassConnection, PullConnection,
                                    PushBypassConnection, PushConnection, RepConnection,
                                    SubConnection)
from pylm.parts.core import ACK, Outbound, Router
from pylm.parts.gateways import GatewayDealer, GatewayRouter, HttpGateway
from pylm.parts.messages_pb2 import PalmMessage
from pylm.parts.services import (CacheService, HttpService, PubService, PullService,
                                 PushPullService, PushService, RepBypassService, RepService,
                                 WorkerPullService, WorkerPushService)
from pylm.security import generate_keys

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 10  # seconds for anything that should answer
MS = 1000
N = 3         # messages per part


def inproc(what):
    return "inproc://alone-%s-%s" % (what, uuid.uuid4().hex)


def envelope(payload=b"", client="c", function="server.f", **fields):
    return PalmMessage(pipeline="p", client=client, function=function, payload=payload,
                       **fields)


def sockets():
    """The test's peer sockets (pylm._testing.peer_sockets)."""
    return peer_sockets(TIMEOUT)


class _Starter:
    """What Running runs: `part`'s `method` as start()."""

    def __init__(self, part, method):
        self.part, self.method, self.name = part, method, getattr(part, "name", "part")

    def start(self):
        return getattr(self.part, self.method)()


@contextlib.contextmanager
def alone(part, returns=True, method="start"):
    """part.start() (or `method`) in a thread; with `returns`, it must
    return by itself (its `messages` were served) by the end of the block,
    else it is stopped.  Either way the thread is joined (bounded)."""
    run = Running(_Starter(part, method), {})
    run.thread.start()
    try:
        yield run
        if returns:
            run.join(TIMEOUT)
    finally:
        part.stop()
        run.thread.join(TIMEOUT)
    assert not run.thread.is_alive()
    run.check()


def test_zmq_context_is_the_library_context():
    import pylm._context
    assert core.zmq_context is pylm._context.context()
    from pylm.parts.core import zmq_context
    assert isinstance(zmq_context, zmq.Context)


# -- inbound parts: peer -> part -> REQ -> broker (ROUTER) ------------------------

def _pull_service(listen, broker):
    return PullService("in", listen, broker_address=broker, messages=N), zmq.PUSH, "connect"


def _pull_connection(listen, broker):
    return PullConnection("in", listen, broker_address=broker, messages=N), zmq.PUSH, "bind"


def _worker_pull_service(listen, broker):
    return (WorkerPullService("in", listen, broker_address=broker, messages=N), zmq.PUSH,
            "connect")


def _rep_service(listen, broker):
    return RepService("in", listen, broker_address=broker, messages=N), zmq.REQ, "connect"


def _rep_connection(listen, broker):
    return RepConnection("in", listen, broker_address=broker, messages=N), zmq.REQ, "bind"


INBOUND = {"PullService": _pull_service, "PullConnection": _pull_connection,
           "WorkerPullService": _worker_pull_service, "RepService": _rep_service,
           "RepConnection": _rep_connection}


@pytest.mark.parametrize("kind", sorted(INBOUND))
def test_an_inbound_part_alone_sends_each_message_to_its_broker(kind):
    listen, broker_address = inproc("listen"), inproc("broker")
    with sockets() as make:
        broker = make(zmq.ROUTER, bind=broker_address)
        part, peer_type, peer_side = INBOUND[kind](listen, broker_address)
        peer = make(peer_type)
        if peer_side == "bind":
            peer.bind(listen)
        with alone(part):
            if peer_side == "connect":
                wait_for(lambda: part.listen_to is not None, TIMEOUT)
                peer.connect(listen)
            for i in range(N):
                peer.send(envelope(b"m%d" % i).SerializeToString())
                identity, empty, data = broker.recv_multipart()
                # pylm 0.14's frames: a REQ named after the part, one envelope
                assert (identity, empty) == (b"in", b"")
                message = PalmMessage.FromString(data)
                assert message.payload == b"m%d" % i
                if kind == "WorkerPullService":
                    assert message.cache == ""      # results keep their envelope
                else:
                    assert message.cache            # a new key, as in a server
                broker.send_multipart([identity, b"", b"answer %d" % i])
                if peer_type == zmq.REQ:
                    assert peer.recv() == b"answer %d" % i     # the broker's answer
        assert part.listen_to is None


def test_a_sub_connection_alone_subscribes_and_sends_to_its_broker():
    listen, broker_address = inproc("pub"), inproc("broker")
    with sockets() as make:
        broker = make(zmq.ROUTER, bind=broker_address)
        pub = make(zmq.XPUB, bind=listen)
        part = SubConnection("sub", listen, "topic", broker_address=broker_address,
                             messages=N)
        with alone(part):
            assert pub.recv() == b"\x01topic"       # its subscription
            for i in range(N):
                pub.send_multipart([b"topic", envelope(b"s%d" % i).SerializeToString()])
                identity, empty, data = broker.recv_multipart()
                assert (identity, empty) == (b"sub", b"")
                assert PalmMessage.FromString(data).payload == b"s%d" % i
                broker.send_multipart([identity, b"", ACK])


def test_a_rep_service_alone_works_with_a_rep_broker_and_answers_errors():
    """A REP broker (pylm 0.14 tests used both); a request that is no
    envelope is answered b'' and not sent on; a scatter that raises is
    answered with the error envelope."""
    class Failing(RepService):
        def scatter(self, message):
            if message.payload == b"boom":
                raise ValueError("boom")
            yield message

    listen, broker_address = inproc("rep"), inproc("broker")
    with sockets() as make:
        broker = make(zmq.REP, bind=broker_address)
        part = Failing("rep", listen, broker_address=broker_address, messages=3)
        with alone(part):
            wait_for(lambda: part.listen_to is not None, TIMEOUT)
            req = make(zmq.REQ, connect=listen)
            req.send(b"not an envelope")
            assert req.recv() == b""
            req.send(envelope(b"boom").SerializeToString())
            assert "boom" in PalmMessage.FromString(req.recv()).error
            req.send(envelope(b"ok").SerializeToString())
            assert PalmMessage.FromString(broker.recv()).payload == b"ok"
            broker.send(b"fine")
            assert req.recv() == b"fine"


def test_a_gateway_router_alone_sends_requests_and_delivers_dealer_answers():
    listen, broker_address = inproc("gw"), inproc("broker")
    with sockets() as make:
        broker = make(zmq.ROUTER, bind=broker_address)
        # messages counts what its socket reads: requests and the dealer's answers
        part = GatewayRouter("gw", listen, broker_address=broker_address, messages=3)
        with alone(part):
            wait_for(lambda: part.listen_to is not None, TIMEOUT)
            request = make(zmq.DEALER, connect=listen, IDENTITY=b"req-1")
            dealer = make(zmq.DEALER, connect=listen, IDENTITY=b"dealer")
            request.send_multipart([b"", envelope(b"q", client="req-1").SerializeToString()])
            identity, empty, data = broker.recv_multipart()
            assert (identity, empty) == (b"gw", b"")
            assert PalmMessage.FromString(data).payload == b"q"
            broker.send_multipart([identity, b"", ACK])
            # pylm 0.14's GatewayDealer answers through the router's socket
            dealer.send_multipart([b"req-1", b"", b"the answer"])
            assert request.recv_multipart() == [b"", b"the answer"]
            request.send_multipart([b"", envelope(b"r").SerializeToString()])
            identity, empty, data = broker.recv_multipart()
            broker.send_multipart([identity, b"", ACK])


# -- outbound parts: broker (REQ) -> REP -> part -> peer ----------------------------

@pytest.mark.parametrize("cls,peer_side", [(PushService, "connect"),
                                           (WorkerPushService, "connect"),
                                           (PushConnection, "bind")])
def test_a_push_part_alone_sends_what_its_broker_gives(cls, peer_side):
    listen, broker_address = inproc("push"), inproc("broker")
    with sockets() as make:
        broker = make(zmq.REQ, bind=broker_address)
        peer = make(zmq.PULL)
        if peer_side == "bind":
            peer.bind(listen)
        part = cls("out", listen, broker_address=broker_address, messages=N)
        with alone(part):
            if peer_side == "connect":
                wait_for(lambda: part.listen_to is not None, TIMEOUT)
                peer.connect(listen)
            for i in range(N):
                broker.send(envelope(b"o%d" % i).SerializeToString())
                assert PalmMessage.FromString(peer.recv()).payload == b"o%d" % i
                assert broker.recv() == b""     # no answers: the feedback is empty


def test_an_outbound_part_alone_answers_a_router_broker_by_name():
    """The broker may be a ROUTER, as pylm 0.14's Router was: it sends
    ``[name, b'', data]`` to the part's REP, named after the part."""
    listen, broker_address = inproc("push"), inproc("broker")
    with sockets() as make:
        broker = make(zmq.ROUTER, bind=broker_address, ROUTER_MANDATORY=1)
        peer = make(zmq.PULL, bind=listen)
        part = PushConnection("out", listen, broker_address=broker_address, messages=1)
        with alone(part):
            message = envelope(b"x").SerializeToString()

            def sent():
                try:
                    broker.send_multipart([b"out", b"", message], zmq.NOBLOCK)
                    return True
                except zmq.ZMQError:        # EHOSTUNREACH: not connected yet
                    return False

            wait_for(sent, TIMEOUT)
            assert PalmMessage.FromString(peer.recv()).payload == b"x"
            assert broker.recv_multipart() == [b"out", b"", b""]


def test_a_pub_service_alone_publishes_under_the_client_topic():
    listen, broker_address = inproc("pub"), inproc("broker")
    with sockets() as make:
        broker = make(zmq.REQ, bind=broker_address)
        part = PubService("pub", listen, broker_address=broker_address, messages=N)
        with alone(part):
            wait_for(lambda: part.listen_to is not None, TIMEOUT)
            sub = make(zmq.SUB, connect=listen, SUBSCRIBE=b"")
            sub.recv()                          # the welcome: subscribed
            for i in range(N):
                broker.send(envelope(b"p%d" % i, client="me").SerializeToString())
                topic, data = sub.recv_multipart()
                assert topic == b"me" and PalmMessage.FromString(data).payload == b"p%d" % i
                assert broker.recv() == b""


def test_a_push_pull_service_alone_feeds_back_the_workers_answers():
    push, pull, broker_address = inproc("push"), inproc("pull"), inproc("broker")
    with sockets() as make:
        broker = make(zmq.REQ, bind=broker_address)
        part = PushPullService("pp", push, pull, broker_address=broker_address, messages=N)
        with alone(part):
            wait_for(lambda: part.pull is not None, TIMEOUT)
            work = make(zmq.PULL, connect=push)
            done = make(zmq.PUSH, connect=pull)
            for i in range(N):
                broker.send(envelope(b"w%d" % i).SerializeToString())
                message = PalmMessage.FromString(work.recv())
                message.payload = message.payload.upper()
                done.send(message.SerializeToString())
                assert PalmMessage.FromString(broker.recv()).payload == b"W%d" % i


def test_a_gateway_dealer_alone_answers_through_its_dealer():
    listen, broker_address = inproc("gw"), inproc("broker")
    with sockets() as make:
        broker = make(zmq.REQ, bind=broker_address)
        gateway = make(zmq.ROUTER, bind=listen)
        part = GatewayDealer("gd", listen, broker_address=broker_address, messages=1)
        with alone(part):
            broker.send(envelope(b"a", client="req-9").SerializeToString())
            dealer, target, empty, data = gateway.recv_multipart()
            assert (dealer, target, empty) == (b"dealer", b"req-9", b"")
            assert PalmMessage.FromString(data).payload == b"a"
            assert broker.recv() == b""


# -- bypass parts --------------------------------------------------------------------

def test_bypass_parts_alone():
    rep, pull, push = inproc("rep"), inproc("pull"), inproc("push")
    got = []

    class Collect(PullBypassConnection):
        def recv(self, reply_data=None):
            got.append(super().recv())
            return got[-1]

    with sockets() as make:
        feeder = make(zmq.PUSH, bind=pull)
        sink = make(zmq.PULL, bind=push)
        service = RepBypassService("rep", rep, messages=1)
        reader = Collect("pull", pull, messages=2)
        writer = PushBypassConnection("push", push)
        with alone(service), alone(reader):
            wait_for(lambda: service.listen_to is not None, TIMEOUT)
            req = make(zmq.REQ, connect=rep)
            req.send(b"hello")
            assert req.recv() == b""
            feeder.send(b"one")
            feeder.send(b"two")
            assert writer.start() == b"push"
            try:
                writer.send(b"out")
                assert sink.recv() == b"out"
            finally:
                writer.cleanup()
        assert got == [b"one", b"two"]


def test_a_cache_service_alone_serves_the_cache():
    (db,) = tcp_addresses(1)
    service = CacheService("cache", db, messages=2)
    with alone(service):
        cache = CacheClient(db, "x", timeout=TIMEOUT)
        try:
            key = cache.request("set", b"v").decode()
            assert cache.request("get", key.encode()) == b"v"
        finally:
            cache.close()


def test_a_part_alone_uses_its_own_curve_keys(tmp_path):
    """A part run alone keeps the CURVE keywords: its socket is a CURVE
    server with its own secret key; a client with its public key gets
    through."""
    server_public, server_secret = generate_keys(tmp_path, "server")
    client_public, client_secret = generate_keys(tmp_path, "client")
    (listen,) = tcp_addresses(1)
    broker_address = inproc("broker")
    part = PullService("in", listen, broker_address=broker_address, messages=1,
                       secret_key=server_secret)
    public, _ = zmq.auth.load_certificate(server_public)
    c_public, c_secret = zmq.auth.load_certificate(client_secret)
    with sockets() as make:
        broker = make(zmq.ROUTER, bind=broker_address)
        with alone(part):
            push = make(zmq.PUSH, CURVE_SERVERKEY=public, CURVE_PUBLICKEY=c_public,
                        CURVE_SECRETKEY=c_secret)
            push.connect(listen)
            push.send(envelope(b"secret").SerializeToString())
            identity, _, data = broker.recv_multipart()
            assert PalmMessage.FromString(data).payload == b"secret"
            broker.send_multipart([identity, b"", ACK])
        assert part.listen_to is None


# -- HTTP, over real HTTP on 127.0.0.1 -----------------------------------------------

def _post(port, body, path="/"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("POST", path, body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("how", ["start", "debug"])
def test_an_http_service_alone_posts_to_its_broker(how):
    broker_address = inproc("broker")
    with sockets() as make:
        broker = make(zmq.ROUTER, bind=broker_address)
        part = HttpService("web", "127.0.0.1", 0, broker_address=broker_address, messages=2)
        with alone(part, method=how):
            wait_for(lambda: part.address is not None, TIMEOUT)
            port = part.address[1]
            results = []
            poster = threading.Thread(target=lambda: results.append(
                _post(port, envelope(b"h").SerializeToString())), daemon=True)
            poster.start()
            identity, empty, data = broker.recv_multipart()
            assert (identity, empty) == (b"web", b"")
            assert PalmMessage.FromString(data).payload == b"h"
            broker.send_multipart([identity, b"", b"from the broker"])
            poster.join(TIMEOUT)
            assert results == [(200, b"from the broker")]
            assert _post(port, b"no envelope")[0] == 400


class _Upper(http.server.BaseHTTPRequestHandler):
    """An HTTP worker: answers each POSTed envelope with its payload upper-cased."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        message = PalmMessage.FromString(self.rfile.read(int(self.headers["Content-Length"])))
        message.payload = message.payload.upper()
        body = message.SerializeToString()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_an_http_connection_alone_posts_what_its_broker_gives():
    worker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upper)
    serving = threading.Thread(target=worker.serve_forever, daemon=True)
    serving.start()
    broker_address = inproc("broker")
    try:
        with sockets() as make:
            broker = make(zmq.REQ, bind=broker_address)
            part = HttpConnection("http", "http://127.0.0.1:%d/" % worker.server_address[1],
                                  broker_address=broker_address, messages=N)
            with alone(part):
                for i in range(N):
                    broker.send(envelope(b"h%d" % i).SerializeToString())
                    assert PalmMessage.FromString(broker.recv()).payload == b"H%d" % i
    finally:
        worker.shutdown()
        worker.server_close()
        serving.join(TIMEOUT)


def test_an_http_gateway_of_parts_alone_around_a_fake_broker():
    """HttpGateway, GatewayRouter and GatewayDealer each alone; the test is
    the broker (and the workers): what the router sends, it answers and
    hands to the dealer with the result."""
    gw, broker_in, broker_out = inproc("gw"), inproc("in"), inproc("out")
    with sockets() as make:
        inbound = make(zmq.ROUTER, bind=broker_in)
        outbound = make(zmq.REQ, bind=broker_out)
        router = GatewayRouter("gw", gw, broker_address=broker_in, messages=2)
        dealer = GatewayDealer("gd", gw, broker_address=broker_out, messages=1)
        web = HttpGateway("web", gw, "127.0.0.1", 0)
        with alone(router), alone(dealer), alone(web, returns=False):
            wait_for(lambda: web.address is not None and router.listen_to is not None,
                     TIMEOUT)
            results = []
            poster = threading.Thread(target=lambda: results.append(
                _post(web.address[1], b"abc", "/upper")), daemon=True)
            poster.start()
            identity, _, data = inbound.recv_multipart()
            inbound.send_multipart([identity, b"", ACK])
            message = PalmMessage.FromString(data)
            assert message.function == "_.upper"
            message.payload = message.payload.upper()
            outbound.send(message.SerializeToString())
            assert outbound.recv() == b""
            poster.join(TIMEOUT)
            assert results == [(200, b"ABC")]


# -- servers without a Router, and with ours as the broker ---------------------------

def test_a_routerless_server_of_parts_alone_around_a_rep_broker():
    """A RepService and a PullService in threads send to a REP broker (a
    thread), which answers the requests itself and passes the pushed
    messages on to a PushService alone."""
    rep, pull, push = inproc("rep"), inproc("pull"), inproc("push")
    broker_in, broker_out = inproc("in"), inproc("out")
    n = 20
    errors = []
    stop = threading.Event()

    with sockets() as make:
        broker = make(zmq.REP, bind=broker_in)
        onward = make(zmq.REQ, bind=broker_out)

        def serve():
            try:
                while not stop.is_set():
                    if not broker.poll(50):
                        continue
                    message = PalmMessage.FromString(broker.recv())
                    if message.function == "server.ask":
                        broker.send(message.payload.upper())
                    else:
                        onward.send(message.SerializeToString())
                        onward.recv()
                        broker.send(ACK)
            except Exception as exc:  # reported by the test
                errors.append(exc)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        parts = [RepService("rep", rep, broker_address=broker_in, messages=n),
                 PullService("pull", pull, broker_address=broker_in, messages=n),
                 PushService("push", push, broker_address=broker_out, messages=n)]
        try:
            with alone(parts[0]), alone(parts[1]), alone(parts[2]):
                wait_for(lambda: all(p.listen_to is not None for p in parts), TIMEOUT)
                req = make(zmq.REQ, connect=rep)
                sender = make(zmq.PUSH, connect=pull)
                sink = make(zmq.PULL, connect=push)
                for i in range(n):
                    req.send(envelope(b"q%d" % i, function="server.ask").SerializeToString())
                    assert req.recv() == b"Q%d" % i
                    sender.send(envelope(b"p%d" % i).SerializeToString())
                assert sorted(PalmMessage.FromString(sink.recv()).payload
                              for _ in range(n)) == sorted(b"p%d" % i for i in range(n))
        finally:
            stop.set()
            thread.join(TIMEOUT)
    assert not errors, errors


def test_parts_alone_with_our_router_as_their_broker():
    """Our Router is the broker: its RepService receives what a PullService
    alone sends, and its REQ outbound gives it to a PushConnection alone."""
    pull, push = inproc("pull"), inproc("push")
    broker_in, broker_out = inproc("in"), inproc("out")
    n = 10
    router = Router(messages=n)
    router.register_inbound("rep", route="req", block=True,
                            part=RepService("rep", broker_in))
    router.register_outbound("req", part=Outbound("req", broker_out, zmq.REQ, reply=True,
                                                  bind=True))
    with sockets() as make:
        sink = make(zmq.PULL, bind=push)
        server = Running(router, {})
        server.thread.start()
        try:
            assert router.ready.wait(TIMEOUT)
            sender_part = PullService("pull", pull, broker_address=broker_in, messages=n)
            out_part = PushConnection("push", push, broker_address=broker_out, messages=n)
            with alone(sender_part), alone(out_part):
                wait_for(lambda: sender_part.listen_to is not None, TIMEOUT)
                sender = make(zmq.PUSH, connect=pull)
                for i in range(n):
                    sender.send(envelope(b"r%d" % i).SerializeToString())
                assert sorted(PalmMessage.FromString(sink.recv()).payload
                              for _ in range(n)) == sorted(b"r%d" % i for i in range(n))
            server.join(TIMEOUT)
        finally:
            router.stop()
            server.thread.join(TIMEOUT)


def test_stop_ends_a_part_alone_which_can_start_again():
    """Without `messages`, start() serves until stop(); then it starts
    again (the same part, a new loop), and an outbound hook that raises
    answers the broker b'' without ending it."""
    class Failing(PushConnection):
        def scatter(self, message):
            if message.payload == b"boom":
                raise ValueError("boom")
            yield message

    def ask(broker, payload):
        """One request answered by the running part.  The previous round's
        REP may still be attached while its close lingers, and a REQ deals
        requests round-robin: one that went there is sent again (RELAXED,
        CORRELATE), a bounded number of times."""
        for _ in range(10):
            broker.send(envelope(payload).SerializeToString())
            if broker.poll(2000):
                return broker.recv()
        raise AssertionError("no answer to %r" % payload)

    listen, broker_address = inproc("push"), inproc("broker")
    with sockets() as make:
        broker = make(zmq.REQ, bind=broker_address, REQ_RELAXED=1, REQ_CORRELATE=1)
        peer = make(zmq.PULL, bind=listen)
        part = Failing("out", listen, broker_address=broker_address)
        for round in range(2):
            with alone(part, returns=False) as run:
                assert ask(broker, b"boom") == b""
                assert ask(broker, b"ok%d" % round) == b""
                # a request sent again may have reached the part twice
                seen = [PalmMessage.FromString(peer.recv()).payload]
                while seen[-1] != b"ok%d" % round and len(seen) < 5:
                    seen.append(PalmMessage.FromString(peer.recv()).payload)
                assert seen[-1] == b"ok%d" % round, seen
                assert not run.returned.is_set()
