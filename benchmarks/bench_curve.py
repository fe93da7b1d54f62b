"""CURVE's cost: job throughput and eval latency with CURVE on (and keys
checked by ZAP), next to the same servers plain, in the same run.

group "job curve": 100-byte payloads, MESSAGES per round, msgs/s
    ours      Client.job -> Master -> 2 Workers -> Master -> Client, every
              socket CURVE, the Master with authorized_keys
    baseline  the same, plain
group "eval curve": one call per round, the median is the p50 latency
    ours      Client.eval -> Server -> Client, CURVE with authorized_keys
    baseline  the same, plain

The ratio printed is ours / baseline of the medians: CURVE's time over
plain's (msgs/s: the other way round).  Run:
    .venv/bin/python -m pytest benchmarks/bench_curve.py --benchmark-disable-gc
Sizes as bench_job.py (PYLM_BENCH_MESSAGES, PYLM_BENCH_EVAL_ROUNDS);
rounds of the job: PYLM_BENCH_CURVE_ROUNDS (5).  Times are never asserted.
"""

import itertools
import os
import shutil

import pytest

from pylm.clients import Client
from pylm.security import generate_keys

try:  # benchmarks/ on sys.path (pytest's rootdir insertion; no __init__.py)
    from _peers import (PAYLOAD, Peer, record, run_master, run_server, run_worker,
                        tcp_addresses, wait_workers)
except ImportError:  # benchmarks/ imported as a package
    from benchmarks._peers import (PAYLOAD, Peer, record, run_master, run_server, run_worker,
                                   tcp_addresses, wait_workers)

MESSAGES = int(os.environ.get("PYLM_BENCH_MESSAGES", 100_000))
ROUNDS = int(os.environ.get("PYLM_BENCH_CURVE_ROUNDS", 5))
EVAL_ROUNDS = int(os.environ.get("PYLM_BENCH_EVAL_ROUNDS", 20000))
WORKERS = 2
START_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Keyword sets: the servers' (secret and authorized keys), the
    workers' and the client's (server key and an authorized secret)."""
    root = tmp_path_factory.mktemp("curve-keys")
    server_public, server_secret = generate_keys(str(root / "server"), "server")
    client_public, client_secret = generate_keys(str(root / "client"), "client")
    authorized = root / "authorized"
    authorized.mkdir()
    shutil.copy(client_public, authorized)
    client = dict(server_key=server_public, secret_key=client_secret)
    return {"server": dict(secret_key=server_secret, authorized_keys=str(authorized)),
            "client": client, "worker": client}


def _cluster(server_keys, worker_keys, client_keys):
    db, pull, pub, wpull, wpush = tcp_addresses(5)
    peers = [Peer(run_master, "master", pull, pub, wpull, wpush, db, server_keys,
                  name="master")]
    client = None
    try:
        peers[0].start(START_TIMEOUT)
        names = ["worker-%d" % i for i in range(WORKERS)]
        for name in names:
            peers.append(Peer(run_worker, name, db, worker_keys, name=name))
            peers[-1].start(START_TIMEOUT)
        client = Client("master", db, timeout=START_TIMEOUT, **client_keys)
        wait_workers(client, names, START_TIMEOUT)
        yield client
    finally:
        if client is not None:
            client.close()
        for peer in reversed(peers):
            peer.stop()


@pytest.fixture(scope="module")
def plain_cluster():
    yield from _cluster(None, None, {})


@pytest.fixture(scope="module")
def curve_cluster(keys):
    yield from _cluster(keys["server"], keys["worker"], keys["client"])


def _job_round(client, n):
    got = 0
    for _ in client.job("master.foo", itertools.repeat(PAYLOAD, n), messages=n,
                        timeout=START_TIMEOUT):
        got += 1
    assert got == n


@pytest.mark.benchmark(group="job curve")
def test_job_curve(bench, benchmark, request, curve_cluster):
    bench(_job_round, curve_cluster, MESSAGES, role="ours",
          rounds=ROUNDS, warmup_rounds=1, iterations=1)
    record(request, benchmark, "job curve", "ours", MESSAGES)


@pytest.mark.benchmark(group="job curve")
def test_job_plain(bench, benchmark, request, plain_cluster):
    bench(_job_round, plain_cluster, MESSAGES, role="baseline",
          rounds=ROUNDS, warmup_rounds=1, iterations=1)
    record(request, benchmark, "job curve", "baseline", MESSAGES)


def _server(server_keys, client_keys):
    db, pull, pub = tcp_addresses(3)
    peer = Peer(run_server, "server", db, pull, pub, False, server_keys, name="server")
    client = None
    try:
        peer.start(START_TIMEOUT)
        client = Client("server", db, timeout=START_TIMEOUT, **client_keys)
        assert client.eval("server.foo", PAYLOAD, timeout=START_TIMEOUT) == PAYLOAD
        yield client
    finally:
        if client is not None:
            client.close()
        peer.stop()


@pytest.fixture(scope="module")
def plain_server():
    yield from _server(None, {})


@pytest.fixture(scope="module")
def curve_server(keys):
    yield from _server(keys["server"], keys["client"])


@pytest.mark.benchmark(group="eval curve")
def test_eval_curve(bench, benchmark, request, curve_server):
    result = bench(curve_server.eval, "server.foo", PAYLOAD, role="ours",
                   rounds=EVAL_ROUNDS, warmup_rounds=200, iterations=1)
    assert result == PAYLOAD
    record(request, benchmark, "eval curve", "ours", 0)


@pytest.mark.benchmark(group="eval curve")
def test_eval_plain(bench, benchmark, request, plain_server):
    result = bench(plain_server.eval, "server.foo", PAYLOAD, role="baseline",
                   rounds=EVAL_ROUNDS, warmup_rounds=200, iterations=1)
    assert result == PAYLOAD
    record(request, benchmark, "eval curve", "baseline", 0)
