"""Large payloads through a Master (issue 15 item 2): every reply exactly
once when a worker holding 1 MiB calls is SIGKILLed, and the local links
(pylm/_local.py): clients and workers on the host of a Master (or a
Server) reach it by its ipc twins, everything else by tcp.

Real processes and sockets; loops bounded in count and time.
"""

import logging
import os
import signal
import struct
import threading
from collections import Counter

import pytest
import zmq

from pylm import _local
from pylm._testing import Gate, in_child, running, tcp_addresses
from pylm.clients import Client
from pylm.servers import Master, Server, Worker

MIB = 1 << 20
TIMEOUT = 10
WORKER_TIMEOUT = 1.0     # the Master gives a killed worker up soon
HEARTBEAT = 0.2

pytestmark = pytest.mark.skipif(not _local.host_id(), reason="abstract ipc sockets are Linux's")


def payload_of(i, size=MIB):
    """Call i's payload: its index repeated (distinct, checkable whole)."""
    return struct.pack("<Q", i) * (size // 8)


def index_of(reply):
    return struct.unpack_from("<Q", reply)[0]


def master_addresses():
    pull, pub, wpull, wpush, db = tcp_addresses(5)
    return dict(pull_address=pull, pub_address=pub, worker_pull_address=wpull,
                worker_push_address=wpush, db_address=db)


class BigWorker(Worker):
    """Returns the payload; the call of index `hold_at` waits at `gate`
    (announcing the worker's name) until the test opens it."""

    def __init__(self, *args, gate=None, hold_at=-1, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = gate
        self.hold_at = hold_at

    def echo_big(self, payload):
        if self.gate is not None and index_of(payload) == self.hold_at \
                and not self.gate.wait(who=self.name):
            raise TimeoutError("the test never opened the gate")
        return payload

    def where(self, payload):
        return (self.router_address or "").encode()


@pytest.mark.parametrize("window", [None, 4], ids=["default-window", "window-4"])
def test_a_worker_killed_holding_1mib_calls_every_reply_exactly_once(window):
    """Two worker processes; the one that runs call 40 of a job of 160
    calls of 1 MiB waits at a gate, so it surely holds calls (that one and
    whatever else its credit let the Master send ahead), and is SIGKILLed
    there.  The Master gives it up and sends what it held to the other
    worker: every reply arrives once, whole.  Also with a window of 4
    calls (a job bounded in bytes keeps few 1 MiB calls in flight)."""
    n, hold_at = 160, 40
    master = Master("big", worker_timeout=WORKER_TIMEOUT, **master_addresses())
    workers = {}
    counts = Counter()
    with running(master), Gate() as gate:
        try:
            for name in ("w0", "w1"):
                workers[name] = in_child(BigWorker, name, master.db_address,
                                         log_level=logging.ERROR, heartbeat=HEARTBEAT,
                                         gate=gate, hold_at=hold_at)
            with Client("big", master.db_address, timeout=TIMEOUT) as client:
                assert client.push_address.startswith("ipc://@pylm/")
                assert client.eval("big.echo_big", payload_of(0, 64),
                                   timeout=30) == payload_of(0, 64)
                killed = []

                def kill_the_held_one():
                    # in a thread: whatever the job's window, the job goes on
                    # through the other worker meanwhile
                    try:
                        gate.wait_arrived(1, timeout=30)
                        proc = workers[gate.who[0]]
                        os.kill(proc.pid, signal.SIGKILL)
                        proc.process.join(5)
                        killed.append(proc)
                    finally:
                        gate.open()

                killer = threading.Thread(target=kill_the_held_one, daemon=True)
                killer.start()
                try:
                    for reply in client.job("big.echo_big",
                                            (payload_of(i) for i in range(n)), timeout=30,
                                            **({"window": window} if window else {})):
                        i = index_of(reply)
                        assert reply == payload_of(i), "reply %d is not its payload" % i
                        counts[i] += 1
                finally:
                    gate.open()
                    killer.join(TIMEOUT)
                assert killed, "no worker was killed at the gate"
        finally:
            for proc in workers.values():
                if proc.is_alive():
                    proc.stop()
                else:
                    proc.process.join(1)
    stats = master.stats
    print("sigkill at 1 MiB: replies=%d, workers_lost=%s, requeued=%s"
          % (sum(counts.values()), stats.get("workers_lost"), stats.get("requeued")))
    duplicated = sorted(i for i, c in counts.items() if c > 1)
    missing = sorted(set(range(n)) - set(counts))
    assert not duplicated and not missing, (duplicated[:10], missing[:10])
    assert stats["workers_lost"] >= 1 and stats["requeued"] >= 1


def test_local_clients_and_workers_take_the_ipc_twins():
    """A Client and a Worker that fetch their addresses from the Master's
    cache on its host connect to its twins; the Master still serves tcp."""
    master = Master("twins", **master_addresses())
    worker = BigWorker("tw", master.db_address, heartbeat=HEARTBEAT)
    with running(master), running(worker):
        with Client("twins", master.db_address, timeout=TIMEOUT) as client:
            assert client.push_address == _local.twin_of(master.pull_address)
            assert client.sub_address == _local.twin_of(master.pub_address)
            assert client.eval("twins.where", b"", timeout=TIMEOUT).decode().startswith(
                "ipc://@pylm/tcp/")
            assert client.eval("twins.echo_big", payload_of(7), timeout=TIMEOUT) == \
                payload_of(7)
        # addresses given: kept, and the tcp endpoints serve as before
        with Client("twins", master.db_address, push_address=master.pull_address,
                    sub_address=master.pub_address, timeout=TIMEOUT) as client:
            assert client.push_address == master.pull_address
            assert client.eval("twins.echo_big", b"tcp", timeout=TIMEOUT) == b"tcp"


def test_a_master_without_twins_is_reached_by_tcp():
    master = Master("notwins", local_ipc=False, **master_addresses())
    worker = BigWorker("nw", master.db_address, heartbeat=HEARTBEAT)
    with running(master), running(worker):
        with Client("notwins", master.db_address, timeout=TIMEOUT) as client:
            assert client.push_address == master.pull_address
            assert client.eval("notwins.where", b"", timeout=TIMEOUT).startswith(b"tcp://")


def test_a_master_whose_twin_names_are_taken_says_so_and_serves_tcp(caplog):
    """Another process holds the twin names of a Master's pull and worker
    ROUTER endpoints (as anyone on the host may: abstract sockets have no
    permissions): the Master binds no twin there, says so in a WARNING
    (whoever holds the name gets what a peer sends there), and its local
    clients and workers take tcp."""
    addresses = master_addresses()
    router = tcp_addresses(1)[0]
    ctx = zmq.Context.instance()
    squatters = [ctx.socket(zmq.PULL) for _ in range(2)]
    try:
        for sock, address in zip(squatters, (addresses["pull_address"], router)):
            sock.bind(_local.twin_of(address))
        master = Master("taken", worker_router_address=router, **addresses)
        worker = BigWorker("tk", master.db_address, heartbeat=HEARTBEAT)
        with caplog.at_level(logging.WARNING, logger="pylm"), \
                running(master), running(worker):
            with Client("taken", master.db_address, timeout=TIMEOUT) as client:
                assert client.push_address == addresses["pull_address"]
                assert client.sub_address == addresses["pub_address"]
                assert client.eval("taken.where", b"", timeout=TIMEOUT) == router.encode()
                assert client.eval("taken.echo_big", payload_of(3), timeout=TIMEOUT) == \
                    payload_of(3)
        warned = "\n".join(r.getMessage() for r in caplog.records
                           if r.levelno == logging.WARNING)
        for address in (addresses["pull_address"], router):
            assert _local.twin_of(address) in warned
    finally:
        for sock in squatters:
            sock.close(linger=0)


def test_no_remote_request_sets_the_local_keys():
    """On any server (here a Server without twins) the local keys are
    configuration keys: a stranger cannot point the server's local clients
    at a socket of its own."""
    from pylm._cache import CONFIG_KEYS
    assert set(_local.LOCAL_KEYS) <= CONFIG_KEYS
    pull, pub, db = tcp_addresses(3)
    server = Server("plain", db, pull, pub, local_ipc=False)
    with running(server):
        with Client("plain", db, timeout=TIMEOUT) as client:
            for key in _local.LOCAL_KEYS:
                with pytest.raises(PermissionError):
                    client.set(b"ipc://@elsewhere", key)
            assert client.push_address == pull
        with Client("plain", db, timeout=TIMEOUT) as client:
            assert client.push_address == pull


class WhereServer(Server):
    def where(self, payload):
        return self.pull_address.encode() + b" " + payload


def test_local_clients_of_a_server_take_its_ipc_twins():
    """A Server binds twins of its pull and pub endpoints as a Master does
    (Client.eval's round trip over ipc); local_ipc=False keeps tcp; a
    client given the tcp addresses still reaches the tcp endpoints."""
    pull, pub, db = tcp_addresses(3)
    with running(WhereServer("twinned", db, pull, pub)):
        with Client("twinned", db, timeout=TIMEOUT) as client:
            assert (client.push_address, client.sub_address) == \
                (_local.twin_of(pull), _local.twin_of(pub))
            assert client.eval("twinned.where", b"x", timeout=TIMEOUT) == \
                pull.encode() + b" x"
        with Client("twinned", db, push_address=pull, sub_address=pub,
                    timeout=TIMEOUT) as client:
            assert client.eval("twinned.where", b"tcp", timeout=TIMEOUT).endswith(b"tcp")
    pull, pub, db = tcp_addresses(3)
    with running(WhereServer("untwinned", db, pull, pub, local_ipc=False)):
        with Client("untwinned", db, timeout=TIMEOUT) as client:
            assert (client.push_address, client.sub_address) == (pull, pub)
            assert client.eval("untwinned.where", b"y", timeout=TIMEOUT).endswith(b"y")


def test_another_host_id_keeps_tcp():
    """What the Master publishes is only taken when the host id is ours
    (another host, or another network namespace, has another)."""
    cache = {b"local_host": b"another-boot/1:2", b"local_pull_address": b"ipc://@x"}
    assert _local.local_addresses(lambda key: cache.get(key, b""),
                                  _local.LOCAL_PULL_KEY) is None
    cache[b"local_host"] = _local.host_id().encode()
    assert _local.local_addresses(lambda key: cache.get(key, b""),
                                  _local.LOCAL_PULL_KEY) == ["ipc://@x"]
    # a key not published (pylm 0.14, a Server): tcp
    assert _local.local_addresses(lambda key: cache.get(key, b""),
                                  _local.LOCAL_PULL_KEY, _local.LOCAL_PUB_KEY) is None


def test_a_twin_name_taken_leaves_tcp_alone():
    """bind_twin gives "" when the twin's name is in use (its peers keep
    tcp) and for endpoints that are not tcp."""
    logger = logging.getLogger("pylm.test")
    ctx = zmq.Context.instance()
    a, b, c, d = (ctx.socket(zmq.PULL) for _ in range(4))
    try:
        a.bind("tcp://127.0.0.1:*")
        endpoint = a.getsockopt_string(zmq.LAST_ENDPOINT)
        assert _local.bind_twin(a, logger) == _local.twin_of(endpoint) == \
            "ipc://@pylm/tcp/" + endpoint[len("tcp://"):]
        b.bind("tcp://127.0.0.1:*")
        c.bind(_local.twin_of(b.getsockopt_string(zmq.LAST_ENDPOINT)))
        assert _local.bind_twin(b, logger) == ""
        d.bind("inproc://twins-test")
        assert _local.bind_twin(d, logger) == ""
    finally:
        for sock in (a, b, c, d):
            sock.close(linger=0)
