"""CURVE encryption and ZAP authentication (issue 12; shared/API.md,
"Security"): the rejection matrix, every pattern with keys, garbage at the
CURVE sockets, pylm 0.14 against a CURVE server, the environment variables.

Real sockets and processes; keys made with generate_keys in tmp_path.  A
bad peer's call must raise TimeoutError (short timeouts: BAD seconds), the
server must keep serving an authorized client, and count the refusal in
``stats['refused']`` (polled live through ``server.refused``).
"""

import os
import random
import shutil
import socket
from collections import Counter
from types import SimpleNamespace

import pytest
import zmq
import zmq.auth

from pylm._testing import in_child, running, stop_all, tcp_addresses, wait_for
from pylm.clients import Client
from pylm.parts.servers import ServerTemplate
from pylm.parts.services import (CacheService, PubService, PullService, WorkerPullService,
                                 WorkerPushService)
from pylm.security import (ENV_AUTHORIZED_KEYS, ENV_SECRET_KEY, ENV_SERVER_KEY, Security,
                           generate_keys, zap_running)
from pylm.servers import Hub, Master, Pipeline, Server, Worker

import legacy

TIMEOUT = 10        # seconds for a call that should answer
BAD = 0.5           # seconds a refused peer waits for its answer
REFUSED_WITHIN = 15  # seconds for a refusal to show in the live count


# -- keys ------------------------------------------------------------------------

@pytest.fixture
def keys(tmp_path):
    """A cluster key pair (every server here, and the Pipelines' own
    client side), an authorized client, a second authorized client, and an
    outsider; `authorized` holds the public keys of the first three."""
    made = {name: generate_keys(str(tmp_path / name), name)
            for name in ("server", "client", "client2", "worker", "outsider")}
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    for name in ("server", "client", "client2", "worker"):
        shutil.copy(made[name][0], authorized)
    ns = SimpleNamespace(authorized=str(authorized), dir=tmp_path,
                         **{name + "_public": pub for name, (pub, _) in made.items()},
                         **{name + "_secret": sec for name, (_, sec) in made.items()})
    ns.serve = dict(secret_key=ns.server_secret, authorized_keys=ns.authorized)
    ns.good = dict(server_key=ns.server_public, secret_key=ns.client_secret)
    ns.good2 = dict(server_key=ns.server_public, secret_key=ns.client2_secret)
    ns.worker = dict(server_key=ns.server_public, secret_key=ns.worker_secret)
    ns.pipe = dict(ns.serve, server_key=ns.server_public)
    return ns


def curve_options(server_public, secret):
    """Socket options of a raw CURVE client (pyzmq names)."""
    public, secret = zmq.auth.load_certificate(secret)
    return dict(CURVE_SERVERKEY=zmq.auth.load_certificate(server_public)[0],
                CURVE_PUBLICKEY=public, CURVE_SECRETKEY=secret)


def bad_peers(keys):
    """The refused clients: (label, Client keywords)."""
    return [("plain", {}),
            ("wrong server key", dict(server_key=keys.outsider_public,
                                      secret_key=keys.client_secret)),
            ("key not authorized", dict(server_key=keys.server_public,
                                        secret_key=keys.outsider_secret)),
            ("made-up key", dict(server_key=keys.server_public))]


# -- servers and workers (workers run in spawned children: module level) ---------

class Tagger(Server):
    def tag(self, payload):
        return payload + b"!"


class Pipe(Pipeline):
    def tag(self, payload):
        return payload + b"|piped"


class TagWorker(Worker):
    def tag(self, payload):
        return self.name.encode() + b":" + payload


def refuses(server, what, call):
    """`call()` (a bad peer's) raises TimeoutError and the server counts
    one more refused handshake."""
    before = server.refused
    with pytest.raises(TimeoutError):
        call()
    wait_for(lambda: server.refused > before, timeout=REFUSED_WITHIN,
             what="%s counted as refused" % what)


def bad_client_calls(server, name, db, push, sub, function, kwargs):
    """Every way a bad client is refused: the cache, and a call through
    push/sub addresses given without asking the cache."""
    refuses(server, "cache", lambda: Client(name, db, timeout=BAD, **kwargs))

    def call():
        with Client(name, None, push_address=push, sub_address=sub, this_config=True,
                    timeout=BAD, **kwargs) as client:
            client.eval(function, b"bad", timeout=BAD)
    refuses(server, "call", call)


def job_of(client, function, n, suffix):
    payloads = [b"%d" % i for i in range(n)]
    replies = list(client.job(function, iter(payloads), timeout=TIMEOUT))
    assert Counter(replies) == Counter(p + suffix for p in payloads)


def silent(sock, ms=300):
    """Nothing arrived on sock (within `ms`: used after traffic flowed)."""
    return not sock.poll(ms)


# -- the rejection matrix ----------------------------------------------------------

def test_server_refuses_bad_peers_and_serves_good_ones(keys):
    db, pull, pub = tcp_addresses(3)
    server = Tagger("srv", db, pull, pub, **keys.serve)
    with running(server, client_kwargs=keys.good):
        with Client("srv", db, timeout=TIMEOUT, **keys.good) as good:
            assert good.eval("srv.tag", b"x", timeout=TIMEOUT) == b"x!"
            for label, kwargs in bad_peers(keys):
                bad_client_calls(server, "srv", db, pull, pub, "srv.tag", kwargs)
                assert good.eval("srv.tag", label.encode(), timeout=TIMEOUT) \
                    == label.encode() + b"!"
            # a subscriber without a key on the XPUB gets nothing
            ctx = zmq.Context.instance()
            spy = ctx.socket(zmq.SUB)
            try:
                spy.setsockopt(zmq.LINGER, 0)
                spy.setsockopt(zmq.SUBSCRIBE, b"")
                before = server.refused
                spy.connect(pub)
                wait_for(lambda: server.refused > before, timeout=REFUSED_WITHIN,
                         what="the plain subscriber refused")
                job_of(good, "srv.tag", 3000, b"!")
                assert silent(spy)
                # the live statistics carry the count (Client.stats())
                assert good.stats()["refused"] >= 2 * len(bad_peers(keys)) + 1
            finally:
                spy.close(linger=0)
    assert server.stats["refused"] >= 2 * len(bad_peers(keys)) + 1
    assert server.stats["processed"] >= 3000


def test_a_removed_key_refuses_its_next_connection(keys, caplog):
    db, pull, pub = tcp_addresses(3)
    server = Tagger("srv", db, pull, pub, **keys.serve)
    with running(server, client_kwargs=keys.good2):
        with Client("srv", db, timeout=TIMEOUT, **keys.good2) as other:
            with Client("srv", db, timeout=TIMEOUT, **keys.good) as first:
                assert first.eval("srv.tag", b"1", timeout=TIMEOUT) == b"1!"
            os.remove(os.path.join(keys.authorized, "client.key"))
            before = server.refused

            def next_connection_refused():
                try:
                    with Client("srv", db, timeout=BAD, **keys.good) as again:
                        again.eval("srv.tag", b"2", timeout=BAD)
                except TimeoutError:
                    return True
                return False

            wait_for(next_connection_refused, timeout=15, what="the removed key refused")
            assert server.refused > before
            # the first refusal is logged at once, with the key and address
            client_key = zmq.auth.load_certificate(keys.client_public)[0].decode()
            wait_for(lambda: any(client_key in r.getMessage() and "127.0.0.1" in r.getMessage()
                                 for r in caplog.records if r.levelname == "WARNING"),
                     timeout=REFUSED_WITHIN, what="the refusal logged")
            # the others are served: the connection made before, and new ones
            assert other.eval("srv.tag", b"3", timeout=TIMEOUT) == b"3!"
            with Client("srv", db, timeout=TIMEOUT, **keys.good2) as fresh:
                assert fresh.eval("srv.tag", b"4", timeout=TIMEOUT) == b"4!"
    assert server.stats["refused"] >= 1


def master_addresses():
    pull, pub, wpull, wpush, db = tcp_addresses(5)
    return dict(pull_address=pull, pub_address=pub, worker_pull_address=wpull,
                worker_push_address=wpush, db_address=db)


def test_master_refuses_bad_peers_and_fake_workers(keys):
    addresses = master_addresses()
    db = addresses["db_address"]
    master = Master("m", worker_timeout=3.0, **addresses, **keys.serve)
    with running(master, client_kwargs=keys.good):
        procs = [in_child(TagWorker, "good", db, heartbeat=0.2, **keys.worker)]
        ctx = zmq.Context.instance()
        fakes = []
        try:
            with Client("m", db, timeout=TIMEOUT, **keys.good) as client:
                wait_for(lambda: client.eval("m.tag", b"up", timeout=TIMEOUT) == b"good:up",
                         timeout=30, what="the worker answering")
                for label, kwargs in bad_peers(keys):
                    bad_client_calls(master, "m", db, addresses["pull_address"],
                                     addresses["pub_address"], "m.tag", kwargs)
                # fake workers with a key not authorized: a Worker (its
                # cache request is refused), a DEALER at the worker ROUTER
                # asking for work, a pylm 0.14-style PULL at worker_push
                refuses(master, "fake Worker", lambda: TagWorker(
                    "fake", db, timeout=BAD, server_key=keys.server_public,
                    secret_key=keys.outsider_secret).start())
                outsider = curve_options(keys.server_public, keys.outsider_secret)
                router = client.get("worker_router_address").decode()
                for kind, address in ((zmq.DEALER, router),
                                      (zmq.PULL, addresses["worker_push_address"])):
                    sock = ctx.socket(kind)
                    fakes.append(sock)
                    sock.setsockopt(zmq.LINGER, 0)
                    for name, value in outsider.items():
                        sock.setsockopt(getattr(zmq, name), value)
                    before = master.refused
                    sock.connect(address)
                    if kind == zmq.DEALER:
                        sock.send_multipart([b"R", b"1000"])
                    wait_for(lambda: master.refused > before, timeout=REFUSED_WITHIN,
                             what="fake worker refused")
                replies = list(client.job("m.tag", (b"%d" % i for i in range(3000)),
                                          timeout=TIMEOUT))
                assert Counter(replies) == Counter(b"good:%d" % i for i in range(3000))
                assert all(silent(sock) for sock in fakes)
        finally:
            for sock in fakes:
                sock.close(linger=0)
            stop_all(procs)
    assert master.stats["refused"] >= 2 * len(bad_peers(keys)) + 3


def test_pipeline_refuses_bad_peers_and_outsiders_read_nothing(keys):
    db, pull, pub, pdb, ppub = tcp_addresses(5)
    server = Tagger("srv", db, pull, pub, pipelined=True, **keys.serve)
    pipe = Pipe("pipe", pdb, pub, ppub, "srv", **keys.pipe)
    ctx = zmq.Context.instance()
    spies = []
    with running(server, client_kwargs=keys.good), \
            running(pipe, ready=lambda p: True):
        try:
            with Client("srv", db, sub_address=ppub, timeout=TIMEOUT, **keys.good) as client:
                function = ["srv.tag", "pipe.tag"]
                wait_for(lambda: client.eval(function, b"up", timeout=TIMEOUT)
                         == b"up!|piped", timeout=30, what="the pipeline answering")
                for label, kwargs in bad_peers(keys):
                    def call():
                        with Client("srv", None, push_address=pull, sub_address=ppub,
                                    this_config=True, timeout=BAD, **kwargs) as bad:
                            bad.eval(function, b"bad", timeout=BAD)
                    refuses(pipe, label, call)
                # outsiders subscribed to everything: a plain SUB at the
                # pipeline, a SUB with a key not authorized at the server
                # (a rogue next stage)
                for target, address, options in (
                        (pipe, ppub, {}),
                        (server, pub, curve_options(keys.server_public,
                                                    keys.outsider_secret))):
                    spy = ctx.socket(zmq.SUB)
                    spies.append(spy)
                    spy.setsockopt(zmq.LINGER, 0)
                    spy.setsockopt(zmq.SUBSCRIBE, b"")
                    for name, value in options.items():
                        spy.setsockopt(getattr(zmq, name), value)
                    before = target.refused
                    spy.connect(address)
                    wait_for(lambda: target.refused > before, timeout=REFUSED_WITHIN,
                             what="outsider subscriber refused")
                job_of(client, function, 2000, b"!|piped")
                assert all(silent(spy) for spy in spies)
        finally:
            for spy in spies:
                spy.close(linger=0)
    assert pipe.stats["refused"] >= len(bad_peers(keys)) + 1
    assert server.stats["refused"] >= 1


# -- every pattern with CURVE on ---------------------------------------------------

def test_hub_with_curve(keys):
    db, pull, pub = tcp_addresses(3)
    addresses = master_addresses()
    addresses.pop("pull_address")
    hub_db = addresses["db_address"]
    server = Tagger("srv", db, pull, pub, pipelined=True, **keys.serve)
    hub = Hub("hub", pub, previous="srv", **addresses, **keys.pipe)
    with running(server, client_kwargs=keys.good), running(hub, ready=lambda h: True):
        procs = [in_child(TagWorker, "hw", hub_db, heartbeat=0.2, **keys.worker)]
        try:
            with Client("srv", db, sub_address=addresses["pub_address"], timeout=TIMEOUT,
                        **keys.good) as client:
                function = ["srv.tag", "hub.tag"]
                wait_for(lambda: client.eval(function, b"up", timeout=TIMEOUT) == b"hw:up!",
                         timeout=30, what="the hub's worker answering")
                replies = list(client.job(function, (b"%d" % i for i in range(2000)),
                                          timeout=TIMEOUT))
                assert Counter(replies) == Counter(b"hw:%d!" % i for i in range(2000))
        finally:
            stop_all(procs)


def test_parts_server_with_curve(keys):
    pull, pub, wpull, wpush, db = tcp_addresses(5)
    server = ServerTemplate(**keys.serve)
    server.register_inbound(PullService, "Pull", pull, route="WorkerPush")
    server.register_inbound(WorkerPullService, "WorkerPull", wpull, route="Pub")
    server.register_outbound(WorkerPushService, "WorkerPush", wpush)
    server.register_outbound(PubService, "Pub", pub)
    server.register_bypass(CacheService, "Cache", db)
    server.preset_cache(name="parts", db_address=db, pull_address=pull, pub_address=pub,
                        worker_pull_address=wpull, worker_push_address=wpush)
    with running(server, ready=lambda s: s.ready.is_set()):
        procs = [in_child(TagWorker, "pw", db, **keys.worker)]
        try:
            with Client("parts", db, timeout=TIMEOUT, **keys.good) as client:
                wait_for(lambda: client.eval("parts.tag", b"up", timeout=TIMEOUT) == b"pw:up",
                         timeout=30, what="the parts server's worker answering")
                payloads = [b"%d" % i for i in range(2000)]
                replies = list(client.job("parts.tag", iter(payloads), messages=2000,
                                          timeout=TIMEOUT))
                assert Counter(replies) == Counter(b"pw:" + p for p in payloads)
                refuses(server, "plain client", lambda: Client("parts", db, timeout=BAD))
        finally:
            stop_all(procs)


def test_plain_servers_beside_curve_servers_are_untouched(keys):
    """One ZAP authenticator serves the process while a CURVE server runs;
    a plain server's sockets (no ZAP domain) keep accepting plain peers,
    and the authenticator stops with the last CURVE server."""
    db, pull, pub, pdb, ppull, ppub = tcp_addresses(6)
    secure = Tagger("secure", db, pull, pub, **keys.serve)
    plain = Tagger("plain", pdb, ppull, ppub)
    assert not zap_running()
    with running(secure, client_kwargs=keys.good), running(plain):
        assert zap_running()
        with Client("plain", pdb, timeout=TIMEOUT) as client:
            job_of(client, "plain.tag", 500, b"!")
        with Client("secure", db, timeout=TIMEOUT, **keys.good) as client:
            assert client.eval("secure.tag", b"s", timeout=TIMEOUT) == b"s!"
    assert not zap_running()
    assert plain.stats["refused"] == 0


# -- garbage at every CURVE socket ----------------------------------------------

@pytest.fixture
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def test_garbage_at_every_curve_socket_of_a_master(keys, zctx):
    from test_reliability import (CACHE_GARBAGE, ROUTER_GARBAGE, WPULL_GARBAGE,
                                  XPUB_GARBAGE, Spray, plain_garbage, spray)

    rnd = random.Random(12)
    addresses = master_addresses()
    master = Master("m", worker_timeout=5.0, **addresses, **keys.serve)
    worker = TagWorker("w", addresses["db_address"], heartbeat=0.2, **keys.worker)
    ctx = zctx
    with running(master, client_kwargs=keys.good), running(worker):
        with Client("m", addresses["db_address"], timeout=TIMEOUT, **keys.good) as client:
            wait_for(lambda: client.eval("m.tag", b"up", timeout=TIMEOUT) == b"w:up",
                     timeout=30, what="the worker answering")
            router = client.get("worker_router_address").decode()
            calls = Counter()

            def check():
                payload = b"valid-%d" % calls["n"]
                assert client.eval("m.tag", payload, timeout=TIMEOUT) == b"w:" + payload
                calls["n"] += 1

            authorized = curve_options(keys.server_public, keys.client2_secret)
            targets = [(zmq.PUSH, addresses["pull_address"], plain_garbage("m")),
                       (zmq.PUSH, addresses["worker_pull_address"], WPULL_GARBAGE),
                       (zmq.DEALER, router, ROUTER_GARBAGE),
                       (zmq.REQ, addresses["db_address"], CACHE_GARBAGE),
                       (zmq.XSUB, addresses["pub_address"], XPUB_GARBAGE)]
            sprays = []
            try:
                # authorized peers sending garbage, through the encryption
                for kind, address, garbage in targets:
                    sprays.append((Spray(ctx, kind, address, n=2, **authorized), garbage))
                spray(rnd, sprays, 2000, check)
                # unauthenticated garbage: raw bytes at the TCP ports (dropped
                # by libzmq; counted when they fail a ZMTP 3 handshake: bytes
                # that look like ZMTP 1.0 are dropped without an event), and
                # plain peers (refused: counted)
                for kind, address, _ in targets:
                    host, port = address[len("tcp://"):].rsplit(":", 1)
                    for garbage in (rnd.randbytes(300), b"\xff" + rnd.randbytes(300)):
                        with socket.create_connection((host, int(port)),
                                                      timeout=TIMEOUT) as raw:
                            raw.sendall(garbage)
                            try:        # until the server drops the connection
                                while raw.recv(4096):
                                    pass
                            except ConnectionResetError:
                                pass
                before = master.refused
                for kind, address, _ in targets:
                    sprays.append((Spray(ctx, kind, address, n=1), None))
                wait_for(lambda: master.refused >= before + len(targets),
                         timeout=REFUSED_WITHIN, what="plain peers refused")
                check()
                job_of_master = list(client.job("m.tag", (b"%d" % i for i in range(1000)),
                                                timeout=TIMEOUT))
                assert Counter(job_of_master) == Counter(b"w:%d" % i for i in range(1000))
            finally:
                for sock, _ in sprays:
                    sock.close()
    assert master.stats["bad"] > 0
    assert master.stats["refused"] >= len(targets)


# -- pylm 0.14 against a CURVE server ------------------------------------------------

@pytest.fixture(scope="module")
def legacy_python():
    try:
        return str(legacy.ensure_legacy_venv())
    except legacy.LegacyUnavailable as exc:
        if os.environ.get("PYLM_INTEROP_REQUIRED"):
            pytest.fail("pylm 0.14 venv required but unavailable: %s" % exc)
        pytest.skip("pylm 0.14 cannot be installed here: %s" % exc)


def test_a_pylm_014_client_is_refused_cleanly(keys, legacy_python, tmp_path):
    db, pull, pub = tcp_addresses(3)
    server = Tagger("srv", db, pull, pub, **keys.serve)
    with running(server, client_kwargs=keys.good):
        before = server.refused
        with legacy.LegacyNode(legacy_python, tmp_path, "old-client", "client", "srv", db,
                               "--function", "srv.tag", "--evals", "1", "--push", pull,
                               "--sub", pub, "--rcvtimeo", "1000") as old:
            wait_for(lambda: server.refused > before, timeout=30,
                     what="the pylm 0.14 client refused")
            with Client("srv", db, timeout=TIMEOUT, **keys.good) as client:
                job_of(client, "srv.tag", 500, b"!")
            old.stop()
            assert "RESULT" not in old.stdout(), old.logs()


# -- settings: keywords, environment, errors -----------------------------------

def test_the_environment_configures_servers_and_clients(keys, monkeypatch):
    monkeypatch.setenv(ENV_SECRET_KEY, keys.server_secret)
    monkeypatch.setenv(ENV_AUTHORIZED_KEYS, keys.authorized)
    db, pull, pub = tcp_addresses(3)
    server = Tagger("srv", db, pull, pub)
    # clients: the server's key from the environment, their own secret too
    monkeypatch.setenv(ENV_SERVER_KEY, keys.server_public)
    monkeypatch.setenv(ENV_SECRET_KEY, keys.client_secret)
    with running(server):
        assert server.refused == 0
        with Client("srv", db, timeout=TIMEOUT) as client:
            assert client.eval("srv.tag", b"env", timeout=TIMEOUT) == b"env!"
        # an explicit keyword wins over the environment
        refuses(server, "outsider by keyword", lambda: Client(
            "srv", db, timeout=BAD, secret_key=keys.outsider_secret))
        monkeypatch.setenv(ENV_SERVER_KEY, keys.outsider_public)
        with Client("srv", db, timeout=TIMEOUT, server_key=keys.server_public) as client:
            assert client.eval("srv.tag", b"kw", timeout=TIMEOUT) == b"kw!"
    # an empty variable is no setting
    monkeypatch.setenv(ENV_SERVER_KEY, "")
    monkeypatch.setenv(ENV_SECRET_KEY, "")
    assert not Security.for_client().enabled


def test_settings_are_checked_at_construction(keys, monkeypatch, tmp_path):
    for name in (ENV_SECRET_KEY, ENV_SERVER_KEY, ENV_AUTHORIZED_KEYS):
        monkeypatch.delenv(name, raising=False)
    db, pull, pub = tcp_addresses(3)
    missing = str(tmp_path / "nope.key_secret")
    with pytest.raises(FileNotFoundError, match="nope.key_secret"):
        Server("s", db, pull, pub, secret_key=missing)
    with pytest.raises(ValueError, match="no secret key"):
        Server("s", db, pull, pub, secret_key=keys.server_public)
    with pytest.raises(ValueError, match="needs a secret_key"):
        Server("s", db, pull, pub, authorized_keys=keys.authorized)
    with pytest.raises(FileNotFoundError, match="no directory"):
        Server("s", db, pull, pub, secret_key=keys.server_secret,
               authorized_keys=str(tmp_path / "none"))
    junk = tmp_path / "junk.key"
    junk.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="junk.key"):
        Client("s", db, server_key=str(junk), this_config=True)
    with pytest.raises(ValueError, match="without a server_key"):
        Client("s", db, secret_key=keys.client_secret, this_config=True)
    with pytest.raises(ValueError, match="without a server_key"):
        Worker("w", db, secret_key=keys.worker_secret)
    monkeypatch.setenv(ENV_SECRET_KEY, missing)
    with pytest.raises(FileNotFoundError, match="secret_key"):
        Server("s", db, pull, pub)
    # the keyword wins: the bad variable is not read
    Server("s", db, pull, pub, secret_key=keys.server_secret)
    # a client with a server key and no secret makes its pair at construction
    monkeypatch.delenv(ENV_SECRET_KEY)
    made = Security.for_client(server_key=keys.server_public)
    assert made.server_key and made.public and made.secret and not made.serving
    assert Security.for_client(server_key=keys.server_public).public != made.public


# -- examples with keys from the environment --------------------------------------

@pytest.mark.parametrize("example", ["parallel", "pipeline"])
def test_examples_run_with_curve_from_the_environment(keys, monkeypatch, example):
    from test_examples import EXPECTED, run as run_example

    monkeypatch.setenv(ENV_SECRET_KEY, keys.server_secret)
    monkeypatch.setenv(ENV_SERVER_KEY, keys.server_public)
    monkeypatch.setenv(ENV_AUTHORIZED_KEYS, keys.authorized)
    out = run_example(example)
    last = {name: last for name, _, last in EXPECTED}[example]
    assert out and out[-1] == last, out
