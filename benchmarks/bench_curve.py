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
    from _peers import (PAYLOAD, START_TIMEOUT, Peer, job_round, master_cluster, run_server,
                        tcp_addresses)
except ImportError:  # benchmarks/ imported as a package
    from benchmarks._peers import (PAYLOAD, START_TIMEOUT, Peer, job_round, master_cluster,
                                   run_server, tcp_addresses)

MESSAGES = int(os.environ.get("PYLM_BENCH_MESSAGES", 100_000))
ROUNDS = int(os.environ.get("PYLM_BENCH_CURVE_ROUNDS", 5))
EVAL_ROUNDS = int(os.environ.get("PYLM_BENCH_EVAL_ROUNDS", 20000))


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


@pytest.fixture(scope="module")
def curve_cluster(keys):
    with master_cluster(server_keys=keys["server"], worker_keys=keys["worker"],
                        client_keys=keys["client"]) as client:
        yield client


def _job_round(client, n):
    job_round(client, itertools.repeat(PAYLOAD, n), n)


@pytest.mark.benchmark(group="job curve")
def test_job_curve(bench, curve_cluster):
    bench(_job_round, curve_cluster, MESSAGES, role="ours", messages=MESSAGES,
          rounds=ROUNDS, warmup_rounds=1, iterations=1)


@pytest.mark.benchmark(group="job curve")
def test_job_plain(bench, master_client):
    bench(_job_round, master_client, MESSAGES, role="baseline", messages=MESSAGES,
          rounds=ROUNDS, warmup_rounds=1, iterations=1)


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
def test_eval_curve(bench, curve_server):
    result = bench(curve_server.eval, "server.foo", PAYLOAD, role="ours",
                   rounds=EVAL_ROUNDS, warmup_rounds=200, iterations=1)
    assert result == PAYLOAD


@pytest.mark.benchmark(group="eval curve")
def test_eval_plain(bench, plain_server):
    result = bench(plain_server.eval, "server.foo", PAYLOAD, role="baseline",
                   rounds=EVAL_ROUNDS, warmup_rounds=200, iterations=1)
    assert result == PAYLOAD
