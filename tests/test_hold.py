"""Replies held until their subscription arrives (pylm_core/subscriptions.pyx).

Calls are sent on a plain PUSH (pylm_core's send_call, as our Client
encodes them: call ids set, so the plain rule applies, not the pylm 0.14
one; tests/test_interop.py runs pylm 0.14 clients) and replies read on
plain SUB sockets, so the test decides when, and to what, a subscription
is made.  Real sockets, servers in threads.
"""

import pytest
import zmq

from pylm._context import context
from pylm._testing import running, tcp_addresses, wait_for
from pylm.parts.messages_pb2 import PalmMessage
from pylm.servers import Master, Server, Worker
from pylm_core import _core

pytestmark = pytest.mark.timeout(120)

#: How long a SUB waits for a reply that must come (generous: loaded CI).
REPLY_WAIT_MS = 10000
#: How long a SUB waits for a reply that must not come.
SILENCE_MS = 1000


class Echo(Server):
    def work(self, payload):
        return b"done:" + payload


class EchoWorker(Worker):
    def work(self, payload):
        return b"done:" + payload


def counters(server):
    """The core counters of a running server (held, held_dropped, ...)."""
    runner = server._runner
    return runner.counters() if runner is not None else {}


def call(push, function, topic, payload, n=1):
    """Send `n` calls (payloads payload-0...) whose replies go to `topic`."""
    for i in range(n):
        _core.send_call(push, b"pipe", topic, function.encode(), b"",
                        b"%s-%d" % (payload, i), timeout=5.0, call=i + 1)


def subscribe(pub_address, prefix):
    sub = context().socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, prefix)
    sub.connect(pub_address)
    return sub


def replies(sub, n, wait_ms=REPLY_WAIT_MS):
    """The payloads of the next `n` replies on sub (fewer if they stop)."""
    out = []
    while len(out) < n and sub.poll(wait_ms):
        frames = sub.recv_multipart()
        if frames[0] == _core.WELCOME:
            continue
        msg = PalmMessage()
        msg.ParseFromString(frames[-1])
        out.append(msg.payload)
    return out


@pytest.fixture
def sockets():
    made = []

    def push(address):
        sock = context().socket(zmq.PUSH)
        sock.linger = 0
        sock.connect(address)
        made.append(sock)
        return sock

    yield push
    for sock in made:
        sock.close()


def served_server(**options):
    db, pull, pub = tcp_addresses(3)
    return Echo("echo", db, pull, pub, **options)


def test_late_subscriber_gets_the_held_reply(sockets):
    server = served_server()
    with running(server):
        push = sockets(server.pull_address)
        call(push, "echo.work", b"late-client", b"a")
        wait_for(lambda: counters(server).get("held") == 1, what="one reply held")
        sub = subscribe(server.pub_address, b"late-client")
        try:
            assert replies(sub, 1) == [b"done:a-0"]
        finally:
            sub.close()
        wait_for(lambda: counters(server).get("held") == 0, what="nothing held")
    assert server.stats["held_dropped"] == 0


def test_held_replies_keep_their_order(sockets):
    server = served_server()
    with running(server):
        push = sockets(server.pull_address)
        call(push, "echo.work", b"ordered", b"o", n=50)
        wait_for(lambda: counters(server).get("held") == 50, what="50 replies held")
        sub = subscribe(server.pub_address, b"ordered")
        try:
            assert replies(sub, 50) == [b"done:o-%d" % i for i in range(50)]
        finally:
            sub.close()


def test_prefix_subscriptions_match_as_zeromq(sockets):
    server = served_server()
    with running(server):
        push = sockets(server.pull_address)
        sub = subscribe(server.pub_address, b"pre")
        try:
            # a subscribed prefix of the topic: published at once
            wait_for(lambda: (call(push, "echo.work", b"prefixed-client", b"p")
                              or replies(sub, 1, 500)) == [b"done:p-0"],
                     what="a reply through the prefix subscription")
            # a topic no prefix matches ("pr" is shorter than "pre"): held,
            # until a prefix of it is subscribed
            call(push, "echo.work", b"pr", b"q")
            wait_for(lambda: counters(server).get("held") == 1, what="one reply held")
            assert replies(sub, 1, SILENCE_MS) == []
        finally:
            sub.close()
        everything = subscribe(server.pub_address, b"")
        try:
            assert replies(everything, 1) == [b"done:q-0"]
        finally:
            everything.close()


def test_held_past_hold_seconds_is_dropped_and_counted(sockets):
    server = served_server(hold_seconds=0.3)
    with running(server):
        push = sockets(server.pull_address)
        call(push, "echo.work", b"gone-client", b"t")
        wait_for(lambda: counters(server).get("held_dropped") == 1, what="a reply dropped")
        assert counters(server)["held"] == 0
        assert server.live_stats()["held_dropped"] == 1
        sub = subscribe(server.pub_address, b"gone-client")
        try:
            assert replies(sub, 1, SILENCE_MS) == []
        finally:
            sub.close()
    assert server.stats["held_dropped"] == 1


def test_held_past_hold_replies_drops_the_oldest(sockets):
    server = served_server(hold_replies=3, hold_seconds=60.0)
    with running(server):
        push = sockets(server.pull_address)
        call(push, "echo.work", b"crowd", b"c", n=5)
        wait_for(lambda: counters(server).get("processed", 0) >= 5, what="5 calls served")
        assert counters(server)["held"] == 3
        assert counters(server)["held_dropped"] == 2
        sub = subscribe(server.pub_address, b"crowd")
        try:
            assert replies(sub, 3) == [b"done:c-2", b"done:c-3", b"done:c-4"]
        finally:
            sub.close()


def test_hold_replies_zero_publishes_at_once(sockets):
    server = served_server(hold_replies=0)
    with running(server):
        push = sockets(server.pull_address)
        call(push, "echo.work", b"nobody", b"z")
        wait_for(lambda: counters(server).get("processed", 0) >= 1, what="the call served")
        assert counters(server)["held"] == 0
        sub = subscribe(server.pub_address, b"nobody")
        try:
            assert replies(sub, 1, SILENCE_MS) == []
        finally:
            sub.close()


def test_negative_bounds_are_refused():
    db, pull, pub = tcp_addresses(3)
    with pytest.raises(ValueError):
        Echo("echo", db, pull, pub, hold_replies=-1)
    with pytest.raises(ValueError):
        Echo("echo", db, pull, pub, hold_seconds=-1.0)


def test_master_holds_a_result_for_a_late_subscriber(sockets):
    db, pull, pub, wpull, wpush = tcp_addresses(5)
    master = Master("master", pull, pub, wpull, wpush, db)
    with running(master), running(EchoWorker("w", db)):
        push = sockets(pull)
        call(push, "master.work", b"late-master-client", b"m", n=3)
        wait_for(lambda: counters(master).get("held") == 3, what="three results held")
        sub = subscribe(pub, b"late-master-client")
        try:
            assert replies(sub, 3) == [b"done:m-%d" % i for i in range(3)]
        finally:
            sub.close()
    assert master.stats["held_dropped"] == 0


def parts_server(**pub_options):
    """Pull -> Pub, built from parts: a call is published as it came, to
    its client's topic."""
    from pylm.parts.servers import ServerTemplate
    from pylm.parts.services import PubService, PullService
    pull, pub = tcp_addresses(2)
    server = ServerTemplate()
    server.register_inbound(PullService, "Pull", pull, route="Pub")
    server.register_outbound(PubService, "Pub", pub, **pub_options)
    return server, pull, pub, server.outbound_components["Pub"]


def test_pub_service_holds_for_a_late_subscriber(sockets):
    server, pull, pub, part = parts_server()
    with running(server, ready=lambda s: True):
        push = sockets(pull)
        call(push, "x.y", b"parts-client", b"s", n=3)
        wait_for(lambda: part._held.counters()["held"] == 3, what="three held")
        sub = subscribe(pub, b"parts-")
        try:
            assert replies(sub, 3) == [b"s-%d" % i for i in range(3)]
        finally:
            sub.close()
        assert part._held.counters()["held"] == 0


def test_pub_service_drops_past_hold_seconds(sockets):
    server, pull, pub, part = parts_server(hold_seconds=0.2)
    with running(server, ready=lambda s: True):
        push = sockets(pull)
        call(push, "x.y", b"nobody-parts", b"d")
        wait_for(lambda: part.held_dropped == 1, what="a message dropped")
        sub = subscribe(pub, b"nobody-parts")
        try:
            assert replies(sub, 1, SILENCE_MS) == []
        finally:
            sub.close()


def test_pub_service_holds_a_pylm014_reply(sockets):
    """A pylm 0.14 envelope (no call id): held, then published to the
    subscription that comes after it."""
    server, pull, pub, part = parts_server()
    with running(server, ready=lambda s: True):
        push = sockets(pull)
        msg = PalmMessage(pipeline="p", client="old-parts", stage=0, function="x.y",
                          payload=b"legacy")
        push.send(msg.SerializeToString())
        wait_for(lambda: part._held.counters()["held"] == 1, what="one held")
        sub = subscribe(pub, b"old-parts")
        try:
            assert replies(sub, 1) == [b"legacy"]
        finally:
            sub.close()
