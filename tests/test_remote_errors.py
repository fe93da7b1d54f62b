"""The envelope's error field (field 15): one encoder
(pylm_core.errors.RemoteError.to_wire), one parser (from_wire), and readers
that decide by its structured `code`, never by the message's text."""

import json
import pickle

import pytest

import pylm
from pylm.errors import RemoteError
from pylm.servers import Server
from pylm_core.errors import BAD_FUNCTION, NO_METHOD, WORKER_LOST, error_text

from pylm.parts.messages_pb2 import PalmMessage

from test_http import GatewayWorker, debug_server, envelope, gateway_server, is_ready, request

TIMEOUT = 10


def test_the_error_field_round_trips_with_its_code():
    error = RemoteError("LookupError", "no method 'a.b'", "tb", NO_METHOD)
    text = error.to_wire()
    assert json.loads(text) == {"type": "LookupError", "message": "no method 'a.b'",
                                "traceback": "tb", "code": NO_METHOD}
    back = RemoteError.from_wire(text)
    assert (back.remote_type, back.remote_message, back.remote_traceback, back.code) == \
        ("LookupError", "no method 'a.b'", "tb", NO_METHOD)
    again = pickle.loads(pickle.dumps(back))
    assert (again.remote_type, again.code, str(again)) == \
        ("LookupError", NO_METHOD, "LookupError: no method 'a.b'")
    # a user's exception has no code, and the field keeps the three keys of
    # before (what pylm clients of earlier versions read)
    try:
        raise ValueError("boom")
    except ValueError as exc:
        fields = json.loads(error_text(exc))
    assert set(fields) == {"type", "message", "traceback"}
    assert fields["type"] == "ValueError" and fields["message"] == "boom"
    assert 'raise ValueError("boom")' in fields["traceback"]
    # plain "Type: message" text (a server that writes no JSON) still parses
    plain = RemoteError.from_wire("KeyError: 'k'")
    assert (plain.remote_type, plain.remote_message, plain.code) == ("KeyError", "'k'", "")


class WorkerLost(Exception):
    """A user's exception that happens to share a name with pylm's."""


class Failing(Server):
    def fail(self, payload):
        raise ValueError("failed on " + payload.decode())

    def lost(self, payload):
        raise WorkerLost("mine, not pylm's")


@pytest.fixture
def failing(addresses, serve, make_client):
    db, pull, pub = addresses(3)
    serve(Failing("failing", db, pull, pub))
    return make_client("failing", db, timeout=TIMEOUT)


@pytest.mark.parametrize("function, code", [
    ("failing.nothing", NO_METHOD),
    ("failing._private", NO_METHOD),
    ("nodot", BAD_FUNCTION),
    ("other.fail", BAD_FUNCTION),
    ("failing.fail", ""),
])
def test_a_server_answers_with_the_code_of_the_error(failing, function, code):
    with pytest.raises(RemoteError) as info:
        failing.eval(function, b"x", timeout=TIMEOUT)
    assert info.value.code == code, info.value
    if code:
        assert info.value.remote_type == "LookupError"
    else:
        assert info.value.remote_type == "ValueError"
        assert "failed on x" in info.value.remote_traceback
    # and the server keeps serving
    assert failing.eval("failing.echo", b"ok", timeout=TIMEOUT) == b"ok"


def test_worker_lost_is_known_by_its_code_not_by_the_type_name(failing):
    with pytest.raises(RemoteError) as info:
        failing.eval("failing.lost", b"x", timeout=TIMEOUT)
    assert not isinstance(info.value, pylm.WorkerLost)
    assert info.value.remote_type == "WorkerLost" and info.value.code == ""
    assert info.value.code != WORKER_LOST


class PrefixWorker(GatewayWorker):
    def lookup(self, payload):
        # a user's LookupError whose text reads like the library's own
        raise LookupError("no method of mine was found")


def test_the_gateway_answers_404_by_the_code_not_by_the_text(serve):
    server, gateway, db = gateway_server("inproc://test-remote-errors-gateway")
    serve(server, ready=is_ready)
    serve(PrefixWorker("w-prefix", db))
    status, body, _ = request(gateway.address, "GET", "/unknown")
    assert status == 404 and b"no method" in body
    status, body, _ = request(gateway.address, "GET", "/lookup")
    assert status == 500 and b"LookupError: no method of mine" in body, (status, body)
    assert request(gateway.address, "POST", "/shout", b"on")[:2] == (200, b"ON")


@pytest.mark.parametrize("function, stage, code", [
    ("srv.nothing", 0, NO_METHOD),
    ("srv._private", 0, NO_METHOD),
    ("nodot", 0, BAD_FUNCTION),
    ("srv.foo", 1, BAD_FUNCTION),
])
def test_an_http_worker_answers_404_with_the_code_of_the_error(function, stage, code):
    with debug_server() as server:
        status, body, _ = request(server.address, "POST", "/",
                                  envelope(function, b"x", stage=stage))
        error = RemoteError.from_wire(PalmMessage.FromString(body).error)
        assert (status, error.remote_type, error.code) == (404, "LookupError", code), error
