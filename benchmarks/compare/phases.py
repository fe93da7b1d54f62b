"""The workloads of a run (its "phases"): which points each measures and
which systems take part in each.  A phase brings its systems up, measures
its points with a Bench (measure.py) and stops everything it started, also
when it fails.  pylm 0.14.4 that fails to come up is recorded as skipped,
with the reason, and the other systems are measured all the same.

    job       Master + workers (and the alternatives) at WORKER_COUNTS with
              SMALL payloads, then PAYLOAD_WORKERS workers at PAYLOAD_SIZES
    eval      one call at a time to one server process
    stream    three stages, SMALL payloads
    envelope  the envelope codec, in this process
"""

import itertools
import time

import zmq

import _peers
from pylm.clients import Client

from . import pylm014
from .measure import Runner, clamp, latency_runner, log
from .pylm014 import LegacyJob
from .systems import (
    KIB, MIB, REPLY_TIMEOUT, START_TIMEOUT, OursJob, PoolJob, PpeJob, PyzmqJob, memcpy_run,
    payload_of, payloads_of, stop_peers)

#: The job phase's points: each worker count with SMALL payloads, then each
#: payload size with PAYLOAD_WORKERS workers (eval, stream and envelope
#: send SMALL payloads).
WORKER_COUNTS = (1, 2, 4)
SMALL = 100
PAYLOAD_SIZES = (100, 4 * KIB, 64 * KIB, MIB)
PAYLOAD_WORKERS = 2
#: The systems of each phase, in the order of their rows in the tables.
JOB_SYSTEMS = ("pylm", "pyzmq", "pool1", "pool100", "ppe", "pylm014")
EVAL_SYSTEMS = ("pylm", "pyzmq", "pool1", "ppe", "pylm014")
STREAM_SYSTEMS = ("pylm", "pyzmq", "pylm014")
ENVELOPE_SYSTEMS = ("pylm", "protobuf", "pylm014")


def plan_total(reps, phases):
    """Runs (warm-up + repetitions, per point and system) of the phases."""
    runs = {
        "job": (len(WORKER_COUNTS) + len(PAYLOAD_SIZES) - 1) * len(JOB_SYSTEMS)
        + len(PAYLOAD_SIZES),                        # memcpy, at the payload points
        "eval": len(EVAL_SYSTEMS),
        "stream": len(STREAM_SYSTEMS),
        "envelope": len(ENVELOPE_SYSTEMS),
    }
    return sum(runs[p] for p in phases) * (reps + 1)


def _try_legacy(what, step):
    """(step(), None), or (None, the reason) when pylm 0.14.4's `what`
    failed."""
    try:
        return step(), None
    except Exception as exc:
        reason = "pylm 0.14 %s failed: %s: %s" % (what, type(exc).__name__, exc)
        log(reason)
        return None, reason


def _add_legacy(runners, legacy, what, make):
    """Add pylm 0.14.4's runner, make(), to `runners` when its venv is
    there and make() succeeds; else the reason it has none."""
    if not legacy.available:
        return legacy.reason
    runner, reason = _try_legacy(what, make)
    if runner is not None:
        runners["pylm014"] = runner
    return reason


def _measure(bench, workload, kind, runners, legacy_reason, **point):
    """Measure the point; pylm 0.14.4, when it has no runner, is recorded
    as skipped for `legacy_reason`."""
    bench.point(workload, kind, runners, **point)
    if "pylm014" not in runners:
        bench.skip(workload, ["pylm014"], legacy_reason, **point)


def job_phase(bench, legacy):
    """Job throughput against the worker count, then against the payload
    size; the workers of every system are brought up once per count."""
    q = bench.quick
    small = payloads_of(SMALL)
    ours = zmq_base = old = None
    old_reason = legacy.reason
    try:
        bench.say("starting pylm Master")
        ours = OursJob()
        zmq_base = PyzmqJob()
        if legacy.available:
            old, old_reason = _try_legacy("Master", lambda: LegacyJob(legacy))
        for workers in WORKER_COUNTS:
            bench.say("starting %d workers of each kind" % workers)
            ours.grow(workers)
            zmq_base.grow(workers)
            if old is not None:
                _, reason = _try_legacy("workers", lambda: old.grow(workers))
                if reason is not None:
                    old, old_reason = None, reason
            pool = ppe = None
            try:
                pool = PoolJob(workers)
                ppe = PpeJob(workers)
                sizes = [SMALL] + (list(PAYLOAD_SIZES[1:]) if workers == PAYLOAD_WORKERS else [])
                for size in sizes:
                    payloads = small if size == SMALL else payloads_of(size)
                    big = size >= 64 * KIB
                    n0 = clamp(2 * MIB // size, 20, 500)
                    nmax = clamp(4 * 1024 * MIB // size, 200, 300_000)

                    def bind(run, payloads=payloads):
                        return lambda n: run(n, payloads)

                    runners = {
                        "pylm": Runner(bind(ours.run), n0, 50, nmax),
                        "pyzmq": Runner(bind(zmq_base.run), n0, 50, nmax),
                        "pool1": Runner(bind(pool.runner(1)), n0, 50, nmax),
                        "pool100": Runner(bind(pool.runner(100)), n0, 50, nmax),
                        "ppe": Runner(bind(ppe.run), n0, 50, nmax),
                    }
                    if old is not None:
                        runners["pylm014"] = Runner(bind(old.run), min(n0, 100) if not big else 20,
                                                    20, pylm014.MAX_MESSAGES[q])
                    if workers == PAYLOAD_WORKERS:
                        runners["memcpy"] = Runner(bind(memcpy_run), n0, 50, 10_000_000)
                    _measure(bench, "job", "throughput", runners, old_reason,
                             workers=workers, payload=size)
            finally:
                for thing in (pool, ppe):
                    if thing is not None:
                        thing.close()
    finally:
        for thing in (ours, zmq_base):
            if thing is not None:
                thing.close()
        legacy.stop_nodes()


def eval_phase(bench, legacy):
    """Round trip of one call at a time, p50 and p99: Client.eval to a
    Server, REQ/REP, Pool.apply, submit().result(), pylm 0.14.4's eval."""
    payload = payload_of(SMALL)
    peers, client, ctx, req, pool, ppe = [], None, None, None, None, None
    try:
        bench.say("starting eval servers")
        db, pull, pub = _peers.tcp_addresses(3)
        peers.append(_peers.Peer(_peers.run_server, "server", db, pull, pub, False,
                                 name="server").launch())
        peers.append(_peers.Peer(_peers.run_rep, name="rep").launch())
        pool = PoolJob(1)
        ppe = PpeJob(1)
        peers[0].wait_ready(START_TIMEOUT)
        rep_ep = peers[1].wait_ready(START_TIMEOUT)
        client = Client("server", db, timeout=START_TIMEOUT)
        ctx = zmq.Context()
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.RCVTIMEO, int(REPLY_TIMEOUT * 1000))
        req.connect(rep_ep)

        def req_rep():
            req.send(payload)
            return req.recv()

        runners = {
            "pylm": Runner(latency_runner(lambda: client.eval("server.foo", payload,
                                                              timeout=REPLY_TIMEOUT)),
                           200, 200, 50_000),
            "pyzmq": Runner(latency_runner(req_rep), 200, 200, 50_000),
            "pool1": Runner(latency_runner(lambda: pool.apply(payload)), 200, 200, 50_000),
            "ppe": Runner(latency_runner(lambda: ppe.call(payload)), 200, 200, 50_000),
        }
        def legacy_runner():
            ldb, lpull, lpub = _peers.tcp_addresses(3)
            node = legacy.node("eval-server", "server", "server", ldb, lpull, lpub)
            legacy.wait_cache(ldb, "server", node)
            calls = pylm014.EVAL_CALLS[bench.quick]

            def legacy_eval(n):
                return legacy.call(dict(op="eval", server="server", db=ldb,
                                        function="server.foo", calls=n, size=SMALL,
                                        timeout_ms=pylm014.EVAL_TIMEOUT_MS))

            return Runner(legacy_eval, calls, calls, calls)

        reason = _add_legacy(runners, legacy, "Server", legacy_runner)
        _measure(bench, "eval", "latency", runners, reason, workers=1, payload=SMALL)
    finally:
        if client is not None:
            client.close()
        if req is not None:
            req.close(linger=0)
            ctx.term()
        for thing in (pool, ppe):
            if thing is not None:
                thing.close()
        stop_peers(peers)
        legacy.stop_nodes()


STREAM_FUNCTION = ["server.f", "p1.g", "p2.h"]


def _probe(call, what, timeout=START_TIMEOUT):
    """call() until it does not raise TimeoutError: a stage drops what it
    publishes before the next stage's subscription arrives."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except TimeoutError:
            if time.monotonic() > deadline:
                raise TimeoutError("%s: no answer within %s s" % (what, timeout)) from None


def stream_phase(bench, legacy):
    """Three stages, 100 B payloads: Server -> Pipeline -> Pipeline (ours
    and pylm 0.14.4's) and the hand-written PUSH -> PUB/SUB chain."""
    payload = payload_of(SMALL)
    peers, client, ctx, push, sub = [], None, None, None, None
    try:
        bench.say("starting stream chains")
        db0, pull0, pub0, db1, pub1, db2, pub2 = _peers.tcp_addresses(7)
        ours = [_peers.Peer(_peers.run_server, "server", db0, pull0, pub0, True, name="server"),
                _peers.Peer(_peers.run_pipeline, "p1", db1, pub0, pub1, "server", False,
                            name="p1"),
                _peers.Peer(_peers.run_pipeline, "p2", db2, pub1, pub2, "p1", True, name="p2")]
        for peer in ours:
            peers.append(peer.launch())
        head = _peers.Peer(_peers.run_stream_head, "server", name="chain-head").launch()
        peers.append(head)
        for peer in ours:
            peer.wait_ready(START_TIMEOUT)
        pull_ep, zpub0 = head.wait_ready(START_TIMEOUT)
        s1 = _peers.Peer(_peers.run_stream_stage, zpub0, "server", "p1", name="chain-p1")
        peers.append(s1.launch())
        zpub1 = s1.wait_ready(START_TIMEOUT)
        s2 = _peers.Peer(_peers.run_stream_stage, zpub1, "p1", None, name="chain-p2")
        peers.append(s2.launch())
        zpub2 = s2.wait_ready(START_TIMEOUT)

        client = Client("server", db0, sub_address=pub2, timeout=START_TIMEOUT)
        _probe(lambda: client.eval(STREAM_FUNCTION, payload, timeout=1.0), "pylm stream")

        ctx = zmq.Context()
        push, sub = ctx.socket(zmq.PUSH), ctx.socket(zmq.SUB)
        me = b"compare-client"
        sub.setsockopt(zmq.RCVHWM, _peers.PUB_HWM)
        sub.setsockopt(zmq.SUBSCRIBE, me)
        sub.connect(zpub2)
        push.connect(pull_ep)
        _peers.probe_chain(push, sub, me, START_TIMEOUT)
        sub.setsockopt(zmq.RCVTIMEO, int(REPLY_TIMEOUT * 1000))

        def ours_run(n):
            got = 0
            t0 = time.perf_counter()
            try:
                for _ in client.job(STREAM_FUNCTION, itertools.repeat(payload, n), messages=n,
                                    timeout=REPLY_TIMEOUT):
                    got += 1
            except TimeoutError:
                pass
            return {"seconds": time.perf_counter() - t0, "sent": n, "received": got}

        def chain_run(n):
            t0 = time.perf_counter()
            got = _peers.chain_round(push, sub, me, payload, n)
            t1 = time.perf_counter()
            while got < n and sub.poll(500):     # the late ones belong to this round
                sub.recv_multipart()
            return {"seconds": t1 - t0, "sent": n, "received": got}

        runners = {"pylm": Runner(ours_run, 500, 500, 300_000),
                   "pyzmq": Runner(chain_run, 500, 500, 300_000)}
        def legacy_runner():
            ldb0, lpull0, lpub0, ldb1, lpub1, ldb2, lpub2 = _peers.tcp_addresses(7)
            n0 = legacy.node("stream-server", "server", "server", ldb0, lpull0, lpub0,
                             "--pipelined")
            n1 = legacy.node("stream-p1", "pipeline", "p1", ldb1, lpub0, lpub1, "server",
                             "--pipelined")
            n2 = legacy.node("stream-p2", "pipeline", "p2", ldb2, lpub1, lpub2, "p1")
            legacy.wait_cache(ldb0, "server", n0)
            legacy.wait_cache(ldb1, "p1", n1)
            legacy.wait_cache(ldb2, "p2", n2)
            cmd = dict(op="job", server="server", db=ldb0, sub=lpub2,
                       function=" ".join(STREAM_FUNCTION), size=SMALL,
                       timeout_ms=pylm014.JOB_TIMEOUT_MS)

            def legacy_probe():
                if not legacy.call(dict(cmd, n=20))["received"]:
                    raise TimeoutError
            _probe(legacy_probe, "pylm 0.14 stream")

            def legacy_run(n):
                r = legacy.call(dict(cmd, n=n))
                return {k: r[k] for k in ("seconds", "sent", "received")}

            return Runner(legacy_run, 100, 20, pylm014.MAX_MESSAGES[bench.quick])

        reason = _add_legacy(runners, legacy, "stream", legacy_runner)
        _measure(bench, "stream", "throughput", runners, reason, stages=3, payload=SMALL)
    finally:
        if client is not None:
            client.close()
        for sock in (push, sub):
            if sock is not None:
                sock.close(linger=0)
        if ctx is not None:
            ctx.term()
        stop_peers(peers)
        legacy.stop_nodes()


ENVELOPE_FIELDS = dict(pipeline="3f2504e0-4f89-41d3-9a0c-0305e82c3301",
                       client="9e1b6d3a-5c2f-4e7b-8a0d-1c3e5f7a9b2d",
                       function="server.method", stage=0, payload=bytes(range(100)))


def envelope_phase(bench, legacy):
    """Decode + stage += 1 + encode of one envelope, each codec checked to
    encode what pylm_core does."""
    import pylm_core
    bench.say("envelope codec")

    data = pylm_core.PalmMessage(**ENVELOPE_FIELDS).SerializeToString()
    expected = pylm_core.PalmMessage(**dict(ENVELOPE_FIELDS, stage=1)).SerializeToString()

    def codec(cls):

        def run(n):
            t0 = time.perf_counter()
            for _ in range(n):
                m = cls()
                m.ParseFromString(data)
                m.stage += 1
                out = m.SerializeToString()
            dt = time.perf_counter() - t0
            if out != expected:
                raise AssertionError("%s encoded %r" % (cls.__module__, out))
            return {"seconds": dt, "ops": n}
        return run

    runners = {"pylm": Runner(codec(pylm_core.PalmMessage), 20_000, 20_000, 5_000_000)}
    try:
        import palm_reference
        runners["protobuf"] = Runner(codec(palm_reference.PalmMessage), 20_000, 20_000, 5_000_000)
    except ImportError as exc:
        bench.skip("envelope", ["protobuf"], "protobuf not importable: %s" % exc, payload=SMALL)

    def legacy_codec(n):
        r = legacy.call(dict(op="envelope", n=n, pipeline=ENVELOPE_FIELDS["pipeline"],
                             client=ENVELOPE_FIELDS["client"]))
        if bytes.fromhex(r["out"]) != expected:
            raise AssertionError("pylm 0.14 encoded a different envelope")
        return {"seconds": r["seconds"], "ops": r["ops"]}

    reason = _add_legacy(runners, legacy, "envelope",
                         lambda: Runner(legacy_codec, 2000, 2000, 1_000_000))
    _measure(bench, "envelope", "codec", runners, reason, payload=SMALL)


#: The phases by the name --phases gives them, in the order they run.
PHASES = {"job": job_phase, "eval": eval_phase, "stream": stream_phase,
          "envelope": envelope_phase}
