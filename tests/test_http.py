"""HTTP in the low-level API, over real HTTP on loopback: HTTP workers
(pylm.remote.server under wsgiref's server), HttpConnection, HttpService
and the gateway (GatewayRouter, GatewayDealer, HttpGateway) with pylm
Workers behind it."""

import contextlib
import http.client
import socket
import threading

import pytest
import zmq

import pylm._context
from pylm._cache import CacheClient
from pylm._testing import Gate, free_port, running, tcp_addresses, wait_for
from pylm.errors import RemoteError
from pylm.parts.connections import HttpConnection
from pylm.parts.gateways import DEALER_IDENTITY, GatewayDealer, GatewayRouter, HttpGateway
from pylm.parts.messages_pb2 import PalmMessage
from pylm.parts.servers import ServerTemplate
from pylm.parts.services import (CacheService, HttpService, PubService, PullService,
                                 WorkerPullService, WorkerPushService)
from pylm.remote.server import DebugServer, RequestHandler, WSGIApplication
from pylm.servers import Worker

TIMEOUT = 10


def is_ready(server):
    return server.ready.is_set()


class Handler(RequestHandler):
    """An HTTP worker."""

    active = 0
    most = 0
    lock = threading.Lock()
    gate = None     # a pylm._testing.Gate that `held` waits at

    def foo(self, payload):
        return payload + b" processed online"

    def where(self, payload):
        return self.message.function.encode()

    def fail(self, payload):
        raise KeyError("no " + payload.decode())

    def none(self, payload):
        return None

    def held(self, payload):
        """Runs until the test opens Handler.gate; counts how many run at once."""
        cls = type(self)
        with cls.lock:
            cls.active += 1
            cls.most = max(cls.most, cls.active)
        try:
            if not cls.gate.wait():
                raise TimeoutError("the test never opened the gate")
        finally:
            with cls.lock:
                cls.active -= 1
        return payload

    def _private(self, payload):
        return b"never"


@contextlib.contextmanager
def debug_server(handler=Handler, threaded=False):
    """A DebugServer on a free 127.0.0.1 port, served in a thread."""
    server = DebugServer("127.0.0.1", 0, handler, threaded=threaded)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()
    assert not thread.is_alive()


def request(address, method, path, body=None, headers=None, connection=None):
    """``(status, body, response headers)`` of one HTTP request."""
    conn = connection or http.client.HTTPConnection(*address, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        if connection is None:
            conn.close()


def raw_request(address, data, shutdown_write=False):
    """Send raw bytes; the status line and body of the answer."""
    with socket.create_connection(address, timeout=TIMEOUT) as sock:
        sock.sendall(data)
        if shutdown_write:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def envelope(function, payload=b"", **fields):
    return PalmMessage(pipeline="p", client="c", function=function, payload=payload,
                       **fields).SerializeToString()


# -- pylm.remote.server -----------------------------------------------------------

def test_request_handler_over_wsgiref():
    with debug_server() as server:
        address = server.address
        status, body, headers = request(address, "POST", "/", envelope("srv.foo", b"data"))
        assert status == 200 and headers["Content-Type"] == "application/octet-stream"
        reply = PalmMessage.FromString(body)
        assert (reply.payload, reply.client, reply.function) == (
            b"data processed online", "c", "srv.foo")
        # the entry at `stage` of a multi-stage function
        status, body, _ = request(address, "POST", "/", envelope("a.foo srv.where", stage=1))
        assert PalmMessage.FromString(body).payload == b"a.foo srv.where"

        for function in ("srv.nothing", "srv._private", "srv.handle", "nodot"):
            status, body, _ = request(address, "POST", "/", envelope(function))
            assert status == 404, function
            assert RemoteError.from_wire(PalmMessage.FromString(body).error).remote_type == \
                "LookupError"

        for function, kind in (("srv.fail", "KeyError"), ("srv.none", "TypeError")):
            status, body, _ = request(address, "POST", "/", envelope(function, b"x"))
            assert status == 500
            error = RemoteError.from_wire(PalmMessage.FromString(body).error)
            assert error.remote_type == kind

        assert request(address, "GET", "/")[0] == 405
        assert request(address, "POST", "/", b"\xff\xffno envelope")[0] == 400
        assert raw_request(address, b"POST / HTTP/1.0\r\n\r\n")[0] == 411
        assert raw_request(address, b"POST / HTTP/1.0\r\nContent-Length: abc\r\n\r\n")[0] == 400
        assert raw_request(address, b"POST / HTTP/1.0\r\nContent-Length: %d\r\n\r\n"
                           % (10 ** 12))[0] == 413
        assert raw_request(address, b"POST / HTTP/1.0\r\nContent-Length: 100\r\n\r\nshort",
                           shutdown_write=True)[0] == 400
        # still serving
        assert request(address, "POST", "/", envelope("srv.foo", b"end"))[0] == 200


def test_wsgi_application_is_a_plain_wsgi_app():
    app = WSGIApplication(Handler)
    seen = {}

    def start_response(status, headers):
        seen["status"], seen["headers"] = status, dict(headers)

    import io

    data = envelope("s.foo", b"w")
    body = b"".join(app({"REQUEST_METHOD": "POST", "CONTENT_LENGTH": str(len(data)),
                         "wsgi.input": io.BytesIO(data)}, start_response))
    assert seen["status"] == "200 OK"
    assert seen["headers"]["Content-Length"] == str(len(body))
    assert PalmMessage.FromString(body).payload == b"w processed online"


# -- HttpConnection --------------------------------------------------------------------

def open_at(gate, n, timeout=20.0):
    """Open `gate` once `n` calls are held at it (at once, then); open it
    anyway after `timeout` s, so that the test fails on its replies
    rather than hangs."""
    try:
        gate.wait_arrived(n, timeout)
    finally:
        gate.open()


def http_master(name, worker_url, max_workers=4, **kwargs):
    pull, pub, db = tcp_addresses(3)
    server = ServerTemplate()
    server.register_inbound(PullService, "Pull", pull, route="HttpConnection")
    server.register_outbound(HttpConnection, "HttpConnection", worker_url, route="Pub",
                             max_workers=max_workers, **kwargs)
    server.register_outbound(PubService, "Pub", pub)
    server.register_bypass(CacheService, "Cache", db)
    server.preset_cache(name=name, db_address=db, pull_address=pull, pub_address=pub)
    return server, db


def test_http_connection_calls_an_http_worker(serve, make_client):
    with debug_server(threaded=True) as worker:
        server, db = http_master("web", "http://127.0.0.1:%d/" % worker.address[1])
        serve(server, ready=is_ready)
        client = make_client("web", db, timeout=TIMEOUT)
        assert client.eval("web.foo", b"hello", timeout=TIMEOUT) == b"hello processed online"
        with pytest.raises(RemoteError) as info:
            client.eval("web.fail", b"key", timeout=TIMEOUT)
        assert info.value.remote_type == "KeyError" and "no key" in info.value.remote_message
        with pytest.raises(RemoteError) as info:
            client.eval("web.missing", b"", timeout=TIMEOUT)
        assert info.value.remote_type == "LookupError"

        # max_workers (4) requests at once, never more: the calls are held
        # at a gate until 4 of them run at the same time; one at a time,
        # the second would never arrive
        Handler.most = 0
        with Gate() as gate:
            Handler.gate = gate
            opener = threading.Thread(target=open_at, args=(gate, 4), daemon=True)
            opener.start()
            try:
                replies = list(client.job("web.held", (b"%d" % i for i in range(8)),
                                          messages=8, timeout=30))
            finally:
                gate.open()
                opener.join(TIMEOUT)
            assert gate.arrived == 8
        assert sorted(replies) == sorted(b"%d" % i for i in range(8))
        assert Handler.most == 4


def test_http_connection_reports_a_worker_that_is_not_there(serve, make_client):
    port = free_port()
    server, db = http_master("gone", "http://127.0.0.1:%d" % port, timeout=2)
    serve(server, ready=is_ready)
    client = make_client("gone", db, timeout=TIMEOUT)
    with pytest.raises(RemoteError) as info:
        client.eval("gone.foo", b"x", timeout=TIMEOUT)
    assert info.value.remote_type == "ConnectionRefusedError"
    # the worker comes up on that port: the same server now reaches it
    with contextlib.closing(DebugServer("127.0.0.1", port, Handler)) as worker:
        thread = threading.Thread(target=worker.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            assert client.eval("gone.foo", b"x", timeout=TIMEOUT) == b"x processed online"
        finally:
            worker.shutdown()
            thread.join(TIMEOUT)


def test_http_connection_needs_an_http_url():
    with pytest.raises(ValueError):
        HttpConnection("h", "tcp://127.0.0.1:5555")


# -- HttpService -----------------------------------------------------------------------

def test_http_service_routes_posted_envelopes(serve):
    with debug_server() as worker:
        server = ServerTemplate()
        service = server.register_inbound(HttpService, "Http", "127.0.0.1", route="Worker",
                                          block=True, port=0, max_request_bytes=10_000)
        server.register_outbound(HttpConnection, "Worker",
                                 "http://127.0.0.1:%d" % worker.address[1])
        serve(server, ready=is_ready)
        address = service.address
        status, body, _ = request(address, "POST", "/", envelope("s.foo", b"posted"))
        assert status == 200
        assert PalmMessage.FromString(body).payload == b"posted processed online"
        status, body, _ = request(address, "POST", "/", b"\xff\xff")
        assert status == 400 and b"not a PALM envelope" in body
        assert request(address, "GET", "/")[0] == 405
        assert request(address, "POST", "/", b"x" * 10_001)[0] == 413
        status, body, _ = request(address, "POST", "/", envelope("s.fail", b"it"))
        assert status == 200        # the worker's error envelope is the feedback
        assert RemoteError.from_wire(PalmMessage.FromString(body).error).remote_type == \
            "KeyError"
        assert request(address, "POST", "/", envelope("s.foo", b"again"))[0] == 200


# -- the gateway -----------------------------------------------------------------------

class GatewayWorker(Worker):
    def shout(self, payload):
        return payload.upper() or b"EMPTY"

    def fail(self, payload):
        raise RuntimeError("the worker failed on " + payload.decode())


def gateway_server(inproc, max_request_bytes=2048, timeout=TIMEOUT):
    wpull, wpush, db = tcp_addresses(3)
    server = ServerTemplate()
    server.register_inbound(GatewayRouter, "gateway_router", inproc, route="WorkerPush")
    server.register_outbound(GatewayDealer, "gateway_dealer", listen_address=inproc)
    gateway = server.register_bypass(HttpGateway, name="HttpGateway", listen_address=inproc,
                                     hostname="127.0.0.1", port=0, max_request_bytes=max_request_bytes,
                                     timeout=timeout)
    server.register_inbound(WorkerPullService, "WorkerPull", wpull, route="gateway_dealer")
    server.register_outbound(WorkerPushService, "WorkerPush", wpush)
    server.register_bypass(CacheService, "Cache", db)
    server.preset_cache(name="gateway", db_address=db, worker_pull_address=wpull,
                        worker_push_address=wpush)
    return server, gateway, db


@pytest.fixture(scope="module")
def gateway():
    server, gateway, db = gateway_server("inproc://test-gateway")
    with running(server, ready=is_ready), running(GatewayWorker("w1", db)), \
            running(GatewayWorker("w2", db)):
        yield gateway


def test_gateway_get_and_post(gateway):
    address = gateway.address
    assert request(address, "GET", "/shout")[:2] == (200, b"EMPTY")
    assert request(address, "POST", "/shout", b"hello")[:2] == (200, b"HELLO")
    assert request(address, "GET", "/shout/?q=1", b"query")[:2] == (200, b"QUERY")
    assert request(address, "POST", "/any.shout", b"named")[:2] == (200, b"NAMED")
    # keep-alive: several requests on one connection
    conn = http.client.HTTPConnection(*address, timeout=TIMEOUT)
    try:
        for word in (b"a", b"b", b"c"):
            assert request(address, "POST", "/shout", word, connection=conn)[:2] == \
                (200, word.upper())
    finally:
        conn.close()


def test_gateway_errors_and_it_keeps_serving(gateway):
    address = gateway.address
    status, body, _ = request(address, "GET", "/unknown")
    assert status == 404 and b"no method" in body
    status, body, _ = request(address, "POST", "/fail", b"this")
    assert status == 500 and b"RuntimeError: the worker failed on this" in body
    for path in ("/", "/a/b", "/1abc", "/a.b.c", "/%00"):
        assert request(address, "GET", path)[0] == 404, path
    assert raw_request(address, b"POST /shout HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 411
    assert raw_request(address, b"POST /shout HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"
                       )[0] == 400
    assert raw_request(address, b"POST /shout HTTP/1.1\r\nHost: x\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")[0] == 411
    assert raw_request(address, b"POST /shout HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n"
                                b"short", shutdown_write=True)[0] == 400
    status, body, _ = request(address, "POST", "/shout", b"x" * 2049)
    assert status == 413
    # a length past the default limit (256 MiB) is refused without reading
    assert raw_request(address, b"POST /shout HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                       % (300 * 1024 * 1024))[0] == 413
    # refused before the body is sent
    assert raw_request(address, b"POST /shout HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
                                b"Expect: 100-continue\r\n\r\n")[0] == 413
    assert request(address, "POST", "/shout", b"still here")[:2] == (200, b"STILL HERE")


def test_gateway_answers_concurrent_requests_each_its_own(gateway):
    results = {}

    def call(i):
        results[i] = request(gateway.address, "POST", "/shout", b"request %d" % i)[:2]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert results == {i: (200, b"REQUEST %d" % i) for i in range(16)}


def test_gateway_router_forwards_answers_of_a_dealer_socket(gateway):
    # pylm 0.14's GatewayDealer answered through a DEALER named b"dealer"
    ctx = pylm._context.context()
    waiting = ctx.socket(zmq.DEALER)
    dealer = ctx.socket(zmq.DEALER)
    try:
        for sock in (waiting, dealer):
            sock.setsockopt(zmq.LINGER, 0)
        waiting.setsockopt(zmq.IDENTITY, b"waiting-request")
        dealer.setsockopt(zmq.IDENTITY, DEALER_IDENTITY)
        waiting.connect("inproc://test-gateway")
        dealer.connect("inproc://test-gateway")

        # the ROUTER drops what it gets before it knows both peers: resend
        # until the answer arrives
        def answered():
            dealer.send_multipart([b"waiting-request", b"", b"the answer"])
            return waiting.poll(100)

        wait_for(answered, timeout=TIMEOUT, what="the answer through the router")
        assert waiting.recv_multipart() == [b"", b"the answer"]
    finally:
        waiting.close(linger=0)
        dealer.close(linger=0)


def test_gateway_without_workers_times_out_with_504(serve):
    server, gateway, _ = gateway_server("inproc://lonely-gateway", timeout=0.3)
    serve(server, ready=is_ready)
    status, body, _ = request(gateway.address, "GET", "/shout")
    assert status == 504 and b"0.3" in body
    assert request(gateway.address, "GET", "/")[0] == 404


def test_gateway_dealer_needs_its_gateway_router():
    server = ServerTemplate()
    (pull,) = tcp_addresses(1)
    server.register_inbound(PullService, "Pull", pull, route="gateway_dealer")
    server.register_outbound(GatewayDealer, "gateway_dealer", listen_address="inproc://none")
    with pytest.raises(ValueError, match="GatewayRouter"):
        server.start()


def test_the_gateway_servers_cache_gives_workers_their_addresses(gateway):
    cache = CacheClient(gateway.cache.get("db_address").decode(), "gateway", timeout=TIMEOUT)
    try:
        assert cache.request("get", b"name") == b"gateway"
        assert cache.request("get", b"worker_push_address").startswith(b"tcp://127.0.0.1:")
    finally:
        cache.close()
