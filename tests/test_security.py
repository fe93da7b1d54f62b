"""CURVE encryption and ZAP authentication (issue 12; shared/API.md,
"Security"): the rejection matrix, every pattern with keys, garbage at the
CURVE sockets, pylm 0.14 against a CURVE server, the environment variables.

Real sockets and processes; keys made with generate_keys in tmp_path.  A
bad peer's call must raise TimeoutError (short timeouts: BAD seconds), the
server must keep serving an authorized client, and count the refusal in
``stats['refused']`` (polled live through ``server.refused``).
"""

import multiprocessing
import os
import random
import shutil
import socket
import threading
import time
from collections import Counter
from types import SimpleNamespace

import pytest
import zmq
import zmq.auth

from pylm import _local
from pylm._testing import in_child, running, stop_all, tcp_addresses, tcp_ports, wait_for
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
    """The refused clients: (label, Client keywords, the public key the
    ZAP refusal names or None)."""
    return [("plain", {}, None),
            ("wrong server key", dict(server_key=keys.outsider_public,
                                      secret_key=keys.client_secret), None),
            ("key not authorized", dict(server_key=keys.server_public,
                                        secret_key=keys.outsider_secret), keys.outsider_public),
            ("made-up key", dict(server_key=keys.server_public), None)]


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


def settle(server, quiet=0.5):
    """Wait until `server.refused` stayed unchanged for `quiet` seconds: a
    refused peer retries its handshake about 10 times a second while its
    sockets live (a PUSH lingers after close), and its late refusals must
    not count for the next peer."""
    last = [server.refused, time.monotonic()]

    def still():
        now = server.refused
        if now != last[0]:
            last[:] = [now, time.monotonic()]
            return False
        return time.monotonic() - last[1] >= quiet
    wait_for(still, timeout=REFUSED_WITHIN, interval=0.05, what="refusals settled")


def refuses(server, what, call, key=None):
    """`call()` (a bad peer's, whose sockets are closed when it returns)
    raises TimeoutError and the server counts one more refused handshake;
    with `key` (a public key file), the ZAP refusal named that key."""
    settle(server)
    before = server.refused
    with pytest.raises(TimeoutError):
        call()
    wait_for(lambda: server.refused > before, timeout=REFUSED_WITHIN,
             what="%s counted as refused" % what)
    if key is not None:
        z85 = zmq.auth.load_certificate(key)[0].decode()
        refusals = server.router._refusals if hasattr(server, "router") else server._refusals
        wait_for(lambda: z85 in (refusals._who or ""), timeout=REFUSED_WITHIN,
                 what="%s refused for its key" % what)


def bad_call(name, push, sub, function, kwargs):
    """A call by a bad client through push/sub addresses given without
    asking the cache; its sockets are closed at once (linger 0) when the
    call timed out, so that it stops retrying its handshake."""
    def call():
        with Client(name, None, push_address=push, sub_address=sub, this_config=True,
                    timeout=BAD, **kwargs) as client:
            try:
                client.eval(function, b"bad", timeout=BAD)
            finally:
                if client._push is not None:
                    client._push.setsockopt(zmq.LINGER, 0)
    return call


def bad_client_calls(server, name, db, push, sub, function, kwargs, key=None):
    """Every way a bad client is refused: the cache, and a call through
    push/sub addresses given without asking the cache."""
    refuses(server, "cache", lambda: Client(name, db, timeout=BAD, **kwargs), key)
    refuses(server, "call", bad_call(name, push, sub, function, kwargs), key)


def job_of(client, function, n, suffix, prefix=b""):
    payloads = [b"%d" % i for i in range(n)]
    replies = list(client.job(function, iter(payloads), timeout=TIMEOUT))
    assert Counter(replies) == Counter(prefix + p + suffix for p in payloads)


def refused_peer(server, ctx, kind, address, options, subscribe=False):
    """A raw socket of `kind` with `options` (CURVE settings or none),
    connected to `address`: a fake worker (DEALER) announces itself, a SUB
    subscribes to everything; returns it once `server` counted its refusal."""
    sock = ctx.socket(kind)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        if subscribe:
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name), value)
        settle(server)
        before = server.refused
        sock.connect(address)
        if kind == zmq.DEALER:
            sock.send_multipart([b"R", b"1000"])
        wait_for(lambda: server.refused > before, timeout=REFUSED_WITHIN,
                 what="%s at %s refused" % (sock.type, address))
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


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
            with pytest.raises(TimeoutError, match="server_key"):
                Client("srv", db, timeout=BAD)      # the message hints at the keys
            for label, kwargs, key in bad_peers(keys):
                bad_client_calls(server, "srv", db, pull, pub, "srv.tag", kwargs, key)
                assert good.eval("srv.tag", label.encode(), timeout=TIMEOUT) \
                    == label.encode() + b"!"
            # a subscriber without a key on the XPUB gets nothing
            ctx = zmq.Context.instance()
            spy = ctx.socket(zmq.SUB)
            try:
                spy.setsockopt(zmq.LINGER, 0)
                spy.setsockopt(zmq.SUBSCRIBE, b"")
                settle(server)
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
                for label, kwargs, key in bad_peers(keys):
                    bad_client_calls(master, "m", db, addresses["pull_address"],
                                     addresses["pub_address"], "m.tag", kwargs, key)
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
                    sock = refused_peer(master, ctx, kind, address, outsider)
                    fakes.append(sock)
                    z85 = zmq.auth.load_certificate(keys.outsider_public)[0].decode()
                    assert z85 in master._refusals._who
                    # while it retries, the real worker gets every call
                    job_of(client, "m.tag", 500, b"", prefix=b"good:")
                    assert silent(sock)
                    sock.close(linger=0)    # it stops retrying before the next one
                replies = list(client.job("m.tag", (b"%d" % i for i in range(3000)),
                                          timeout=TIMEOUT))
                assert Counter(replies) == Counter(b"good:%d" % i for i in range(3000))
        finally:
            for sock in fakes:
                sock.close(linger=0)
            stop_all(procs)
    assert master.stats["refused"] >= 2 * len(bad_peers(keys)) + 3


@pytest.mark.skipif(not _local.host_id(), reason="abstract ipc sockets are Linux's")
def test_the_ipc_twins_of_a_master_refuse_as_its_tcp_endpoints(keys):
    """A Master's ipc twins (pylm/_local.py) are its tcp sockets bound once
    more: a good client on its host goes through them, and every bad peer
    at a twin (a plain or refused client, a plain subscriber, a fake worker
    with a key not authorized) is refused and counted, and reads nothing."""
    addresses = master_addresses()
    db = addresses["db_address"]
    master = Master("m", worker_timeout=3.0, **addresses, **keys.serve)
    worker = TagWorker("good", db, heartbeat=0.2, **keys.worker)
    ctx = zmq.Context.instance()
    with running(master, client_kwargs=keys.good), running(worker):
        with Client("m", db, timeout=TIMEOUT, **keys.good) as client:
            pull, pub = client.push_address, client.sub_address
            assert (pull, pub) == (_local.twin_of(addresses["pull_address"]),
                                   _local.twin_of(addresses["pub_address"]))
            wait_for(lambda: client.eval("m.tag", b"up", timeout=TIMEOUT) == b"good:up",
                     timeout=30, what="the worker answering")
            assert worker.router_address.startswith("ipc://@pylm/")
            for label, kwargs, key in bad_peers(keys):
                refuses(master, "%s at the twins" % label,
                        bad_call("m", pull, pub, "m.tag", kwargs), key)
            outsider = curve_options(keys.server_public, keys.outsider_secret)
            for kind, address, options in ((zmq.SUB, pub, {}),
                                           (zmq.DEALER, worker.router_address, outsider)):
                sock = refused_peer(master, ctx, kind, address, options,
                                    subscribe=kind == zmq.SUB)
                try:
                    job_of(client, "m.tag", 500, b"", prefix=b"good:")
                    assert silent(sock)
                finally:
                    sock.close(linger=0)


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
                for label, kwargs, key in bad_peers(keys):
                    refuses(pipe, label, bad_call("srv", pull, ppub, function, kwargs), key)
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
                    settle(target)
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


def test_a_part_with_its_own_key_checks_the_templates_authorized_keys(keys):
    """A part given only its own secret key inside a template with
    authorized_keys checks the template's keys (it used to accept any)."""
    db, pull, pub = tcp_addresses(3)
    server = ServerTemplate(**keys.serve)
    cache = server.register_bypass(CacheService, "Cache", db, secret_key=keys.worker_secret)
    assert cache._security.authorized_keys == keys.authorized
    assert cache._security.public == zmq.auth.load_certificate(keys.worker_public)[0]
    server.preset_cache(name="parts", db_address=db, pull_address=pull, pub_address=pub)
    as_part = dict(server_key=keys.worker_public)
    with running(server, ready=lambda s: s.ready.is_set()):
        with Client("parts", db, timeout=TIMEOUT, secret_key=keys.client_secret,
                    **as_part) as client:
            assert client.get("name") == b"parts"
        refuses(server, "outsider at the part", lambda: Client(
            "parts", db, timeout=BAD, secret_key=keys.outsider_secret, **as_part),
            keys.outsider_public)


# -- the process's authenticator: restarts, threads, forks ----------------------

def test_a_curve_server_restarts_at_once(keys):
    """libzmq frees the ZAP endpoint after the last authenticator stopped
    asynchronously: starting again at once must wait for it, not fail."""
    db, pull, pub = tcp_addresses(3)
    server = Tagger("srv", db, pull, pub, **keys.serve)
    for cycle in range(15):
        with running(server, client_kwargs=keys.good):
            with Client("srv", db, timeout=TIMEOUT, **keys.good) as client:
                payload = b"%d" % cycle
                assert client.eval("srv.tag", payload, timeout=TIMEOUT) == payload + b"!"
    assert not zap_running()


def test_no_thread_is_left_after_a_curve_server_stops(keys):
    before = set(threading.enumerate())
    db, pull, pub = tcp_addresses(3)
    server = Tagger("srv", db, pull, pub, **keys.serve)
    with running(server, client_kwargs=keys.good):
        assert zap_running()
        with Client("srv", db, timeout=TIMEOUT, **keys.good) as client:
            assert client.eval("srv.tag", b"t", timeout=TIMEOUT) == b"t!"
    wait_for(lambda: set(threading.enumerate()) <= before, timeout=TIMEOUT,
             what="every thread of the server gone: %s" % (set(threading.enumerate()) - before))
    assert not zap_running()


def test_a_curve_socket_without_an_authenticator_refuses(keys, zctx):
    """ZAP is enforced on every CURVE server socket: in a context where no
    authenticator is bound (zctx: a context of its own; a forked child
    before its first CURVE server), a handshake is refused, not let
    through with any key."""
    security = Security.for_server(keys.server_secret, authorized_keys=keys.authorized)
    answered = {}
    for enforced in (1, 0):
        rep = zctx.socket(zmq.REP)
        req = zctx.socket(zmq.REQ)
        try:
            rep.setsockopt(zmq.LINGER, 0)
            security.serve(rep)
            assert rep.getsockopt(zmq.ZAP_ENFORCE_DOMAIN) == 1
            rep.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, enforced)
            port = rep.bind_to_random_port("tcp://127.0.0.1")
            req.setsockopt(zmq.LINGER, 0)
            for name, value in curve_options(keys.server_public, keys.outsider_secret).items():
                req.setsockopt(getattr(zmq, name), value)
            req.connect("tcp://127.0.0.1:%d" % port)
            req.send(b"anyone?")
            # the control (libzmq's default) lets the stranger through
            if rep.poll(TIMEOUT * 1000 if not enforced else 1000):
                rep.send(rep.recv())
                answered[enforced] = req.poll(TIMEOUT * 1000) != 0
            else:
                answered[enforced] = False
        finally:
            rep.close(linger=0)
            req.close(linger=0)
    assert answered == {1: False, 0: True}


def test_an_authenticator_of_ones_own_stops_a_curve_server_plainly(keys, caplog):
    """libzmq has one ZAP endpoint per context: with the process's taken by
    a socket of the user's own, a CURVE server's start() raises (after the
    bounded retry) instead of serving without its cache."""
    own = zmq.Context.instance().socket(zmq.REP)
    own.bind("inproc://zeromq.zap.01")
    db, pull, pub = tcp_addresses(3)
    server = Tagger("srv", db, pull, pub, **keys.serve)
    try:
        with pytest.raises(zmq.ZMQError, match="zeromq.zap.01"):
            server.start()
    finally:
        own.close(linger=0)
    assert "cache not served" not in caplog.text
    assert not zap_running()
    with running(server, client_kwargs=keys.good):     # once it is free
        with Client("srv", db, timeout=TIMEOUT, **keys.good) as client:
            assert client.eval("srv.tag", b"x", timeout=TIMEOUT) == b"x!"


def _serve_in_forked_child(keys, queue):
    """In a forked child: a CURVE server with authorized_keys; reports
    what an outsider and an authorized client got."""
    result = {}
    try:
        db, pull, pub = tcp_addresses(3)
        server = Tagger("child", db, pull, pub, **keys.serve)
        with running(server, client_kwargs=keys.good):
            try:
                with Client("child", db, timeout=BAD, server_key=keys.server_public,
                            secret_key=keys.outsider_secret) as outsider:
                    result["outsider"] = outsider.eval("child.tag", b"o", timeout=BAD)
            except TimeoutError:
                result["outsider"] = None
            with Client("child", db, timeout=TIMEOUT, **keys.good) as client:
                result["good"] = client.eval("child.tag", b"g", timeout=TIMEOUT)
    except BaseException as exc:
        result["error"] = repr(exc)
    queue.put(result)


def test_a_forked_child_checks_keys_with_an_authenticator_of_its_own(keys):
    """A child forked while the parent's authenticator runs inherits its
    state but not its thread; its own CURVE server must still refuse a key
    not authorized (it used to accept any)."""
    db, pull, pub = tcp_addresses(3)
    parent = Tagger("parent", db, pull, pub, **keys.serve)
    fork = multiprocessing.get_context("fork")
    with running(parent, client_kwargs=keys.good):
        assert zap_running()
        queue = fork.Queue()
        child = fork.Process(target=_serve_in_forked_child, args=(keys, queue))
        child.start()
        try:
            result = queue.get(timeout=60)
            child.join(30)
        finally:
            if child.is_alive():
                child.kill()
                child.join(10)
        with Client("parent", db, timeout=TIMEOUT, **keys.good) as client:
            assert client.eval("parent.tag", b"p", timeout=TIMEOUT) == b"p!"
    assert result == {"outsider": None, "good": b"g!"}, result
    assert child.exitcode == 0


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
                # the worker push socket (a PUSH: nobody sends to it) is
                # sprayed with raw bytes and met by a plain PULL only
                wpush = (zmq.PULL, addresses["worker_push_address"], None)
                for kind, address, _ in targets + [wpush]:
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
                for kind, address, _ in targets + [wpush]:
                    sprays.append((Spray(ctx, kind, address, n=1), None))
                wait_for(lambda: master.refused >= before + len(targets) + 1,
                         timeout=REFUSED_WITHIN, what="plain peers refused")
                check()
                job_of_master = list(client.job("m.tag", (b"%d" % i for i in range(1000)),
                                                timeout=TIMEOUT))
                assert Counter(job_of_master) == Counter(b"w:%d" % i for i in range(1000))
            finally:
                for sock, _ in sprays:
                    sock.close()
    assert master.stats["bad"] > 0
    assert master.stats["refused"] >= len(targets) + 1


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


def test_a_server_hosts_environment_leaves_its_clients_plain(keys, monkeypatch):
    """The environment is the process's: on a server's host with only the
    server's PYLM_SECRET_KEY and PYLM_AUTHORIZED_KEYS, a Client or Worker
    of a plain server elsewhere is plain (it used to raise ValueError);
    the keyword without a server key still raises."""
    monkeypatch.delenv(ENV_SERVER_KEY, raising=False)
    monkeypatch.setenv(ENV_SECRET_KEY, keys.server_secret)
    monkeypatch.setenv(ENV_AUTHORIZED_KEYS, keys.authorized)
    assert not Security.for_client().enabled
    db, pull, pub = tcp_addresses(3)
    monkeypatch.delenv(ENV_SECRET_KEY)
    monkeypatch.delenv(ENV_AUTHORIZED_KEYS)
    plain = Tagger("plain", db, pull, pub)
    monkeypatch.setenv(ENV_SECRET_KEY, keys.server_secret)
    monkeypatch.setenv(ENV_AUTHORIZED_KEYS, keys.authorized)
    with running(plain):
        with Client("plain", db, timeout=TIMEOUT) as client:
            assert client.eval("plain.tag", b"p", timeout=TIMEOUT) == b"p!"
        TagWorker("w", db)      # constructible
    with pytest.raises(ValueError, match="without a server_key"):
        Client("plain", db, secret_key=keys.client_secret, this_config=True)


# -- examples with keys from the environment --------------------------------------

#: Where each example's db port is among the ports it takes.
EXAMPLE_DB = {"parallel": 4, "pipeline": 0}


def cache_probes(ctx, db, keys):
    """A plain REQ and an authorized CURVE REQ connected to `db` (before
    the server binds: they connect when it does), each with a request
    queued; the server's cache answers any request."""
    probes = {}
    for label, options in (("plain", {}),
                           ("curve", curve_options(keys.server_public, keys.client_secret))):
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 5)   # the example may serve briefly
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name), value)
        sock.connect(db)
        sock.send(b"probe")
        probes[label] = sock
    return probes


@pytest.mark.parametrize("example", ["parallel", "pipeline"])
def test_examples_run_with_curve_from_the_environment(keys, monkeypatch, example, zctx):
    """The example's processes take the keys from the environment: its
    output is right, and while it ran a plain peer at its cache got nothing
    though an authorized one was answered (were the environment ignored,
    the plain probe would be answered and the CURVE one not)."""
    from test_examples import EXPECTED, finish, start

    monkeypatch.setenv(ENV_SECRET_KEY, keys.server_secret)
    monkeypatch.setenv(ENV_SERVER_KEY, keys.server_public)
    monkeypatch.setenv(ENV_AUTHORIZED_KEYS, keys.authorized)
    ports = tcp_ports(5)
    probes = cache_probes(zctx, "tcp://127.0.0.1:%d" % ports[EXAMPLE_DB[example]], keys)
    answered = dict.fromkeys(probes, False)
    poller = zmq.Poller()
    for sock in probes.values():
        poller.register(sock, zmq.POLLIN)
    try:
        proc = start(example, *ports)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            ready = dict(poller.poll(50))
            for label, sock in probes.items():
                if sock in ready:
                    sock.recv_multipart()
                    answered[label] = True
                    poller.unregister(sock)
        code, out, err = finish(proc)
        answered.update({label: True for label, sock in probes.items() if sock.poll(0)})
    finally:
        for sock in probes.values():
            sock.close(linger=0)
    assert code == 0 and "Traceback" not in err, err
    out = out.splitlines()
    last = {name: last for name, _, last in EXPECTED}[example]
    assert out and out[-1] == last, out
    assert answered == {"plain": False, "curve": True}, answered
