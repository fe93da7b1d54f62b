"""How a Client knows its subscription is live before the first call
(Client._join): the XPUB's welcome then a ping for our servers, silence
for a publisher of unknown kind; over real sockets, the peers raw pyzmq
sockets where a kind of server is played."""

import contextlib
import threading

import pytest
import zmq

from pylm._cache import CONFIG_PROTOCOL_KEY, PROTOCOL
from pylm._testing import tcp_addresses
from pylm.clients import WELCOME, Client
from pylm.parts.messages_pb2 import PalmMessage
from pylm.parts.servers import ServerTemplate
from pylm.parts.services import CacheService
from pylm.servers import Server
from pylm_core import _core

TIMEOUT = 10


def bound(kind, address, **options):
    sock = zmq.Context.instance().socket(kind)
    sock.linger = 0
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.bind(address)
    return sock


@contextlib.contextmanager
def welcoming_xpub(address):
    """A bare XPUB that greets subscribers with WELCOME, served by a thread:
    libzmq attaches a new subscriber (and sends the welcome) only while
    the socket is used, here polled for subscriptions."""
    ready = threading.Event()
    stop = threading.Event()

    def serve():
        xpub = bound(zmq.XPUB, address, XPUB_WELCOME_MSG=WELCOME)
        try:
            ready.set()
            while not stop.is_set():
                if xpub.poll(20):
                    xpub.recv()
        finally:
            xpub.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert ready.wait(TIMEOUT)
        yield
    finally:
        stop.set()
        thread.join(TIMEOUT)
    assert not thread.is_alive()


def test_our_server_welcomes_and_answers_the_ping(serve):
    db, pull, pub = tcp_addresses(3)
    serve(Server("joins", db, pull, pub))
    with Client("joins", db, timeout=TIMEOUT) as client:
        client._connect(TIMEOUT)
        assert client._joined_by == "welcome"
        assert client.eval("joins.echo", b"x", timeout=TIMEOUT) == b"x"


def test_a_silent_publisher_of_unknown_kind_is_taken_for_pylm_014():
    push_address, sub_address = tcp_addresses(2)
    pull = bound(zmq.PULL, push_address)
    pub = bound(zmq.PUB, sub_address)
    try:
        with Client("x", None, push_address, sub_address, this_config=True,
                    timeout=TIMEOUT) as client:
            client._connect(TIMEOUT)
            assert client._joined_by == "silence"
            assert client._protocol is None
            # no ping was sent to a server that may not know them
            assert not pull.poll(0)
    finally:
        pull.close()
        pub.close()


def test_a_welcoming_publisher_of_unknown_kind_is_ours_and_gets_pings():
    push_address, sub_address = tcp_addresses(2)
    pull = bound(zmq.PULL, push_address)
    try:
        with welcoming_xpub(sub_address), Client("x", None, push_address, sub_address, this_config=True,
                    timeout=TIMEOUT) as client:
            client._connect(TIMEOUT)     # nobody answers the pings: best effort
            assert client._joined_by == "welcome"
            assert client._protocol is not None
            assert pull.poll(TIMEOUT * 1000)
            ping = PalmMessage.FromString(pull.recv())
            assert ping.cache.encode().startswith(_core.PING_PREFIX)
            assert ping.client == client.uuid
    finally:
        pull.close()


def test_a_publisher_known_to_be_ours_that_never_welcomes_times_out(serve):
    """The cache says the protocol is ours (pylm._cache.PROTOCOL): silence
    is then no pylm 0.14 server but a fault."""
    db, push_address, sub_address = tcp_addresses(3)
    server = ServerTemplate()
    server.register_bypass(CacheService, "Cache", db)
    server.preset_cache(name="silent", pull_address=push_address, pub_address=sub_address,
                        **{CONFIG_PROTOCOL_KEY: PROTOCOL})
    serve(server, ready=lambda s: s.ready.is_set())
    pub = bound(zmq.PUB, sub_address)       # never used: never welcomes
    try:
        with Client("silent", db, timeout=TIMEOUT) as client:
            with pytest.raises(TimeoutError):
                client._connect(1.0)
            assert not client._joined
    finally:
        pub.close()
