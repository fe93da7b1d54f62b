"""Every socket a server binds bounds what a peer may send (ZMQ_MAXMSGSIZE),
the XPUBs too: a subscriber announcing a frame past the limit is
disconnected at once, and the server serves on.

The peer is a raw TCP socket speaking ZMTP 3.0 as an XSUB, so that it can
announce a frame of MAX_MESSAGE_SIZE + 1 bytes without sending (or
allocating) it: libzmq checks the size in the frame's header.  Without the
limit the server would wait for the 256 MiB and keep the connection open.
"""

import socket
import struct
import time
from urllib.parse import urlsplit

import zmq

from pylm._testing import tcp_addresses
from pylm.parts import core as parts_core
from pylm.parts.servers import ServerTemplate
from pylm.parts.services import PubService
from pylm.servers import MAX_MESSAGE_SIZE, Server
from pylm_core import _core

TIMEOUT = 10


def zmtp_xsub_handshake():
    """A ZMTP 3.0 greeting (NULL mechanism, as client) and the READY
    command of an XSUB."""
    greeting = (b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00"
                + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31)
    prop = b"Socket-Type"
    body = b"\x05READY" + bytes([len(prop)]) + prop + struct.pack(">I", 4) + b"XSUB"
    return greeting + b"\x04" + bytes([len(body)]) + body


def oversized_frame_header(size):
    """The header of one long message frame of `size` bytes (no body)."""
    return b"\x02" + struct.pack(">Q", size)


def peer_is_dropped(address, size):
    """Connect a raw ZMTP XSUB to `address`, announce a frame of `size`
    bytes; True when the server closes the connection (within TIMEOUT)."""
    url = urlsplit(address)
    with socket.create_connection((url.hostname, url.port), timeout=TIMEOUT) as sock:
        sock.sendall(zmtp_xsub_handshake())
        sock.sendall(oversized_frame_header(size) + b"x" * 16)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except socket.timeout:
                return False
            except ConnectionResetError:
                return True
            if not data:
                return True
        return False


def welcomed(address):
    """A pyzmq SUB connected to `address` gets the XPUB's welcome."""
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.linger = 0
    try:
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(address)
        return sub.poll(TIMEOUT * 1000) and sub.recv() == _core.WELCOME
    finally:
        sub.close()


def test_the_limit_is_one_definition():
    assert MAX_MESSAGE_SIZE == parts_core.MAX_MESSAGE_SIZE


def test_a_server_xpub_drops_a_peer_past_the_limit_and_serves_on(serve, make_client):
    db, pull, pub = tcp_addresses(3)
    serve(Server("xpub-limit", db, pull, pub))
    client = make_client("xpub-limit", db, timeout=TIMEOUT)
    assert client.eval("xpub-limit.echo", b"before", timeout=TIMEOUT) == b"before"
    assert peer_is_dropped(pub, MAX_MESSAGE_SIZE + 1)
    assert client.eval("xpub-limit.echo", b"after", timeout=TIMEOUT) == b"after"
    assert welcomed(pub)


def test_a_pub_service_drops_a_peer_past_the_limit_and_serves_on(serve):
    pub = tcp_addresses(1)[0]
    server = ServerTemplate()
    server.register_outbound(PubService, "Pub", pub)
    serve(server, ready=lambda s: s.ready.is_set())
    assert welcomed(pub)
    assert peer_is_dropped(pub, parts_core.MAX_MESSAGE_SIZE + 1)
    assert welcomed(pub)
