"""Issue 12, item 4: what a remote cache request may not do, and what an
error reply may leave out.

- A remote ``set``/``delete`` of a server's configuration keys is refused:
  our Client and Worker raise PermissionError, a pylm 0.14 client gets
  empty bytes, the value stays, and a new Client still finds the server.
- A remote ``set`` past the cache's bound (entries or bytes) is refused the
  same way (pylm.CacheFull, a PermissionError); at the bound, keys can be
  overwritten with no bigger values, and deleted and set again.
- ``send_tracebacks=False`` keeps the remote type and message and drops the
  traceback, on a Server, a Worker behind a Master, a Master's own hooks
  and a server made of parts.

Servers run in threads of this process, the pylm 0.14 client in the
legacy venv (tests/legacy.py); real sockets throughout.
"""

import json
import logging
import os

import pytest
import zmq

import pylm
from pylm import _local
from pylm._cache import CONFIG_KEYS, CacheClient
from pylm._testing import running, wait_for
from pylm.errors import CacheFull, RemoteError
from pylm.parts.messages_pb2 import PalmMessage
from pylm.parts.servers import ServerTemplate
from pylm.parts.services import CacheService
from pylm.servers import Master, Server, Worker
from pylm_core.errors import error_text

import legacy
from test_parts import (EchoWorker, FailingScatter, ReqConnection, envelope, is_ready,
                        parts_master, rep_peer, sockets, upper_envelope)

TIMEOUT = 10
ELSEWHERE = b"tcp://127.0.0.1:9"


class Store(Server):
    def forget(self, payload):
        """The server's own code deletes a key (not restricted)."""
        self.cache.delete(payload.decode())
        return b"forgotten"

    def republish(self, payload):
        """The server's own code rewrites one of its configuration keys."""
        return self.cache.set(self.cache.get("pub_address"), "pub_address").encode()

    def fail(self, payload):
        raise ValueError("failed on " + payload.decode())


class FailingWorker(Worker):
    def fail(self, payload):
        raise ValueError("worker failed on " + payload.decode())


class FailingScatterMaster(Master):
    def scatter(self, message):
        if message.payload == b"boom":
            raise KeyError("scatter exploded")
        yield message


def config_of(cache, keys):
    return {key: cache.get(key) for key in keys}


def assert_refused(cache_user, keys):
    """Every set and delete of `keys` raises PermissionError, with a
    message that names the key."""
    for key in keys:
        with pytest.raises(PermissionError, match="configuration key") as info:
            cache_user.set(ELSEWHERE, key)
        assert key in str(info.value)
        assert not isinstance(info.value, CacheFull)
        with pytest.raises(PermissionError, match="configuration key"):
            cache_user.delete(key)


# -- configuration keys, our Client and Worker --------------------------------

def test_a_server_refuses_remote_writes_of_its_configuration(addresses, make_client, caplog):
    db, pull, pub = addresses(3)
    server = Store("store", db, pull, pub)
    keys = ["name", "pull_address", "pub_address", "db_address", "pylm_protocol",
            "max_message_size"]
    with caplog.at_level(logging.WARNING, logger="pylm.Store.store"):
        with running(server):
            before = config_of(server.cache, keys)
            client = make_client("store", db, timeout=TIMEOUT)
            # preset keys, and reserved names this server did not preset
            assert_refused(client, keys + ["worker_push_address", "sub_address"])
            assert config_of(server.cache, keys) == before
            assert "worker_push_address" not in server.cache
            # other keys behave as in pylm 0.14, a session's keys too
            assert client.set(b"mine", "my_address") == "my_address"
            assert client.delete("my_address") == "my_address"
            session = make_client("store", db, session="s-", timeout=TIMEOUT)
            assert session.set(b"v", "name") == "s-name"
            assert client.get("name") == b"store"
            # the server's own code is not restricted
            assert client.eval("store.republish", b"", timeout=TIMEOUT) == b"pub_address"
            # a new client finds the server where it is (on this host, at
            # its ipc twins)
            fresh = make_client("store", db, timeout=TIMEOUT)
            assert fresh.push_address in (pull, _local.twin_of(pull))
            assert fresh.sub_address in (pub, _local.twin_of(pub))
            assert fresh.eval("store.echo", b"still here", timeout=TIMEOUT) == b"still here"
    refused = 2 * (len(keys) + 2)
    assert server.stats["cache_refused"] == refused
    logged = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert logged and "configuration key" in logged[0]
    assert len(logged) <= refused


def test_a_master_refuses_remote_writes_of_its_configuration(addresses, serve, make_client):
    pull, pub, wpull, wpush, db = addresses(5)
    master = Master("boss", pull, pub, wpull, wpush, db)
    serve(master)
    keys = ["name", "pull_address", "pub_address", "worker_pull_address",
            "worker_push_address", "worker_router_address", "db_address"]
    before = config_of(master.cache, keys)
    assert before["worker_router_address"]
    assert_refused(make_client("boss", db, timeout=TIMEOUT), keys)
    # Worker.set/delete go to the Master's cache too
    setter = Worker("w-setter", db, timeout=TIMEOUT)
    try:
        assert_refused(setter, keys)
    finally:
        setter._cache_client.close()
    assert config_of(master.cache, keys) == before
    # workers and clients that come after still find the Master
    serve(FailingWorker("w1", db))
    fresh = make_client("boss", db, timeout=TIMEOUT)
    assert fresh.eval("boss.echo", b"through a worker", timeout=TIMEOUT) == b"through a worker"


def test_a_parts_server_refuses_remote_writes_of_what_it_preset(addresses, serve,
                                                                 make_client):
    pull, pub, wpull, wpush, db = addresses(5)
    server = parts_master("parts", pull, pub, wpull, wpush, db)
    server.preset_cache(region=b"eu")           # any key preset is protected
    serve(server, ready=is_ready)
    keys = ["name", "pull_address", "pub_address", "worker_pull_address",
            "worker_push_address", "db_address", "region"]
    before = config_of(server.cache, keys)
    client = make_client("parts", db, timeout=TIMEOUT)
    assert_refused(client, keys)
    assert config_of(server.cache, keys) == before
    assert client.set(b"free", "not-preset") == "not-preset"
    serve(EchoWorker("w", db))
    fresh = make_client("parts", db, timeout=TIMEOUT)
    assert (fresh.push_address, fresh.sub_address) == (pull, pub)
    assert fresh.eval("parts.tag", b"x", timeout=TIMEOUT) == b"w:x"


def test_a_cache_service_alone_protects_the_keys_it_is_given():
    db, = legacy.tcp_addresses(1)
    service = CacheService("cache", db, protected_keys={"region"})
    service.cache.set(b"eu", "region")
    with running(service, ready=lambda s: True):
        cache = CacheClient(db, "any", timeout=TIMEOUT)
        try:
            with pytest.raises(PermissionError):
                cache.request("set", b"us", "region")
            with pytest.raises(PermissionError):       # reserved on every server
                cache.request("set", ELSEWHERE, "pull_address")
            assert cache.request("get", b"region") == b"eu"
            assert cache.request("set", b"1", "other") == b"other"
        finally:
            cache.close()


# -- configuration keys and the bound, a pylm 0.14 client ---------------------

@pytest.fixture(scope="module")
def legacy_python():
    try:
        return str(legacy.ensure_legacy_venv())
    except legacy.LegacyUnavailable as exc:
        if os.environ.get("PYLM_INTEROP_REQUIRED"):
            pytest.fail("pylm 0.14 venv required but unavailable: %s" % exc)
        pytest.skip("pylm 0.14 cannot be installed here: %s" % exc)


def old_cache_ops(python, tmp_path, name, db, *ops):
    """Run pylm 0.14's Client.set/delete/get (tests/legacy.py `cache`); the
    replies, as str."""
    with legacy.LegacyNode(python, tmp_path, "old-cache-client", "cache", name, db,
                           *ops) as node:
        assert node.wait_exit(60) == 0, node.logs()
        return json.loads(node.wait_line("RESULT ")[len("RESULT "):])


def make_server(kind, name, addresses):
    """A server of `kind` whose cache takes at most two remote entries."""
    if kind == "server":
        db, pull, pub = addresses(3)
        return Store(name, db, pull, pub, cache_max_entries=2), None
    pull, pub, wpull, wpush, db = addresses(5)
    if kind == "master":
        return Master(name, pull, pub, wpull, wpush, db, cache_max_entries=2), None
    return (parts_master(name, pull, pub, wpull, wpush, db, cache_max_entries=2),
            is_ready)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["server", "master", "parts"])
def test_a_pylm014_client_gets_empty_bytes_when_refused(kind, legacy_python, tmp_path,
                                                         addresses, make_client):
    server, ready = make_server(kind, "srv", addresses)
    with running(server, ready=ready):
        keys = ["name", "pull_address", "pub_address", "db_address"]
        before = config_of(server.cache, keys)
        db = before["db_address"].decode()
        replies = old_cache_ops(
            legacy_python, tmp_path, "srv", db,
            "set:pull_address:tcp://127.0.0.1:9", "set:name:evil", "delete:pub_address",
            "delete:db_address", "get:pull_address",
            "set:k1:a", "set:k2:b", "set:k3:c", "get:k3", "set:k1:z", "get:k1")
        assert replies == ["", "", "", "", before["pull_address"].decode(),
                           "k1", "k2", "", "", "k1", "z"]
        assert config_of(server.cache, keys) == before
        assert "k3" not in server.cache
        client = make_client("srv", db, timeout=TIMEOUT)
        # the published address, or on this host a Master's ipc twin of it
        pub = before["pub_address"].decode()
        assert client.sub_address in (pub, _local.twin_of(pub))
        if kind == "server":    # the others need workers to answer
            assert client.eval("srv.echo", b"ok", timeout=TIMEOUT) == b"ok"


# -- the bound ---------------------------------------------------------------

def test_the_entry_bound(addresses, serve, make_client):
    db, pull, pub = addresses(3)
    server = Store("store", db, pull, pub, cache_max_entries=3)
    serve(server)
    client = make_client("store", db, timeout=TIMEOUT)
    # the server's own (preset) keys do not count: three remote entries fit
    assert len(server.cache) > 3
    assert [client.set(b"v%d" % i, "k%d" % i) for i in range(3)] == ["k0", "k1", "k2"]
    with pytest.raises(CacheFull, match="full") as info:
        client.set(b"one more", "k3")
    assert isinstance(info.value, PermissionError) and isinstance(info.value, pylm.PylmError)
    with pytest.raises(CacheFull):
        client.set(b"a new key")                # a key made by the server counts too
    assert "k3" not in server.cache
    # at the bound: overwrite, delete and set again
    assert client.set(b"w1", "k1") == "k1" and client.get("k1") == b"w1"
    assert client.delete("k0") == "k0"
    assert client.set(b"v3", "k3") == "k3"
    with pytest.raises(CacheFull):
        client.set(b"v0", "k0")
    # a key the server's own code deleted frees its place (once the server
    # recounts: at most once a second)
    assert client.eval("store.forget", b"k2", timeout=TIMEOUT) == b"forgotten"

    def set_k4():
        try:
            return client.set(b"v4", "k4")
        except CacheFull:
            return None
    assert wait_for(set_k4, timeout=TIMEOUT, interval=0.1, what="k4 set") == "k4"
    assert sorted(k for k in ("k0", "k1", "k2", "k3", "k4") if k in server.cache) == \
        ["k1", "k3", "k4"]


def test_the_byte_bound(addresses, serve, make_client):
    db, pull, pub = addresses(3)
    server = Store("store", db, pull, pub, cache_max_bytes=100)
    serve(server)
    client = make_client("store", db, timeout=TIMEOUT)
    # keys and values count: 1 + 49 bytes each
    assert client.set(b"x" * 49, "a") == "a"
    with pytest.raises(CacheFull):
        client.set(b"y" * 51, "b")              # 50 + 52 > 100
    with pytest.raises(CacheFull):
        client.set(b"z" * 200, "big")           # more than the bound alone
    assert client.set(b"y" * 49, "b") == "b"    # exactly 100
    assert client.set(b"X" * 49, "a") == "a"    # same size
    with pytest.raises(CacheFull):
        client.set(b"X" * 50, "a")              # one byte more
    assert client.get("a") == b"X" * 49
    assert client.set(b"s", "a") == "a"         # smaller
    assert client.set(b"y" * 40, "c") == "c"    # what "a" gave back
    assert client.delete("b") == "b"
    assert client.set(b"y" * 49, "b") == "b"
    assert client.get("b") == b"y" * 49


def test_a_worker_raises_cache_full(addresses, serve):
    pull, pub, wpull, wpush, db = addresses(5)
    serve(Master("boss", pull, pub, wpull, wpush, db, cache_max_entries=1))
    worker = Worker("w-setter", db, timeout=TIMEOUT)
    try:
        assert worker.set(b"1", "one") == "one"
        with pytest.raises(CacheFull):
            worker.set(b"2", "two")
        assert worker.set(b"1bis", "one") == "one"
    finally:
        worker._cache_client.close()


def test_the_bound_of_a_parts_server(addresses, serve, make_client):
    pull, pub, wpull, wpush, db = addresses(5)
    server = parts_master("parts", pull, pub, wpull, wpush, db, cache_max_entries=1,
                          cache_max_bytes=1000)
    serve(server, ready=is_ready)
    client = make_client("parts", db, timeout=TIMEOUT)
    assert client.set(b"1", "one") == "one"
    with pytest.raises(CacheFull):
        client.set(b"2", "two")
    with pytest.raises(CacheFull):
        client.set(b"x" * 1000, "one")


def test_bound_keywords_are_keyword_only():
    with pytest.raises(TypeError):
        ServerTemplate(None, 10, True)
    with pytest.raises(TypeError):
        Worker("w", "tcp://127.0.0.1:1", None, None, None, 1, 1000, 10.0, 1.0, False)
    with pytest.raises(TypeError):                # a Worker serves no cache
        Worker("w", "tcp://127.0.0.1:1", cache_max_entries=1)
    assert {"name", "pull_address", "worker_router_address"} <= CONFIG_KEYS


# -- send_tracebacks ---------------------------------------------------------

def test_error_text_without_traceback():
    try:
        raise ValueError("boom")
    except ValueError as exc:
        fields = json.loads(error_text(exc, with_traceback=False))
        full = json.loads(error_text(exc))
    assert fields == {"type": "ValueError", "message": "boom", "traceback": ""}
    assert 'raise ValueError("boom")' in full["traceback"]


@pytest.mark.parametrize("send_tracebacks", [False, True])
def test_a_server_withholds_tracebacks(send_tracebacks, addresses, make_client, caplog):
    db, pull, pub = addresses(3)
    server = Store("store", db, pull, pub, send_tracebacks=send_tracebacks)
    with caplog.at_level(logging.ERROR, logger="pylm.Store.store"):
        with running(server):
            client = make_client("store", db, timeout=TIMEOUT)
            with pytest.raises(RemoteError) as info:
                client.eval("store.fail", b"this", timeout=TIMEOUT)
            assert client.eval("store.echo", b"after", timeout=TIMEOUT) == b"after"
    error = info.value
    assert (error.remote_type, error.remote_message) == ("ValueError", "failed on this")
    if send_tracebacks:
        assert "failed on" in error.remote_traceback and "fail" in error.remote_traceback
    else:
        assert error.remote_traceback == ""
    # the server logs the whole traceback either way
    assert any(r.exc_info and r.exc_info[0] is ValueError for r in caplog.records)


@pytest.mark.parametrize("send_tracebacks", [False, True])
def test_a_worker_behind_a_master_withholds_tracebacks(send_tracebacks, addresses, serve,
                                                      make_client):
    pull, pub, wpull, wpush, db = addresses(5)
    serve(FailingScatterMaster("boss", pull, pub, wpull, wpush, db,
                               send_tracebacks=send_tracebacks))
    serve(FailingWorker("w1", db, send_tracebacks=send_tracebacks))
    client = make_client("boss", db, timeout=TIMEOUT)
    with pytest.raises(RemoteError) as info:
        client.eval("boss.fail", b"that", timeout=TIMEOUT)
    assert (info.value.remote_type, info.value.remote_message) == \
        ("ValueError", "worker failed on that")
    assert bool(info.value.remote_traceback) == send_tracebacks
    # the Master's own hooks
    with pytest.raises(RemoteError) as info:
        client.eval("boss.echo", b"boom", timeout=TIMEOUT)
    assert info.value.remote_type == "KeyError" and "scatter exploded" in \
        info.value.remote_message
    assert bool(info.value.remote_traceback) == send_tracebacks
    assert client.eval("boss.echo", b"fine", timeout=TIMEOUT) == b"fine"


@pytest.mark.parametrize("send_tracebacks", [False, True])
def test_a_parts_server_withholds_tracebacks(send_tracebacks, serve):
    rep, service = legacy.tcp_addresses(2)
    server = ServerTemplate(send_tracebacks=send_tracebacks)
    server.register_inbound(FailingScatter, "Rep", rep, route="Req", block=True)
    server.register_outbound(ReqConnection, "Req", service)
    with rep_peer(service, upper_envelope), sockets() as make:
        serve(server, ready=is_ready)
        req = make(zmq.REQ, connect=rep)
        req.send(envelope(b"boom"))
        error = RemoteError.from_wire(PalmMessage.FromString(req.recv()).error)
        assert error.remote_type == "ValueError" and "scatter exploded" in error.remote_message
        assert bool(error.remote_traceback) == send_tracebacks
        req.send(envelope(b"fine"))
        assert PalmMessage.FromString(req.recv()).payload == b"FINE"


def test_the_error_reply_of_a_refusal_is_two_frames_only_when_asked(addresses, serve):
    """The wire: a request with stage 0 (pylm 0.14) gets one empty frame;
    one with stage 1 (our CacheClient) gets b"" and the error."""
    db, pull, pub = addresses(3)
    serve(Store("store", db, pull, pub))
    with sockets() as make:
        req = make(zmq.REQ, connect=db)
        for stage, expected in ((0, 1), (1, 2)):
            req.send(PalmMessage(function="store.set", stage=stage, cache="name",
                                 payload=b"evil").SerializeToString())
            frames = req.recv_multipart()
            assert len(frames) == expected and frames[0] == b""
        error = RemoteError.from_wire(frames[1].decode())
        assert error.remote_type == "PermissionError" and error.code == "protected_key"
