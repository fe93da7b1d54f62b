"""The cache: DictDB, the cache service every server runs at its db_address,
and the Client's set/get/delete over real ZeroMQ sockets."""

import threading
import time

import pytest

from pylm._cache import CacheClient
from pylm._testing import running
from pylm.persistence.kv import DictDB
from pylm.security import generate_keys
from pylm.servers import Master, Server

TIMEOUT = 10


class Store(Server):
    def lookup(self, payload):
        """What the server itself sees in its cache under the key `payload`."""
        value = self.cache.get(payload.decode())
        return b"<none>" if value is None else value


@pytest.fixture
def store(addresses, serve):
    db, pull, pub = addresses(3)
    server = Store("store", db, pull, pub)
    serve(server)
    return server


@pytest.fixture
def client(store, make_client):
    return make_client("store", store.db_address)


# -- over the wire -------------------------------------------------------------

def test_set_get_delete(store, client):
    key = client.set(b"a value")
    assert isinstance(key, str) and key
    assert client.get(key) == b"a value"
    assert client.set(b"named", "my-key") == "my-key"
    assert client.get("my-key") == b"named"
    # the server's own cache is the one served
    assert store.cache.get("my-key") == b"named"
    assert client.eval("store.lookup", b"my-key", timeout=TIMEOUT) == b"named"
    # overwrite
    assert client.set(b"changed", "my-key") == "my-key"
    assert client.get("my-key") == b"changed"
    assert client.delete("my-key") == "my-key"
    assert client.get("my-key") == b""
    assert "my-key" not in store.cache
    assert client.eval("store.lookup", b"my-key", timeout=TIMEOUT) == b"<none>"
    # deleting a missing key is fine
    assert client.delete("my-key") == "my-key"


def test_get_of_a_missing_key_is_empty_bytes(client):
    assert client.get("never set") == b""


def test_binary_and_empty_values(client):
    blob = bytes(range(256)) * 64
    assert client.get(client.set(blob, "blob")) == blob
    assert client.set(b"", "empty") == "empty"
    assert client.get("empty") == b""


@pytest.mark.parametrize("value", ["str", 1, None, bytearray(b"x"), memoryview(b"x")])
def test_set_of_non_bytes_is_a_type_error(store, client, value):
    with pytest.raises(TypeError):
        client.set(value, "k")
    assert "k" not in store.cache


def test_session_prefixes_keys(store, client, make_client):
    session = make_client("store", store.db_address, session="sess-")
    assert session.set(b"in session", "k") == "sess-k"
    assert session.get("k") == b"in session"
    assert client.get("sess-k") == b"in session"
    assert client.get("k") == b""
    assert "sess-k" in store.cache and "k" not in store.cache
    assert session.delete("k") == "sess-k"
    assert client.get("sess-k") == b""


def test_server_config_keys(store, client):
    assert client.get("name") == b"store"
    assert client.get("pull_address") == store.pull_address.encode()
    assert client.get("pub_address") == store.pub_address.encode()


def test_master_config_keys(addresses, make_client):
    pull, pub, wpull, wpush, db = addresses(5)
    master = Master("boss", pull, pub, wpull, wpush, db)
    with running(master):
        client = make_client("boss", db)
        assert client.get("name") == b"boss"
        assert client.get("pull_address") == pull.encode()
        assert client.get("pub_address") == pub.encode()
        assert client.get("worker_pull_address") == wpull.encode()
        assert client.get("worker_push_address") == wpush.encode()
        assert client.get("db_address") == db.encode()


def test_a_master_uses_the_cache_it_is_given(addresses, make_client):
    pull, pub, wpull, wpush, db = addresses(5)
    cache = DictDB()
    cache.set(b"preset", "before-start")
    master = Master("boss", pull, pub, wpull, wpush, db, False, cache)
    with running(master):
        client = make_client("boss", db)
        assert client.get("before-start") == b"preset"
        client.set(b"from client", "after")
    assert cache.get("after") == b"from client"


def test_masters_do_not_share_a_default_cache():
    # pylm 0.14 had one DictDB() default shared by every Master
    a = Master("a", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3",
               "tcp://127.0.0.1:4", "tcp://127.0.0.1:5")
    b = Master("b", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", "tcp://127.0.0.1:3",
               "tcp://127.0.0.1:4", "tcp://127.0.0.1:5")
    a.cache.set(b"only a", "k")
    assert b.cache.get("k") is None


# -- DictDB --------------------------------------------------------------------

def test_dictdb_set_get_delete():
    db = DictDB()
    assert db.get("missing") is None
    assert db.set(b"v", "k") == "k"
    assert db.get("k") == b"v"
    assert "k" in db and "missing" not in db
    auto = db.set(b"w")
    assert isinstance(auto, str) and auto != "k" and db.get(auto) == b"w"
    assert db.set(b"x", "") != ""  # a falsy key gets a new one
    assert db.delete("k") == "k"
    assert "k" not in db and db.get("k") is None
    assert db.delete("k") == "k"  # missing: no error


def test_dictdb_clean_prefix():
    db = DictDB()
    for key in ("a1", "a2", "ab", "b1", "b2"):
        db.set(key.encode(), key)
    db.clean("a")
    assert not any(key in db for key in ("a1", "a2", "ab"))
    assert "b1" in db and "b2" in db
    db.clean("nothing-matches")
    assert "b1" in db and "b2" in db
    db.clean()
    assert "b1" not in db and "b2" not in db
    assert len(db) == 0


def test_dictdb_is_thread_safe():
    db = DictDB()

    def writer(t):
        for i in range(2000):
            db.set(b"%d" % i, "t%d-%d" % (t, i))
            if i % 2:
                db.delete("t%d-%d" % (t, i - 1))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(db) == 4 * 1000
    assert all("t%d-%d" % (t, i) in db for t in range(4) for i in range(1, 2000, 2))


def test_a_refused_cache_request_times_out_every_time(tmp_path, addresses):
    """A plain REQ against a CURVE server is refused at each handshake; the
    send as well as the answer is bounded by `timeout` (a REQ without a
    peer blocks in send), so every request raises TimeoutError in time and
    the client stays usable."""
    _, secret = generate_keys(str(tmp_path), "server")
    db, pull, pub = addresses(3)
    server = Server("s", db, pull, pub, secret_key=secret)
    thread = threading.Thread(target=server.start, daemon=True)
    thread.start()
    cache = CacheClient(db, "s", timeout=0.2)
    try:
        for _ in range(20):
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                cache.request("get", b"name")
            assert time.monotonic() - started < 0.2 + 5
    finally:
        cache.close()
        server.stop()
        thread.join(10)
    assert not thread.is_alive()
