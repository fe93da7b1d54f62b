"""Stream (pipeline) throughput, next to a hand-written pyzmq chain of the
same shape in the same run.

group "stream": 100-byte payloads, MESSAGES per round, reported as msgs/s
(issue 15's target: ours >= 2.5x the baseline)
    ours      Client.job(['server.f', 'p1.g', 'p2.h']) -> Server(pipelined=True)
              -> Pipeline('p1', to_client=False) -> Pipeline('p2', to_client=True)
              -> Client (its sub_address is p2's pub_address); one process each
    baseline  PUSH -> [PULL -> PUB] -> [SUB -> PUB] -> [SUB -> PUB] -> SUB, one
              process per stage, the client keeping the same window of calls
              in flight as Client.job (pylm.clients.JOB_WINDOW); frames sent
              one by one, not with send_multipart (see _peers.py)
    The two take turns round by round in one test (test_stream_interleaved;
    conftest.py's interleave), so that the ratio compares rounds run under
    the same load.

If our chain cannot be brought up, the benchmark is skipped with the error.

Run:  .venv/bin/python -m pytest benchmarks/bench_stream.py --benchmark-disable-gc
Environment: PYLM_BENCH_MESSAGES, PYLM_BENCH_ROUNDS.
"""

import itertools
import os
import time
import uuid

import pytest
import zmq

from pylm.clients import Client

try:  # benchmarks/ on sys.path (pytest's rootdir insertion; no __init__.py)
    from _peers import (
        PAYLOAD, PUB_HWM, Peer, chain_round, job_round, probe_chain, run_pipeline, run_server,
        run_stream_head, run_stream_stage, stop_peers, tcp_addresses)
except ImportError:  # benchmarks/ imported as a package
    from benchmarks._peers import (
        PAYLOAD, PUB_HWM, Peer, chain_round, job_round, probe_chain, run_pipeline, run_server,
        run_stream_head, run_stream_stage, stop_peers, tcp_addresses)

MESSAGES = int(os.environ.get("PYLM_BENCH_MESSAGES", 100_000))
ROUNDS = int(os.environ.get("PYLM_BENCH_ROUNDS", 7))
START_TIMEOUT = 30.0
#: seconds for the client handshake, and for each reply of a round
PROBE_TIMEOUT = 10.0
#: seconds to wait for a first call to make it through our chain
CHAIN_TIMEOUT = 15.0
FUNCTION = ["server.f", "p1.g", "p2.h"]


# ---------------------------------------------------------------------------
# ours

@pytest.fixture(scope="module")
def stream_client():
    """Server -> p1 -> p2, each in its own process; a Client here whose
    sub_address is p2's pub_address.  Ready when a call went through the
    whole chain (each stage's subscription is live)."""
    db0, pull0, pub0, db1, pub1, db2, pub2 = tcp_addresses(7)
    peers = [
        Peer(run_server, "server", db0, pull0, pub0, True, name="server"),
        Peer(run_pipeline, "p1", db1, pub0, pub1, "server", False, name="p1"),
        Peer(run_pipeline, "p2", db2, pub1, pub2, "p1", True, name="p2"),
    ]
    client = None
    try:
        for peer in peers:
            peer.start(START_TIMEOUT)
        step = "Client('server', db_address, sub_address=<p2 pub_address>)"
        try:
            client = Client("server", db0, sub_address=pub2, timeout=PROBE_TIMEOUT)
            step = "Client.eval(%r, ...) through the chain" % (FUNCTION,)
            deadline = time.monotonic() + CHAIN_TIMEOUT
            while True:
                # a stage drops what it publishes before the next stage's
                # subscription arrives: probe until one call goes through
                try:
                    reply = client.eval(FUNCTION, PAYLOAD, timeout=1.0)
                    break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise
            if reply != PAYLOAD:
                raise AssertionError("the chain answered %r" % (reply,))
        except Exception as exc:
            pytest.skip("our Server -> Pipeline -> Pipeline chain failed at %s: %s: %s"
                        % (step, type(exc).__name__, exc))
        yield client
    finally:
        if client is not None:
            client.close()
        stop_peers(peers)


def _stream_round(client, n):
    job_round(client, itertools.repeat(PAYLOAD, n), n, function=FUNCTION)


# ---------------------------------------------------------------------------
# hand-written pyzmq chain

@pytest.fixture(scope="module")
def pyzmq_chain():
    """head (PULL -> PUB 'server') -> stage (SUB 'server' -> PUB 'p1') ->
    stage (SUB 'p1' -> PUB <client>), each in its own process; PUSH and
    SUB here.  Messages are [topic, client, payload] between stages and
    [client, payload] to the client."""
    peers = []
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    sub = ctx.socket(zmq.SUB)
    me = uuid.uuid4().hex.encode()
    try:
        head = Peer(run_stream_head, "server", name="chain-head")
        peers.append(head)
        pull_ep, pub0 = head.start(START_TIMEOUT)
        p1 = Peer(run_stream_stage, pub0, "server", "p1", name="chain-p1")
        peers.append(p1)
        pub1 = p1.start(START_TIMEOUT)
        p2 = Peer(run_stream_stage, pub1, "p1", None, name="chain-p2")
        peers.append(p2)
        pub2 = p2.start(START_TIMEOUT)
        sub.setsockopt(zmq.RCVHWM, PUB_HWM)
        sub.setsockopt(zmq.SUBSCRIBE, me)
        sub.connect(pub2)
        push.connect(pull_ep)
        probe_chain(push, sub, me, START_TIMEOUT)
        sub.setsockopt(zmq.RCVTIMEO, int(START_TIMEOUT * 1000))  # a lost message fails, not hangs
        yield push, sub, me
    finally:
        stop_peers(peers)
        push.close(linger=0)
        sub.close(linger=0)
        ctx.term()


def _chain_round(push, sub, me, n):
    """n calls through the chain (_peers.chain_round); a lost reply fails
    the round instead of hanging it."""
    got = chain_round(push, sub, me, PAYLOAD, n)
    assert got == n, "%d of %d replies" % (got, n)


# ---------------------------------------------------------------------------
# both, taking turns

class _ChainFailed(Exception):
    """Our chain failed during Client.job (the test is skipped with it)."""


@pytest.mark.benchmark(group="stream")
def test_stream_interleaved(interleave, stream_client, pyzmq_chain):
    """Rounds of ours and of the pyzmq chain taking turns (conftest.py's
    interleave): the ratio from rounds run under the same load."""
    push, sub, me = pyzmq_chain

    def ours():
        try:
            _stream_round(stream_client, MESSAGES)
        except Exception as exc:
            raise _ChainFailed("%s: %s" % (type(exc).__name__, exc)) from exc

    try:
        interleave([
            ("ours", "ours", ours),
            ("baseline", "pyzmq", lambda: _chain_round(push, sub, me, MESSAGES)),
        ], messages=MESSAGES, rounds=ROUNDS, warmup_rounds=1)
    except _ChainFailed as exc:
        pytest.skip("our Server -> Pipeline -> Pipeline chain failed during Client.job: %s"
                    % exc)
