"""The bounds of the HTTP parts (issue 12), over real HTTP on loopback:

- at most `max_concurrent` requests are served at once, by a pool of
  threads; the other connections wait (in the listen backlog) and are all
  served once the first ones are done;
- a client has `read_timeout` seconds to send its whole request, however
  it trickles it, and a silent kept-alive connection is closed: slow
  clients hold no more than the pool, and not for ever;
- a body longer than `max_request_bytes` is refused with 413 and the
  server goes on serving;
- HttpConnection reads at most `max_response_bytes` of an HTTP worker's
  answer (announced, chunked without end, or until the connection closes)
  and at most `timeout` seconds of it: that message fails, the next works.
"""

import contextlib
import http.client
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pylm._testing import Gate, free_port, running, tcp_addresses, wait_for
from pylm.errors import RemoteError
from pylm.parts.connections import HttpConnection
from pylm.parts.gateways import GatewayDealer, GatewayRouter, HttpGateway
from pylm.parts.messages_pb2 import PalmMessage
from pylm.parts.servers import ServerTemplate
from pylm.parts.services import (CacheService, HttpService, PubService, PullService,
                                 WorkerPullService, WorkerPushService)
from pylm.remote.server import DebugServer, RequestHandler
from pylm.servers import Worker

TIMEOUT = 10
#: Longest a test waits for a request it expects to be served.
SERVED_TIMEOUT = 30


def request(address, method, path, body=None, timeout=SERVED_TIMEOUT):
    """``(status, body)`` of one HTTP request on a connection of its own."""
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def envelope(function, payload=b""):
    return PalmMessage(pipeline="p", client="c", function=function,
                       payload=payload).SerializeToString()


class InBackground:
    """A call run in a thread: ``done`` is set once it returned or raised."""

    def __init__(self, function, *args):
        self.result = self.error = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(function, args), daemon=True)
        self.thread.start()

    def _run(self, function, args):
        try:
            self.result = function(*args)
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def get(self, timeout=SERVED_TIMEOUT):
        assert self.done.wait(timeout), "the call did not return within %s s" % timeout
        if self.error is not None:
            raise self.error
        return self.result


@contextlib.contextmanager
def serving(debug_server):
    """A DebugServer served in a thread for the block, then shut down."""
    thread = threading.Thread(target=debug_server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield debug_server
    finally:
        debug_server.shutdown()
        thread.join(TIMEOUT)
        debug_server.server_close()
    assert not thread.is_alive()


def half_request(address, data=b"POST /shout HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhal"):
    """A connection that sent `data` (a request missing its end) and waits."""
    sock = socket.create_connection(address, timeout=TIMEOUT)
    sock.sendall(data)
    return sock


def closed_by_server(sock, timeout=SERVED_TIMEOUT):
    """What the server sent on `sock` until it closed it (b'' when nothing)."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


# -- the pool: DebugServer (pylm.remote.server) ------------------------------------------

class HeldHandler(RequestHandler):
    """An HTTP worker whose `held` waits at the test's gate."""

    gate = None

    def held(self, payload):
        if not type(self).gate.wait(who=payload.decode()):
            raise TimeoutError("the test never opened the gate")
        return payload

    def echo(self, payload):
        return payload


def test_at_most_max_concurrent_requests_at_once_and_the_rest_wait_then_all_served():
    worker = DebugServer("127.0.0.1", 0, HeldHandler, threaded=True, max_concurrent=3)
    with Gate() as gate, serving(worker):
        HeldHandler.gate = gate
        calls = [InBackground(request, worker.address, "POST", "/",
                              envelope("w.held", b"%d" % i)) for i in range(7)]
        gate.wait_arrived(3, SERVED_TIMEOUT)
        # three are in, the other four wait for a thread: not accepted
        with pytest.raises(AssertionError):
            gate.wait_arrived(4, timeout=1.0)
        assert worker.httpd.busy == 3
        assert not any(call.done.is_set() for call in calls)
        gate.open()
        replies = [call.get() for call in calls]
        assert [(status, PalmMessage.FromString(body).payload) for status, body in replies] \
            == [(200, b"%d" % i) for i in range(7)]
        assert gate.arrived == 7
        assert worker.httpd.most_busy == 3


def test_without_threaded_one_request_at_a_time():
    worker = DebugServer("127.0.0.1", 0, HeldHandler)
    with Gate() as gate, serving(worker):
        HeldHandler.gate = gate
        calls = [InBackground(request, worker.address, "POST", "/",
                              envelope("w.held", b"%d" % i)) for i in range(2)]
        gate.wait_arrived(1, SERVED_TIMEOUT)
        with pytest.raises(AssertionError):
            gate.wait_arrived(2, timeout=1.0)
        gate.open()
        assert [call.get()[0] for call in calls] == [200, 200]
        assert worker.httpd.most_busy == 1


def status_of(address, head):
    """The status the server answers a request `head` (no body) with."""
    with socket.create_connection(address, timeout=SERVED_TIMEOUT) as sock:
        sock.sendall(head)
        return int(closed_by_server(sock).split(b" ", 2)[1])


#: Content-Length values refused (400) without reading: "²" passes
#: str.isdigit() but not int()
BAD_LENGTHS = (b"-1", b"1e3", b"\xb2", b"0x10", b"")


def test_debug_server_refuses_a_long_body_with_413_and_serves_on():
    worker = DebugServer("127.0.0.1", 0, HeldHandler, max_request_bytes=1000)
    with serving(worker):
        status, body = request(worker.address, "POST", "/", envelope("w.echo", b"x" * 200_000))
        assert status == 413 and b"at most 1000" in body
        for length in BAD_LENGTHS:
            assert status_of(worker.address, b"POST / HTTP/1.0\r\nContent-Length: %s\r\n\r\n"
                             % length) == (411 if not length else 400), length
        status, body = request(worker.address, "POST", "/", envelope("w.echo", b"small"))
        assert status == 200 and PalmMessage.FromString(body).payload == b"small"


def test_debug_server_cuts_a_slow_client_and_serves_the_next():
    worker = DebugServer("127.0.0.1", 0, HeldHandler, read_timeout=1.0)
    with serving(worker):
        slow = half_request(worker.address, b"POST / HTTP/1.0\r\nContent-Length: 100\r\n\r\nab")
        with slow:
            # the one thread is the slow client's until its deadline
            status, body = request(worker.address, "POST", "/", envelope("w.echo", b"next"))
            assert status == 200 and PalmMessage.FromString(body).payload == b"next"
            # cut: closed, with an error answer or without (when the
            # socket's own timeout on the read came first)
            answer = closed_by_server(slow)
            assert answer == b"" or answer.startswith(b"HTTP/1.0 400"), answer


# -- the parts: HttpGateway, HttpService --------------------------------------------------

class ShoutWorker(Worker):
    gate = None     # a Gate that `held` waits at

    def shout(self, payload):
        return payload.upper()

    def held(self, payload):
        if not type(self).gate.wait():
            raise TimeoutError("the test never opened the gate")
        return payload


@contextlib.contextmanager
def gateway(**http_kwargs):
    """A gateway server (GatewayRouter, GatewayDealer, HttpGateway) with one
    worker; yields the HttpGateway part."""
    inproc = "inproc://limits-gateway-%d" % id(http_kwargs)
    wpull, wpush, db = tcp_addresses(3)
    server = ServerTemplate()
    server.register_inbound(GatewayRouter, "gateway_router", inproc, route="WorkerPush")
    server.register_outbound(GatewayDealer, "gateway_dealer", listen_address=inproc)
    part = server.register_bypass(HttpGateway, name="HttpGateway", listen_address=inproc,
                                  hostname="127.0.0.1", port=0, timeout=SERVED_TIMEOUT,
                                  **http_kwargs)
    server.register_inbound(WorkerPullService, "WorkerPull", wpull, route="gateway_dealer")
    server.register_outbound(WorkerPushService, "WorkerPush", wpush)
    server.register_bypass(CacheService, "Cache", db)
    server.preset_cache(name="gateway", db_address=db, worker_pull_address=wpull,
                        worker_push_address=wpush)
    with running(server, ready=lambda s: s.ready.is_set()), running(ShoutWorker("w", db)):
        yield part


def test_slow_clients_hold_at_most_the_pool_and_waiting_requests_get_served():
    with gateway(max_concurrent=2) as part:
        pool = part._http.server
        with half_request(part.address) as slow1:
            wait_for(lambda: pool.busy == 1, what="the slow client taking a thread")
            # the other thread serves
            assert request(part.address, "POST", "/shout", b"ok") == (200, b"OK")
            with half_request(part.address) as slow2:
                wait_for(lambda: pool.busy == 2, what="two slow clients, two threads")
                waiting = InBackground(request, part.address, "POST", "/shout", b"waits")
                assert not waiting.done.wait(1.0)       # no thread for it
                assert pool.busy == 2
                slow1.close()       # its thread answers 400 and is free again
                assert waiting.get() == (200, b"WAITS")
                slow2.shutdown(socket.SHUT_WR)
                assert b"400" in closed_by_server(slow2).split(b"\r\n")[0]
        assert pool.most_busy == 2
        assert request(part.address, "POST", "/shout", b"still") == (200, b"STILL")
        for length in BAD_LENGTHS:
            assert status_of(part.address, b"POST /shout HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: %s\r\n\r\n" % length) == \
                (411 if not length else 400), length


def trickle(sock, stop, interval=0.05):
    """Send a header one byte at a time (each read of the server gets a
    byte well within its socket timeout) until the server answers or
    closes, or `stop` is set; bounded by SERVED_TIMEOUT."""
    deadline = time.monotonic() + SERVED_TIMEOUT
    try:
        sock.sendall(b"POST /shout HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        while not stop.is_set() and time.monotonic() < deadline:
            if select.select([sock], [], [], interval)[0]:
                return          # an answer, or the end of the connection
            sock.sendall(b"a")
    except OSError:
        return


def test_a_trickling_client_is_cut_at_the_request_deadline():
    # one thread, and a client that keeps it busy with a byte every 50 ms:
    # only the deadline of the whole request (not the socket's timeout on
    # each read) frees the thread for the next request
    with gateway(max_concurrent=1, read_timeout=1.0) as part:
        stop = threading.Event()
        with socket.create_connection(part.address, timeout=TIMEOUT) as sock:
            trickler = InBackground(trickle, sock, stop)
            try:
                wait_for(lambda: part._http.server.busy == 1, what="the trickler's thread")
                assert request(part.address, "POST", "/shout", b"next") == (200, b"NEXT")
                trickler.get()
                assert not stop.is_set()
            finally:
                stop.set()
                trickler.done.wait(TIMEOUT)


def test_a_silent_kept_alive_connection_frees_its_thread():
    with gateway(max_concurrent=1) as part:
        part._http.server.keepalive_idle = 0.5
        kept = http.client.HTTPConnection(*part.address, timeout=TIMEOUT)
        try:
            kept.request("POST", "/shout", b"first")
            response = kept.getresponse()
            assert (response.status, response.read()) == (200, b"FIRST")
            assert response.getheader("Connection") != "close"
            # the connection stays open and silent; the next client is served
            assert request(part.address, "POST", "/shout", b"second") == (200, b"SECOND")
        finally:
            kept.close()


def test_a_kept_alive_connection_is_closed_after_its_answer_while_others_wait():
    with gateway(max_concurrent=1) as part, Gate() as gate:
        ShoutWorker.gate = gate
        pool = part._http.server
        kept = http.client.HTTPConnection(*part.address, timeout=SERVED_TIMEOUT)
        try:
            assert request(part.address, "POST", "/shout", b"warm") == (200, b"WARM")
            kept.request("POST", "/held", b"first")
            gate.wait_arrived(1, SERVED_TIMEOUT)
            waiting = InBackground(request, part.address, "POST", "/shout", b"waits")
            # the waiting connection is in the listen backlog
            wait_for(lambda: select.select([pool.socket], [], [], 0)[0],
                     what="a connection waiting to be accepted")
            gate.open()
            response = kept.getresponse()
            assert (response.status, response.read()) == (200, b"first")
            assert response.getheader("Connection") == "close"
            assert waiting.get() == (200, b"WAITS")
        finally:
            kept.close()


def test_http_service_refuses_a_long_body_and_serves_on(serve):
    with serving(DebugServer("127.0.0.1", 0, HeldHandler, threaded=True)) as worker:
        server = ServerTemplate()
        service = server.register_inbound(HttpService, "Http", "127.0.0.1", route="Worker",
                                          block=True, port=0, max_request_bytes=1000,
                                          max_concurrent=2)
        server.register_outbound(HttpConnection, "Worker",
                                 "http://127.0.0.1:%d" % worker.address[1])
        serve(server, ready=lambda s: s.ready.is_set())
        status, body = request(service.address, "POST", "/", envelope("w.echo", b"x" * 50_000))
        assert status == 413 and b"at most 1000" in body
        with half_request(service.address, b"POST / HTTP/1.1\r\nHost: x\r\n"):
            wait_for(lambda: service._http.server.busy == 1, what="the slow client's thread")
            status, body = request(service.address, "POST", "/", envelope("w.echo", b"fits"))
            assert status == 200 and PalmMessage.FromString(body).payload == b"fits"
        assert service._http.server.most_busy <= 2


# -- HttpConnection: bounded answers ------------------------------------------------------

LIMIT = 4096


class FakeWorker(BaseHTTPRequestHandler):
    """An HTTP worker answering by the payload: ``big`` a body of LIMIT + 1
    bytes with its length, ``endless`` a chunked body without end,
    ``unbounded`` a body without length until the connection closes,
    ``trickle`` a chunked body of a byte every 20 ms; anything else, the
    request's envelope back.  ``cut`` counts endless answers that ended
    because the reader went away."""

    protocol_version = "HTTP/1.1"
    timeout = SERVED_TIMEOUT        # a write blocked by a reader that stopped ends
    cut = 0
    lock = threading.Lock()

    def log_message(self, format, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        kind = PalmMessage.FromString(body).payload
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if kind == b"big":
            self.send_header("Content-Length", str(LIMIT + 1))
            self.end_headers()
            self.wfile.write(b"x" * (LIMIT + 1))
        elif kind in (b"endless", b"trickle"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk, pause = (b"x" * 1024, 0) if kind == b"endless" else (b"x", 0.02)
            self._forever(b"%x\r\n%s\r\n" % (len(chunk), chunk), pause)
        elif kind == b"unbounded":
            self.send_header("Connection", "close")
            self.end_headers()
            self._forever(b"x" * 1024, 0)
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def _forever(self, data, pause):
        """Write `data` again and again until the reader goes (bounded)."""
        self.close_connection = True
        deadline = time.monotonic() + 2 * SERVED_TIMEOUT
        try:
            while time.monotonic() < deadline:
                self.wfile.write(data)
                self.wfile.flush()
                if pause:
                    time.sleep(pause)   # the pace of a trickling worker, not a synchronisation
        except (BrokenPipeError, ConnectionResetError):
            with FakeWorker.lock:
                FakeWorker.cut += 1
        except OSError:
            pass


@pytest.fixture
def fake_worker():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeWorker)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield "http://127.0.0.1:%d/" % server.server_address[1]
    finally:
        server.shutdown()
        thread.join(TIMEOUT)
        server.server_close()


def test_http_connection_reads_at_most_max_response_bytes(serve, make_client, fake_worker):
    pull, pub, db = tcp_addresses(3)
    server = ServerTemplate()
    server.register_inbound(PullService, "Pull", pull, route="HttpConnection")
    server.register_outbound(HttpConnection, "HttpConnection", fake_worker, route="Pub",
                             max_response_bytes=LIMIT, timeout=3.0)
    server.register_outbound(PubService, "Pub", pub)
    server.register_bypass(CacheService, "Cache", db)
    server.preset_cache(name="web", db_address=db, pull_address=pull, pub_address=pub)
    serve(server, ready=lambda s: s.ready.is_set())
    client = make_client("web", db, timeout=TIMEOUT)
    cut_before = FakeWorker.cut
    assert client.eval("web.any", b"fine", timeout=SERVED_TIMEOUT) == b"fine"
    for kind in (b"big", b"endless", b"unbounded"):
        with pytest.raises(RemoteError) as info:
            client.eval("web.any", kind, timeout=SERVED_TIMEOUT)
        assert info.value.remote_type == "HttpResponseTooLarge", kind
        assert str(LIMIT) in info.value.remote_message
        # the next message works
        assert client.eval("web.any", b"next " + kind, timeout=SERVED_TIMEOUT) == \
            b"next " + kind
    # the endless answers stopped because HttpConnection dropped them
    wait_for(lambda: FakeWorker.cut >= cut_before + 2, timeout=SERVED_TIMEOUT,
             what="the endless answers cut off by the reader")
    # a worker that trickles its answer runs into the timeout of the whole answer
    with pytest.raises(RemoteError) as info:
        client.eval("web.any", b"trickle", timeout=SERVED_TIMEOUT)
    assert info.value.remote_type == "TimeoutError"
    assert client.eval("web.any", b"last", timeout=SERVED_TIMEOUT) == b"last"


def test_gateway_debug_serves_one_request_and_returns():
    part = HttpGateway(listen_address="inproc://limits-no-router", hostname="127.0.0.1",
                       port=0, timeout=0.2)
    part.port = free_port()     # debug() binds when called
    served = InBackground(part.debug)

    def answered():
        try:
            return request(("127.0.0.1", part.port), "GET", "/shout", timeout=TIMEOUT)
        except ConnectionRefusedError:
            return None

    status, body = wait_for(answered, timeout=SERVED_TIMEOUT, what="debug() serving")
    assert status == 504        # no GatewayRouter behind it
    served.get()                # returned after the one request, kept-alive or not
