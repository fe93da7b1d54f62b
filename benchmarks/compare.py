#!/usr/bin/env python3
"""Side-by-side benchmark: this pylm against the usual alternatives, all
measured in one run, on this machine, written to one JSON file and charted.

    python benchmarks/compare.py            # full run (about 5-10 min on 2 cores)
    python benchmarks/compare.py --quick    # fewer, shorter repetitions (2-3 min)
    python benchmarks/compare.py --plot benchmarks/results/latest.json
    make bench [QUICK=1]                    # pytest benchmarks, then this

Systems (each one where it fits the workload):

    pylm      this project: Master + N Worker processes, Client.job; Client.eval
              to a Server; Server(pipelined) -> Pipeline -> Pipeline -> Client
    pyzmq     hand-written pyzmq: ventilator PUSH -> N worker processes -> sink
              PULL; REQ/REP; PUSH -> PUB/SUB -> PUB/SUB -> PUB -> SUB chain
    pool1     multiprocessing.Pool(N).imap(chunksize=1) (eval: Pool.apply)
    pool100   multiprocessing.Pool(N).imap(chunksize=100)
    ppe       concurrent.futures.ProcessPoolExecutor(N).map (eval: submit().result())
    pylm014   pylm 0.14.4 from PyPI, in its own venv (tests/legacy.py), as
              subprocesses, driven by its own Client; replies it loses are counted
    memcpy    one in-memory copy of each payload (the physical bound), payload sweep
    protobuf  protobuf (upb) PalmMessage, envelope codec only

Workloads (every point is measured for every system in the same run, the
repetitions of a point interleaved across systems; each point reports the
median of its repetitions):

    job       identity method, 100 B payloads, 1, 2 and 4 workers; then 2
              workers with 4 KiB, 64 KiB and 1 MiB payloads (msgs/s, MiB/s)
    eval      one call at a time to one server process: p50 and p99 latency
    stream    3 stages, 100 B payloads (msgs/s)
    envelope  decode + stage += 1 + encode of a 100 B-payload envelope (ns/op)

The number of messages of each repetition is sized from a first (warm-up)
run so that a repetition takes about --target seconds.  Client and sender
keep at most a window of calls in flight (2000 messages, fewer for large
payloads: 16 MiB in flight at most), the same for pylm and pyzmq.

Output: benchmarks/results/compare-<host>-<date>.json, a copy as latest.json,
PNG charts next to each, and a markdown table (printed, and written to
latest.md) for README.md.
"""

import argparse
import datetime
import itertools
import json
import math
import multiprocessing
import os
import platform
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
for _p in (str(HERE), str(ROOT / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

SCHEMA = 1
KIB, MIB = 1024, 1024 * 1024

SYSTEMS = {
    "pylm": "pylm (this project)",
    "pyzmq": "hand-written pyzmq",
    "pool1": "multiprocessing.Pool imap, chunksize=1",
    "pool100": "multiprocessing.Pool imap, chunksize=100",
    "ppe": "ProcessPoolExecutor.map",
    "pylm014": "pylm 0.14.4 (PyPI)",
    "memcpy": "memcpy (physical bound)",
    "protobuf": "protobuf (upb)",
}
#: What each system is in each workload, where it differs from SYSTEMS.
WORKLOAD_LABELS = {
    ("eval", "pylm"): "pylm Client.eval -> Server",
    ("eval", "pyzmq"): "pyzmq REQ/REP",
    ("eval", "pool1"): "multiprocessing.Pool.apply",
    ("eval", "ppe"): "ProcessPoolExecutor.submit().result()",
    ("eval", "pylm014"): "pylm 0.14.4 Client.eval -> Server",
    ("stream", "pylm"): "pylm Server -> Pipeline -> Pipeline",
    ("stream", "pyzmq"): "pyzmq PUSH -> PUB/SUB x3",
    ("stream", "pylm014"): "pylm 0.14.4 Server -> Pipeline -> Pipeline",
    ("envelope", "pylm"): "pylm_core.PalmMessage (Cython)",
    ("envelope", "protobuf"): "protobuf (upb)",
    ("envelope", "pylm014"): "pylm 0.14.4 PalmMessage (protobuf 3.20.3, pure Python)",
}
COLORS = {
    "pylm": "#1f77b4", "pyzmq": "#2ca02c", "pool1": "#ff7f0e", "pool100": "#d62728",
    "ppe": "#9467bd", "pylm014": "#8c564b", "memcpy": "#7f7f7f", "protobuf": "#17becf",
}

WORKER_COUNTS = (1, 2, 4)
SMALL = 100
PAYLOAD_SIZES = (100, 4 * KIB, 64 * KIB, MIB)
PAYLOAD_WORKERS = 2
JOB_SYSTEMS = ("pylm", "pyzmq", "pool1", "pool100", "ppe", "pylm014")
EVAL_SYSTEMS = ("pylm", "pyzmq", "pool1", "ppe", "pylm014")
STREAM_SYSTEMS = ("pylm", "pyzmq", "pylm014")
ENVELOPE_SYSTEMS = ("pylm", "protobuf", "pylm014")

#: Calls in flight at most (pylm.clients.JOB_WINDOW), and bytes in flight.
JOB_WINDOW = 2000
WINDOW_BYTES = 16 * MIB
#: Seconds to bring a process up, and to wait for any one reply.
START_TIMEOUT = 30.0
REPLY_TIMEOUT = 15.0
#: pylm 0.14: its client loses replies (see LEGACY_DRIVER); a repetition
#: ends when no reply came for this long, and the missing ones count as lost.
LEGACY_JOB_TIMEOUT_MS = 500
LEGACY_EVAL_TIMEOUT_MS = 200
LEGACY_MAX_MESSAGES = {False: 3000, True: 1500}      # by --quick
LEGACY_EVAL_CALLS = {False: 20, True: 10}
#: Seconds the driver of compare.py waits for one legacy command.
LEGACY_COMMAND_TIMEOUT = 60.0


def payload_of(size):
    """`size` bytes, not all alike."""
    block = bytes(range(256))
    return (block * (size // 256 + 1))[:size]


#: Distinct payload objects each job cycles through: pickle (Pool, the
#: executor) writes an object it already wrote in the same chunk as a
#: back-reference, so a job of one repeated object would flatter them.
DISTINCT = 128


def payloads_of(size, count=DISTINCT):
    """`count` distinct payloads of `size` bytes (a counter, then
    payload_of's bytes)."""
    return [i.to_bytes(8, "little") + payload_of(size - 8) for i in range(count)]


def stream_of(payloads, n):
    """n payloads, cycling through the distinct ones."""
    return itertools.islice(itertools.cycle(payloads), n)


def window_for(size):
    return max(8, min(JOB_WINDOW, WINDOW_BYTES // max(size, 1)))


def identity(payload):
    """The work of every worker: return the payload."""
    return payload


def _log(msg):
    try:
        from tqdm import tqdm
        tqdm.write(msg, file=sys.stderr)
    except ImportError:
        print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# machine

def machine_info():
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "host": socket.gethostname(),
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
    }
    try:
        with open("/proc/meminfo") as fh:
            kib = int(fh.readline().split()[1])
            info["memory_gib"] = round(kib / MIB, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import zmq
        info["pyzmq"] = zmq.__version__
        info["libzmq"] = zmq.zmq_version()
    except ImportError:
        pass
    try:
        import pylm
        info["pylm"] = getattr(pylm, "__version__", None)
    except ImportError:
        pass
    try:
        import google.protobuf
        info["protobuf"] = google.protobuf.__version__
    except ImportError:
        pass
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
            text=True, timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        info["git_dirty"] = bool(dirty.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


# ---------------------------------------------------------------------------
# processes of ours and of the pyzmq baselines (benchmarks/_peers.py)

def _peers():
    import _peers
    return _peers


def launch(target, *args, name):
    """Start a _peers.Peer without waiting for it (see ready())."""
    peer = _peers().Peer(target, *args, name=name)
    peer.process.start()
    peer._child.close()
    return peer


def ready(peer, timeout=START_TIMEOUT):
    """Wait for a launched peer to report (Peer.start's second half)."""
    if not peer._parent.poll(timeout):
        raise TimeoutError("%s did not start within %s s" % (peer.process.name, timeout))
    try:
        status, info = peer._parent.recv()
    except EOFError:
        raise RuntimeError("%s died at start (exit code %s)"
                           % (peer.process.name, peer.process.exitcode)) from None
    if status != "ok":
        raise RuntimeError("%s failed at start: %s" % (peer.process.name, info))
    peer.info = info
    return info


def stop_peers(peers):
    for peer in reversed(peers):
        try:
            peer.stop()
        except Exception:
            pass
    peers.clear()


def _monitor(sock):
    """A monitor of `sock`'s handshakes; made before the peers start, so
    that no event is missed."""
    import zmq
    return sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)


def _wait_handshakes(sock, events, count, timeout=START_TIMEOUT):
    """Until `count` peers completed the ZMTP handshake with `sock` (a PUSH
    sends only to the peers it has, so no round may start before every
    worker is there)."""
    import zmq
    from zmq.utils.monitor import recv_monitor_message
    try:
        done = 0
        deadline = time.monotonic() + timeout
        while done < count:
            left = deadline - time.monotonic()
            if left <= 0 or not events.poll(int(left * 1000) + 1):
                raise TimeoutError("%d of %d pyzmq workers connected" % (done, count))
            if recv_monitor_message(events)["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                done += 1
    finally:
        sock.disable_monitor()
        events.close(linger=0)


class OursJob:
    """pylm: a Master process, N Worker processes, a Client here."""

    def __init__(self):
        from pylm.clients import Client
        p = _peers()
        db, pull, pub, wpull, wpush = (p.tcp() for _ in range(5))
        self.db = db
        self.peers = [launch(p.run_master, "master", pull, pub, wpull, wpush, db, name="master")]
        self.names = []
        self.client = None
        try:
            ready(self.peers[0])
            self.client = Client("master", db, timeout=START_TIMEOUT)
        except BaseException:
            self.close()
            raise

    def grow(self, workers):
        p = _peers()
        new = []
        while len(self.names) < workers:
            name = "worker-%d" % len(self.names)
            self.names.append(name)
            new.append(launch(p.run_worker, name, self.db, name=name))
            self.peers.append(new[-1])
        for peer in new:
            ready(peer)
        # a worker that has not connected yet gets no calls: call `who` until
        # every worker answered.  The Master fills the credit of the workers
        # it has first (up to Worker(credit=1000) each): a newcomer gets
        # calls only beyond that, so the job must be larger than their sum.
        seen = set()
        deadline = time.monotonic() + START_TIMEOUT
        calls = 2000 * (workers + 1)
        while seen != {name.encode() for name in self.names}:
            if time.monotonic() > deadline:
                raise TimeoutError("workers %s of %s answered" % (sorted(seen), self.names))
            seen.update(self.client.job("master.who", itertools.repeat(b"", calls),
                                        messages=calls, timeout=REPLY_TIMEOUT, window=calls))

    def run(self, n, payloads):
        got = 0
        t0 = time.perf_counter()
        try:
            for _ in self.client.job("master.foo", stream_of(payloads, n), messages=n,
                                     timeout=REPLY_TIMEOUT, window=window_for(len(payloads[0]))):
                got += 1
        except TimeoutError:
            pass
        t1 = time.perf_counter()
        return {"seconds": t1 - t0, "sent": n, "received": got}

    def close(self):
        if self.client is not None:
            self.client.close()
            self.client = None
        stop_peers(self.peers)


class PyzmqJob:
    """zguide's ventilator -> workers -> sink: PUSH and PULL bound here,
    worker processes between them; the ventilator keeps a window of
    messages in flight, as Client.job does."""

    def __init__(self):
        import zmq
        self.ctx = zmq.Context()
        self.vent = self.ctx.socket(zmq.PUSH)
        self.sink = self.ctx.socket(zmq.PULL)
        self.vent.bind("tcp://127.0.0.1:*")
        self.sink.bind("tcp://127.0.0.1:*")
        self.sink.setsockopt(zmq.RCVTIMEO, int(REPLY_TIMEOUT * 1000))
        self.vent_ep = self.vent.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sink_ep = self.sink.getsockopt_string(zmq.LAST_ENDPOINT)
        self.peers = []

    def grow(self, workers):
        p = _peers()
        count = workers - len(self.peers)
        if count <= 0:
            return
        ev_vent = _monitor(self.vent)
        ev_sink = _monitor(self.sink)
        new = [launch(p.run_pushpull_worker, self.vent_ep, self.sink_ep,
                      name="pyzmq-worker-%d" % (len(self.peers) + i)) for i in range(count)]
        self.peers.extend(new)
        for peer in new:
            ready(peer)
        _wait_handshakes(self.vent, ev_vent, count)
        _wait_handshakes(self.sink, ev_sink, count)

    def run(self, n, payloads):
        import zmq
        window = window_for(len(payloads[0]))
        send, recv, k = self.vent.send, self.sink.recv, len(payloads)
        sent = got = 0
        t0 = time.perf_counter()
        try:
            while got < n:
                while sent < n and sent - got < window:
                    send(payloads[sent % k])
                    sent += 1
                recv()
                got += 1
        except zmq.Again:
            pass
        t1 = time.perf_counter()
        if got < n:   # what is still on its way belongs to this round
            self._drain()
        return {"seconds": t1 - t0, "sent": n, "received": got}

    def _drain(self):
        while self.sink.poll(500):
            self.sink.recv()

    def close(self):
        stop_peers(self.peers)
        self.vent.close(linger=0)
        self.sink.close(linger=0)
        self.ctx.term()


class PoolJob:
    """multiprocessing.Pool (spawn) of N processes; imap with a chunksize."""

    def __init__(self, workers):
        ctx = multiprocessing.get_context("spawn")
        self.pool = ctx.Pool(workers)
        self.pool.map(identity, range(workers * 4), chunksize=1)   # all started

    def runner(self, chunksize):
        def run(n, payloads):
            got = 0
            t0 = time.perf_counter()
            for _ in self.pool.imap(identity, stream_of(payloads, n), chunksize):
                got += 1
            return {"seconds": time.perf_counter() - t0, "sent": n, "received": got}
        return run

    def apply(self, payload):
        return self.pool.apply(identity, (payload,))

    def close(self):
        self.pool.terminate()
        self.pool.join()


class PpeJob:
    """concurrent.futures.ProcessPoolExecutor (spawn) of N processes."""

    def __init__(self, workers):
        ctx = multiprocessing.get_context("spawn")
        self.ex = ProcessPoolExecutor(workers, mp_context=ctx)
        list(self.ex.map(identity, range(workers * 4)))

    def run(self, n, payloads):
        got = 0
        t0 = time.perf_counter()
        for _ in self.ex.map(identity, stream_of(payloads, n)):
            got += 1
        return {"seconds": time.perf_counter() - t0, "sent": n, "received": got}

    def call(self, payload):
        return self.ex.submit(identity, payload).result()

    def close(self):
        self.ex.shutdown(wait=True, cancel_futures=True)


def memcpy_run(n, payloads):
    """One copy of each payload into a preallocated buffer (memcpy speed,
    plus about 100 ns of Python per copy)."""
    srcs = [memoryview(p) for p in payloads]
    dst = memoryview(bytearray(len(payloads[0])))
    t0 = time.perf_counter()
    for src in stream_of(srcs, n):
        dst[:] = src
    return {"seconds": time.perf_counter() - t0, "sent": n, "received": n}


# ---------------------------------------------------------------------------
# pylm 0.14.4, in its own venv

LEGACY_DRIVER = r'''
"""pylm 0.14.4 side of benchmarks/compare.py, run by the legacy venv's python.

    driver.py master NAME DB PULL PUB WORKER_PULL WORKER_PUSH
    driver.py worker NAME DB
    driver.py server NAME DB PULL PUB [--pipelined]
    driver.py pipeline NAME DB SUB PUB PREVIOUS [--pipelined]
    driver.py client        JSON commands on stdin; "RESULT <json>" lines out

pylm 0.14's Client opens a new SUB socket for each eval and job and sends
at once: replies published before that subscription reaches the server
are lost, and its recv waits forever.  Waits are bounded here with the
context's RCVTIMEO (how pylm 0.14 code bounds them) and what did not come
back is counted as lost.
"""
import faulthandler, gc, itertools, json, logging, os, sys, threading, time

faulthandler.dump_traceback_later(int(os.environ.get("DRIVER_LIFETIME", "1800")), exit=True)

import zmq
import pylm
from pylm.parts.core import zmq_context
from pylm.parts.messages_pb2 import PalmMessage

LOG = logging.WARNING


def identity(self, payload):
    return payload


def who(self, payload):
    return self.name.encode()


def payload_of(size, tag):
    block = bytes(range(256))
    return (tag + block * (size // 256 + 1))[:max(size, len(tag))]


CLIENTS = {}


def client_for(cmd):
    from pylm.clients import Client
    key = (cmd["server"], cmd["db"], cmd.get("sub"))
    if key not in CLIENTS:
        CLIENTS[key] = Client(cmd["server"], cmd["db"], sub_address=cmd.get("sub"),
                              logging_level=LOG)
    return CLIENTS[key]


def settle():
    """Let the sender thread of the last job finish; free its sockets."""
    for t in threading.enumerate():
        if t is not threading.main_thread():
            t.join(30)
    gc.collect()


def op_job(cmd):
    client = client_for(cmd)
    zmq_context.setsockopt(zmq.RCVTIMEO, cmd["timeout_ms"])
    n, collect = cmd["n"], cmd.get("collect", False)
    tag = b"%08x" % cmd["seq"]
    payload = payload_of(cmd["size"], tag)
    got, distinct = 0, set()
    t0 = time.perf_counter()
    last = t0
    gen = client.job(cmd["function"], itertools.repeat(payload, n), messages=sys.maxsize)
    try:
        for reply in gen:
            if collect:
                distinct.add(reply.decode("latin-1"))
            elif reply[:8] != tag:
                continue        # a late reply of an earlier round
            got += 1
            last = time.perf_counter()
            if got >= n:
                break
    except zmq.Again:
        pass
    gen.close()
    del gen
    settle()
    return {"seconds": last - t0, "sent": n, "received": got, "distinct": sorted(distinct)}


def op_eval(cmd):
    client = client_for(cmd)
    zmq_context.setsockopt(zmq.RCVTIMEO, cmd["timeout_ms"])
    latencies, lost, wrong = [], 0, 0
    for i in range(cmd["calls"]):
        payload = payload_of(cmd["size"], b"%08x" % (cmd["seq"] * 100000 + i))
        t0 = time.perf_counter()
        try:
            reply = client.eval(cmd["function"], payload)
        except zmq.Again:
            lost += 1
            continue
        dt = time.perf_counter() - t0
        if reply == payload:
            latencies.append(dt)
        else:
            wrong += 1
    gc.collect()
    return {"latencies": latencies, "lost": lost, "wrong": wrong, "calls": cmd["calls"]}


def op_envelope(cmd):
    msg = PalmMessage(pipeline=cmd["pipeline"], client=cmd["client"], stage=0,
                      function="server.method", payload=bytes(range(100)))
    data = msg.SerializeToString()
    n = cmd["n"]
    t0 = time.perf_counter()
    for _ in range(n):
        m = PalmMessage()
        m.ParseFromString(data)
        m.stage += 1
        out = m.SerializeToString()
    return {"seconds": time.perf_counter() - t0, "ops": n, "out": out.hex()}


def client_loop():
    real_stdout = os.fdopen(os.dup(1), "w")
    sys.stdout = sys.stderr         # pylm 0.14 logs to stdout
    ops = {"job": op_job, "eval": op_eval, "envelope": op_envelope}
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        try:
            result = ops[cmd["op"]](cmd)
        except Exception as exc:
            result = {"error": "%s: %s" % (type(exc).__name__, exc)}
        real_stdout.write("RESULT " + json.dumps(result) + "\n")
        real_stdout.flush()
    real_stdout.flush()
    os._exit(0)     # pylm 0.14 never closes its context: do not wait for it


def main(argv):
    role = argv[1]
    if role == "client":
        return client_loop()
    from pylm import servers
    pipelined = "--pipelined" in argv
    a = [x for x in argv[2:] if x != "--pipelined"]
    if role == "master":
        server = servers.Master(a[0], a[2], a[3], a[4], a[5], a[1], log_level=LOG)
    elif role == "worker":
        cls = type("BenchWorker", (servers.Worker,), {"foo": identity, "who": who})
        server = cls(a[0], a[1], log_level=LOG)
    elif role == "server":
        cls = type("BenchServer", (servers.Server,), {"foo": identity, "f": identity})
        server = cls(a[0], a[1], a[2], a[3], pipelined=pipelined, log_level=LOG)
    elif role == "pipeline":
        cls = type("BenchPipeline", (servers.Pipeline,), {"g": identity, "h": identity})
        server = cls(a[0], a[1], a[2], a[3], a[4], to_client=not pipelined, log_level=LOG)
    else:
        raise SystemExit("unknown role %r" % role)
    print("READY", flush=True)
    server.start()


main(sys.argv)
'''


class Legacy:
    """pylm 0.14.4 programs (LEGACY_DRIVER) run by the legacy venv's python:
    servers as background processes, and one client process that takes
    commands on stdin.  Every process is stopped by its Popen handle."""

    def __init__(self, workdir, enabled=True):
        import legacy
        self.legacy = legacy
        self.workdir = Path(workdir)
        self.python = None
        self.reason = None
        self.versions = {}
        self.nodes = []
        self.client = None
        self._client_log = None
        self._lines = None
        self._seq = 0
        if not enabled:
            self.reason = "left out (--no-legacy)"
            return
        try:
            self.python = str(legacy.ensure_legacy_venv(log=_log))
        except legacy.LegacyUnavailable as exc:
            self.reason = "pylm 0.14.4 venv could not be built: %s" % exc
        except Exception as exc:
            self.reason = "pylm 0.14.4 venv failed: %s: %s" % (type(exc).__name__, exc)
        if self.python:
            self.script = self.workdir / "pylm014_driver.py"
            self.script.write_text(LEGACY_DRIVER)
            try:
                out = subprocess.run(
                    [self.python, "-c", "import sys, zmq, google.protobuf as g; "
                     "print(sys.version.split()[0], zmq.__version__, zmq.zmq_version(), "
                     "g.__version__)"], capture_output=True, text=True, timeout=60,
                    env=legacy._clean_env(), cwd=str(self.workdir)).stdout.split()
                self.versions = dict(zip(("python", "pyzmq", "libzmq", "protobuf"), out))
            except (OSError, subprocess.SubprocessError):
                pass

    @property
    def available(self):
        return self.python is not None

    def node(self, label, *args):
        out = open(self.workdir / ("%s.log" % label), "wb")
        env = self.legacy._clean_env()
        proc = subprocess.Popen([self.python, "-u", str(self.script), *map(str, args)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=str(self.workdir), env=env)
        out.close()
        proc.label = label
        self.nodes.append(proc)
        return proc

    def wait_cache(self, address, name, proc):
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            log = (self.workdir / ("%s.log" % proc.label)).read_text(errors="replace")
            if "READY" in log:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("pylm 0.14 %s did not start:\n%s" % (proc.label, log[-2000:]))
            time.sleep(0.02)
        if address:
            self.legacy.wait_cache(address, name, timeout=START_TIMEOUT)

    def _start_client(self):
        env = self.legacy._clean_env()
        if self._client_log is None:
            self._client_log = open(self.workdir / "client.log", "ab")
        self.client = subprocess.Popen(
            [self.python, "-u", str(self.script), "client"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._client_log,
            cwd=str(self.workdir), env=env, text=True, bufsize=1)
        self._lines = queue.Queue()

        def reader(stream, lines):
            for line in stream:
                if line.startswith("RESULT "):
                    lines.put(json.loads(line[7:]))
            lines.put(None)

        threading.Thread(target=reader, args=(self.client.stdout, self._lines),
                         daemon=True).start()

    def call(self, cmd, timeout=LEGACY_COMMAND_TIMEOUT):
        if self.client is None or self.client.poll() is not None:
            self._start_client()
        self._seq += 1
        cmd = dict(cmd, seq=self._seq)
        self.client.stdin.write(json.dumps(cmd) + "\n")
        self.client.stdin.flush()
        try:
            result = self._lines.get(timeout=timeout)
        except queue.Empty:
            self._stop(self.client)
            self.client = None
            raise TimeoutError("pylm 0.14 client gave no answer to %s in %s s"
                               % (cmd["op"], timeout)) from None
        if result is None:
            self.client = None
            raise RuntimeError("pylm 0.14 client exited (see client.log)")
        if "error" in result:
            raise RuntimeError("pylm 0.14 client: %s" % result["error"])
        return result

    @staticmethod
    def _stop(proc, timeout=5.0):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def stop_nodes(self):
        for proc in reversed(self.nodes):
            self._stop(proc)
        self.nodes.clear()

    def close(self):
        if self.client is not None:
            try:
                self.client.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.client.stdin.flush()
                self.client.wait(5)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                pass
            self._stop(self.client)
            self.client = None
        self.stop_nodes()
        if self._client_log is not None:
            self._client_log.close()
            self._client_log = None


class LegacyJob:
    """pylm 0.14.4 Master + N Workers, driven by its own Client."""

    def __init__(self, lg):
        self.lg = lg
        self.db, pull, pub, wpull, wpush = self.lg.legacy.tcp_addresses(5)
        self.names = []
        master = lg.node("master", "master", "master", self.db, pull, pub, wpull, wpush)
        lg.wait_cache(self.db, "master", master)

    def grow(self, workers):
        while len(self.names) < workers:
            name = "legacy-worker-%d" % len(self.names)
            self.names.append(name)
            proc = self.lg.node(name, "worker", name, self.db)
            self.lg.wait_cache(None, None, proc)
        deadline = time.monotonic() + START_TIMEOUT
        seen = set()
        while seen != set(self.names):
            if time.monotonic() > deadline:
                raise TimeoutError("pylm 0.14 workers %s of %s answered" % (sorted(seen), self.names))
            seen.update(self.lg.call(dict(op="job", server="master", db=self.db,
                                          function="master.who", n=300, size=8, collect=True,
                                          timeout_ms=LEGACY_JOB_TIMEOUT_MS))["distinct"])

    def run(self, n, payloads):
        r = self.lg.call(dict(op="job", server="master", db=self.db, function="master.foo",
                              n=n, size=len(payloads[0]), timeout_ms=LEGACY_JOB_TIMEOUT_MS))
        return {k: r[k] for k in ("seconds", "sent", "received")}


# ---------------------------------------------------------------------------
# measuring

class Runner:
    """How one system runs one point: ``fn(n)`` runs n messages (or calls,
    or codec operations) and returns the repetition's numbers.  `n0` is the
    size of the first, warm-up run, from which the repetitions are sized."""

    def __init__(self, fn, n0, nmin, nmax):
        self.fn, self.n0, self.nmin, self.nmax = fn, n0, nmin, nmax


def _clamp(x, lo, hi):
    return int(max(lo, min(hi, x)))


def _rep_rate(rep):
    return rep["received"] / rep["seconds"] if rep["seconds"] > 0 else 0.0


def _percentile(values, q):
    data = sorted(values)
    if not data:
        return None
    return data[min(len(data) - 1, int(math.ceil(q * len(data))) - 1)]


class Bench:
    """Runs the points; keeps the records and the progress bar."""

    def __init__(self, reps, target, quick):
        self.reps, self.target, self.quick = reps, target, quick
        self.records = []
        self.bar = None

    # progress -------------------------------------------------------------
    def start_bar(self, total):
        try:
            from tqdm import tqdm
        except ImportError:
            self.bar = None
            return
        self.bar = tqdm(total=total, unit="run", dynamic_ncols=True, file=sys.stderr,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")

    def tick(self, n=1):
        if self.bar is not None:
            self.bar.update(n)

    def say(self, what):
        if self.bar is not None:
            self.bar.set_description_str(what[:48])
        else:
            print("...", what, file=sys.stderr, flush=True)

    def close_bar(self):
        if self.bar is not None:
            self.bar.close()

    # records --------------------------------------------------------------
    def skip(self, workload, systems, reason, **point):
        for system in systems:
            self.records.append(dict(point, workload=workload, system=system,
                                     label=label(workload, system), status="skipped",
                                     reason=reason))
            self.tick(self.reps + 1)

    def point(self, workload, kind, runners, **point):
        """Measure one point for every system in `runners` ({system:
        Runner}); kind is 'throughput', 'latency' or 'codec'."""
        self.say("%s %s" % (workload, " ".join("%s=%s" % kv for kv in point.items())))
        sizes, errors, reps = {}, {}, {s: [] for s in runners}
        for system, r in runners.items():
            try:
                # warm-up: grow until a run lasts a quarter of the target,
                # so that one slow first run does not size the repetitions
                n = r.n0
                while True:
                    t0 = time.perf_counter()
                    first = r.fn(n)
                    if n >= r.nmax or time.perf_counter() - t0 >= self.target / 4:
                        break
                    n = min(r.nmax, n * 4)
                sizes[system] = self._size(kind, r, first)
            except Exception as exc:
                errors[system] = "%s: %s" % (type(exc).__name__, exc)
                _log("%s %s %s: %s" % (workload, point, system, errors[system]))
            self.tick()
        order = list(runners)
        for rep in range(self.reps):
            # rotate the order: no system always runs first or last
            for system in order[rep % len(order):] + order[:rep % len(order)]:
                if system not in errors:
                    try:
                        reps[system].append(runners[system].fn(sizes[system]))
                    except Exception as exc:
                        errors[system] = "%s: %s" % (type(exc).__name__, exc)
                        _log("%s %s %s: %s" % (workload, point, system, errors[system]))
                self.tick()
        for system in runners:
            rec = dict(point, workload=workload, system=system, label=label(workload, system))
            rec.update(summarize(kind, reps[system], point.get("payload")))
            if system in errors:
                rec["error"] = errors[system]
                rec["status"] = "error" if not reps[system] else "partial"
            else:
                rec["status"] = "ok"
            self.records.append(rec)
        return self.records[-len(runners):]

    def _size(self, kind, r, first):
        if kind == "throughput":
            rate = _rep_rate(first)
            return _clamp(rate * self.target, r.nmin, r.nmax)
        if kind == "latency":
            lat = first["latencies"]
            if not lat:
                return r.nmin
            return _clamp(self.target / statistics.median(lat), r.nmin, r.nmax)
        return _clamp(first["ops"] / first["seconds"] * self.target, r.nmin, r.nmax)


def label(workload, system):
    return WORKLOAD_LABELS.get((workload, system), SYSTEMS[system])


def summarize(kind, reps, payload=None):
    out = {"repetitions": len(reps), "reps": reps}
    if not reps:
        return out
    if kind == "throughput":
        rates = [_rep_rate(r) for r in reps]
        sent = sum(r["sent"] for r in reps)
        received = sum(r["received"] for r in reps)
        out.update(msgs_per_s=statistics.median(rates), msgs_per_s_min=min(rates),
                   msgs_per_s_max=max(rates), messages_per_rep=reps[-1]["sent"],
                   sent=sent, received=received, lost=sent - received)
        if payload:
            out["mib_per_s"] = out["msgs_per_s"] * payload / MIB
    elif kind == "latency":
        p50s = [_percentile(r["latencies"], 0.50) for r in reps if r["latencies"]]
        p99s = [_percentile(r["latencies"], 0.99) for r in reps if r["latencies"]]
        calls = sum(r["calls"] for r in reps)
        lost = sum(r.get("lost", 0) + r.get("wrong", 0) for r in reps)
        out.update(p50_us=statistics.median(p50s) * 1e6 if p50s else None,
                   p99_us=statistics.median(p99s) * 1e6 if p99s else None,
                   calls_per_rep=reps[-1]["calls"], calls=calls, lost=lost)
        # the raw latencies are many: keep per-repetition percentiles only
        def us(value):
            return None if value is None else value * 1e6

        out["reps"] = [{"calls": r["calls"], "answered": len(r["latencies"]),
                        "lost": r.get("lost", 0) + r.get("wrong", 0),
                        "p50_us": us(_percentile(r["latencies"], 0.50)),
                        "p99_us": us(_percentile(r["latencies"], 0.99))} for r in reps]
    else:
        per_op = [r["seconds"] / r["ops"] * 1e9 for r in reps]
        out.update(ns_per_op=statistics.median(per_op), ns_per_op_min=min(per_op),
                   ns_per_op_max=max(per_op), ops_per_rep=reps[-1]["ops"])
        out["reps"] = [{"ops": r["ops"], "seconds": r["seconds"]} for r in reps]
    return out


def latency_runner(call):
    """fn(n): n calls of call(), one at a time; their latencies."""
    def run(n):
        lat = []
        t_start = time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter()
            call()
            lat.append(time.perf_counter() - t0)
        return {"latencies": lat, "calls": n, "lost": 0,
                "seconds": time.perf_counter() - t_start}
    return run


# ---------------------------------------------------------------------------
# the phases

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


def job_phase(bench, lg):
    q = bench.quick
    small = payloads_of(SMALL)
    ours = zmq_base = lgjob = None
    lg_reason = lg.reason
    try:
        bench.say("starting pylm Master")
        ours = OursJob()
        zmq_base = PyzmqJob()
        if lg.available:
            try:
                lgjob = LegacyJob(lg)
            except Exception as exc:
                lg_reason = "pylm 0.14 Master failed: %s: %s" % (type(exc).__name__, exc)
                _log(lg_reason)
        for workers in WORKER_COUNTS:
            bench.say("starting %d workers of each kind" % workers)
            ours.grow(workers)
            zmq_base.grow(workers)
            if lgjob is not None:
                try:
                    lgjob.grow(workers)
                except Exception as exc:
                    lg_reason = "pylm 0.14 workers failed: %s: %s" % (type(exc).__name__, exc)
                    _log(lg_reason)
                    lgjob = None
            pool = ppe = None
            try:
                pool = PoolJob(workers)
                ppe = PpeJob(workers)
                sizes = [SMALL] + (list(PAYLOAD_SIZES[1:]) if workers == PAYLOAD_WORKERS else [])
                for size in sizes:
                    payloads = small if size == SMALL else payloads_of(size)
                    big = size >= 64 * KIB
                    n0 = _clamp(2 * MIB // size, 20, 500)
                    nmax = _clamp(4 * 1024 * MIB // size, 200, 300_000)

                    def bind(run, payloads=payloads):
                        return lambda n: run(n, payloads)

                    runners = {
                        "pylm": Runner(bind(ours.run), n0, 50, nmax),
                        "pyzmq": Runner(bind(zmq_base.run), n0, 50, nmax),
                        "pool1": Runner(bind(pool.runner(1)), n0, 50, nmax),
                        "pool100": Runner(bind(pool.runner(100)), n0, 50, nmax),
                        "ppe": Runner(bind(ppe.run), n0, 50, nmax),
                    }
                    if lgjob is not None:
                        runners["pylm014"] = Runner(bind(lgjob.run), min(n0, 100) if not big else 20,
                                                    20, LEGACY_MAX_MESSAGES[q])
                    if workers == PAYLOAD_WORKERS:
                        runners["memcpy"] = Runner(bind(memcpy_run), n0, 50, 10_000_000)
                    bench.point("job", "throughput", runners, workers=workers, payload=size)
                    if lgjob is None:
                        bench.skip("job", ["pylm014"], lg_reason, workers=workers, payload=size)
            finally:
                for thing in (pool, ppe):
                    if thing is not None:
                        thing.close()
    finally:
        for thing in (ours, zmq_base):
            if thing is not None:
                thing.close()
        lg.stop_nodes()


def eval_phase(bench, lg):
    import zmq
    from pylm.clients import Client
    p = _peers()
    payload = payload_of(SMALL)
    peers, client, ctx, req, pool, ppe = [], None, None, None, None, None
    lg_reason = lg.reason
    try:
        bench.say("starting eval servers")
        db, pull, pub = p.tcp(), p.tcp(), p.tcp()
        peers.append(launch(p.run_server, "server", db, pull, pub, False, name="server"))
        peers.append(launch(p.run_rep, name="rep"))
        pool = PoolJob(1)
        ppe = PpeJob(1)
        ready(peers[0])
        rep_ep = ready(peers[1])
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
        if lg.available:
            try:
                ldb, lpull, lpub = lg.legacy.tcp_addresses(3)
                node = lg.node("eval-server", "server", "server", ldb, lpull, lpub)
                lg.wait_cache(ldb, "server", node)
                calls = LEGACY_EVAL_CALLS[bench.quick]

                def legacy_eval(n, ldb=ldb):
                    return lg.call(dict(op="eval", server="server", db=ldb, function="server.foo",
                                        calls=n, size=SMALL, timeout_ms=LEGACY_EVAL_TIMEOUT_MS))

                runners["pylm014"] = Runner(legacy_eval, calls, calls, calls)
            except Exception as exc:
                lg_reason = "pylm 0.14 Server failed: %s: %s" % (type(exc).__name__, exc)
                _log(lg_reason)
        bench.point("eval", "latency", runners, workers=1, payload=SMALL)
        if "pylm014" not in runners:
            bench.skip("eval", ["pylm014"], lg_reason, workers=1, payload=SMALL)
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
        lg.stop_nodes()


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


def stream_phase(bench, lg):
    import zmq
    from pylm.clients import Client
    p = _peers()
    payload = payload_of(SMALL)
    peers, client, ctx, push, sub = [], None, None, None, None
    lg_reason = lg.reason
    try:
        bench.say("starting stream chains")
        db0, pull0, pub0, db1, pub1, db2, pub2 = (p.tcp() for _ in range(7))
        ours = [launch(p.run_server, "server", db0, pull0, pub0, True, name="server"),
                launch(p.run_pipeline, "p1", db1, pub0, pub1, "server", False, name="p1"),
                launch(p.run_pipeline, "p2", db2, pub1, pub2, "p1", True, name="p2")]
        peers.extend(ours)
        head = launch(p.run_stream_head, "server", name="chain-head")
        peers.append(head)
        for peer in ours:
            ready(peer)
        pull_ep, zpub0 = ready(head)
        s1 = launch(p.run_stream_stage, zpub0, "server", "p1", name="chain-p1")
        peers.append(s1)
        zpub1 = ready(s1)
        s2 = launch(p.run_stream_stage, zpub1, "p1", None, name="chain-p2")
        peers.append(s2)
        zpub2 = ready(s2)

        client = Client("server", db0, sub_address=pub2, timeout=START_TIMEOUT)
        _probe(lambda: client.eval(STREAM_FUNCTION, payload, timeout=1.0), "pylm stream")

        ctx = zmq.Context()
        push, sub = ctx.socket(zmq.PUSH), ctx.socket(zmq.SUB)
        me = b"compare-client"
        sub.setsockopt(zmq.RCVHWM, p.PUB_HWM)
        sub.setsockopt(zmq.SUBSCRIBE, me)
        sub.connect(zpub2)
        push.connect(pull_ep)
        p.probe_chain(push, sub, me, START_TIMEOUT)
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

        def chain_run(n, window=JOB_WINDOW):
            send, recv, more = push.send, sub.recv, p.SNDMORE
            sent = got = 0
            t0 = time.perf_counter()
            try:
                while got < n:
                    while sent < n and sent - got < window:
                        send(me, more)
                        send(payload)
                        sent += 1
                    recv()
                    recv()
                    got += 1
            except zmq.Again:
                pass
            t1 = time.perf_counter()
            while got < n and sub.poll(500):
                sub.recv_multipart()
            return {"seconds": t1 - t0, "sent": n, "received": got}

        runners = {"pylm": Runner(ours_run, 500, 500, 300_000),
                   "pyzmq": Runner(chain_run, 500, 500, 300_000)}
        if lg.available:
            try:
                ldb0, lpull0, lpub0, ldb1, lpub1, ldb2, lpub2 = lg.legacy.tcp_addresses(7)
                n0 = lg.node("stream-server", "server", "server", ldb0, lpull0, lpub0,
                             "--pipelined")
                n1 = lg.node("stream-p1", "pipeline", "p1", ldb1, lpub0, lpub1, "server",
                             "--pipelined")
                n2 = lg.node("stream-p2", "pipeline", "p2", ldb2, lpub1, lpub2, "p1")
                lg.wait_cache(ldb0, "server", n0)
                lg.wait_cache(ldb1, "p1", n1)
                lg.wait_cache(ldb2, "p2", n2)
                cmd = dict(op="job", server="server", db=ldb0, sub=lpub2,
                           function=" ".join(STREAM_FUNCTION), size=SMALL,
                           timeout_ms=LEGACY_JOB_TIMEOUT_MS)

                def legacy_probe():
                    if not lg.call(dict(cmd, n=20))["received"]:
                        raise TimeoutError
                _probe(legacy_probe, "pylm 0.14 stream")

                def legacy_run(n):
                    r = lg.call(dict(cmd, n=n))
                    return {k: r[k] for k in ("seconds", "sent", "received")}

                runners["pylm014"] = Runner(legacy_run, 100, 20, LEGACY_MAX_MESSAGES[bench.quick])
            except Exception as exc:
                lg_reason = "pylm 0.14 stream failed: %s: %s" % (type(exc).__name__, exc)
                _log(lg_reason)
        bench.point("stream", "throughput", runners, stages=3, payload=SMALL)
        if "pylm014" not in runners:
            bench.skip("stream", ["pylm014"], lg_reason, stages=3, payload=SMALL)
    finally:
        if client is not None:
            client.close()
        for sock in (push, sub):
            if sock is not None:
                sock.close(linger=0)
        if ctx is not None:
            ctx.term()
        stop_peers(peers)
        lg.stop_nodes()


ENVELOPE_FIELDS = dict(pipeline="3f2504e0-4f89-41d3-9a0c-0305e82c3301",
                       client="9e1b6d3a-5c2f-4e7b-8a0d-1c3e5f7a9b2d",
                       function="server.method", stage=0, payload=bytes(range(100)))


def envelope_phase(bench, lg):
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
    if lg.available:
        def legacy_codec(n):
            r = lg.call(dict(op="envelope", n=n, pipeline=ENVELOPE_FIELDS["pipeline"],
                             client=ENVELOPE_FIELDS["client"]))
            if bytes.fromhex(r["out"]) != expected:
                raise AssertionError("pylm 0.14 encoded a different envelope")
            return {"seconds": r["seconds"], "ops": r["ops"]}
        runners["pylm014"] = Runner(legacy_codec, 2000, 2000, 1_000_000)
    bench.point("envelope", "codec", runners, payload=SMALL)
    if not lg.available:
        bench.skip("envelope", ["pylm014"], lg.reason, payload=SMALL)


# ---------------------------------------------------------------------------
# output: JSON, markdown, charts

def _fmt_rate(x):
    if x is None:
        return "-"
    if x >= 1e6:
        return "%.2fM" % (x / 1e6)
    if x >= 1e4:
        return "%.0fk" % (x / 1e3)
    if x >= 1e3:
        return "%.1fk" % (x / 1e3)
    return "%.0f" % x


def _fmt_size(size):
    if size >= MIB:
        return "%d MiB" % (size // MIB)
    if size >= KIB:
        return "%d KiB" % (size // KIB)
    return "%d B" % size


def _find(records, **match):
    for rec in records:
        if all(rec.get(k) == v for k, v in match.items()):
            return rec
    return None


def _lost_note(rec):
    if rec and rec.get("lost"):
        total = rec.get("sent") or rec.get("calls") or 0
        return " (lost %d/%d)" % (rec["lost"], total) if total else " (lost %d)" % rec["lost"]
    return ""


def _cell(rec, value_key, fmt):
    if rec is None:
        return "-"
    if rec.get("status") == "skipped":
        return "skipped"
    value = rec.get(value_key)
    if value is None:
        return "failed" if rec.get("error") else "-"
    return fmt(value) + _lost_note(rec)


def markdown(data):
    recs = data["results"]
    meta = data["machine"]
    run = data["run"]
    lines = []
    lines.append("Measured %s on %s: %s, %s cores, Python %s, pyzmq %s / libzmq %s; "
                 "%s run, median of %d repetitions per point, every system in the same run "
                 "(load average %s at the start, %s at the end)."
                 % (run["date"][:10], meta.get("host"), meta.get("cpu_model"), meta.get("cores"),
                    meta.get("python"), meta.get("pyzmq"), meta.get("libzmq"),
                    "quick" if run["quick"] else "full", run["repetitions"],
                    "%.1f" % run["loadavg_start"][0] if run.get("loadavg_start") else "?",
                    "%.1f" % run["loadavg_end"][0] if run.get("loadavg_end") else "?"))
    lines.append("")

    has = {r["workload"] for r in recs}
    if "job" in has:
        lines.extend(_job_tables(recs))
    if "eval" in has:
        lines.extend(_eval_table(recs))
    if "stream" in has:
        lines.extend(_stream_table(recs))
    if "envelope" in has:
        lines.extend(_envelope_table(recs))
    notes = sorted({"%s: %s" % (r["label"], r.get("reason") or r.get("error"))
                    for r in recs if r.get("status") in ("skipped", "error", "partial")})
    if notes:
        lines.extend("- %s" % n for n in notes)
        lines.append("")
    lines.append("pylm 0.14.4's own Client loses replies (it subscribes after it sends): "
                 "a repetition ends after %d ms without a reply (%d ms for an eval) and what "
                 "did not come back is shown as lost." % (LEGACY_JOB_TIMEOUT_MS,
                                                          LEGACY_EVAL_TIMEOUT_MS))
    return "\n".join(lines) + "\n"


def _job_tables(recs):
    lines = []
    lines.append("**Job throughput, 100 B payloads (msgs/s)**")
    lines.append("")
    lines.append("| system | " + " | ".join("%d worker%s" % (w, "s" if w > 1 else "")
                                             for w in WORKER_COUNTS) + " |")
    lines.append("|---|" + "---:|" * len(WORKER_COUNTS))
    for system in JOB_SYSTEMS:
        cells = [_cell(_find(recs, workload="job", system=system, workers=w, payload=SMALL),
                       "msgs_per_s", _fmt_rate) for w in WORKER_COUNTS]
        lines.append("| %s | %s |" % (SYSTEMS[system], " | ".join(cells)))
    lines.append("")

    # job vs payload
    lines.append("**Job throughput by payload size, %d workers (msgs/s; MiB/s)**"
                 % PAYLOAD_WORKERS)
    lines.append("")
    lines.append("| system | " + " | ".join(_fmt_size(s) for s in PAYLOAD_SIZES) + " |")
    lines.append("|---|" + "---:|" * len(PAYLOAD_SIZES))

    def both(rec):
        if rec is None or rec.get("msgs_per_s") is None:
            return _cell(rec, "msgs_per_s", _fmt_rate)
        text = _fmt_rate(rec["msgs_per_s"])
        if rec.get("payload", 0) >= 4 * KIB:
            text += "; %.0f MiB/s" % rec["mib_per_s"]
        return text + _lost_note(rec)

    for system in JOB_SYSTEMS + ("memcpy",):
        cells = [both(_find(recs, workload="job", system=system, workers=PAYLOAD_WORKERS,
                            payload=s)) for s in PAYLOAD_SIZES]
        lines.append("| %s | %s |" % (SYSTEMS[system], " | ".join(cells)))
    lines.append("")
    return lines


def _eval_table(recs):
    lines = []
    lines.append("**Round trip of one call, 100 B (microseconds)**")
    lines.append("")
    lines.append("| system | p50 | p99 | calls (lost) |")
    lines.append("|---|---:|---:|---:|")
    for system in EVAL_SYSTEMS:
        rec = _find(recs, workload="eval", system=system)
        if rec is None:
            continue
        if rec.get("status") == "skipped":
            lines.append("| %s | skipped | | |" % rec["label"])
            continue
        f = (lambda v: "-" if v is None else "%.0f" % v)
        lines.append("| %s | %s | %s | %s%s |" % (
            rec["label"], f(rec.get("p50_us")), f(rec.get("p99_us")), rec.get("calls", "-"),
            " (%d)" % rec["lost"] if rec.get("lost") else ""))
    lines.append("")
    return lines


def _stream_table(recs):
    lines = ["**3-stage stream, 100 B payloads (msgs/s)**", "",
             "| system | msgs/s |", "|---|---:|"]
    for system in STREAM_SYSTEMS:
        rec = _find(recs, workload="stream", system=system)
        if rec is not None:
            lines.append("| %s | %s |" % (rec["label"], _cell(rec, "msgs_per_s", _fmt_rate)))
    lines.append("")
    return lines


def _envelope_table(recs):
    lines = ["**Envelope codec: decode + stage += 1 + encode, 100 B payload (ns per message)**",
             "", "| codec | ns/op |", "|---|---:|"]
    for system in ENVELOPE_SYSTEMS:
        rec = _find(recs, workload="envelope", system=system)
        if rec is not None:
            lines.append("| %s | %s |" % (rec["label"],
                                          _cell(rec, "ns_per_op", lambda v: "%.0f" % v)))
    lines.append("")
    return lines


def plot(data, stem):
    """<stem>-workers.png and <stem>-payload.png from the results."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    recs = data["results"]
    if not any(r["workload"] == "job" for r in recs):
        return []
    run = data["run"]
    meta = data["machine"]
    subtitle = "%s, %s cores, %s; %s run, median of %d reps" % (
        meta.get("cpu_model"), meta.get("cores"), run["date"][:10],
        "quick" if run["quick"] else "full", run["repetitions"])
    def tick(v, _):
        for scale, suffix in ((1e6, "M"), (1e3, "k")):
            if v >= scale:
                return "%g%s" % (v / scale, suffix)
        return "%g" % v

    rate_fmt = FuncFormatter(tick)
    bars = "bars: fastest and slowest repetition"
    written = []

    def series(system, key, xs, **match):
        pts = []
        for x in xs:
            rec = _find(recs, workload="job", system=system, **{key: x}, **match)
            if rec and rec.get("msgs_per_s"):
                pts.append((x, rec))
        return pts

    def errbars(pts, scale=1.0):
        y = [r["msgs_per_s"] * scale for _, r in pts]
        lo = [max(0.0, (r["msgs_per_s"] - r["msgs_per_s_min"]) * scale) for _, r in pts]
        hi = [max(0.0, (r["msgs_per_s_max"] - r["msgs_per_s"]) * scale) for _, r in pts]
        return y, [lo, hi]

    def mark_lost(ax, pts, ys):
        for (x, rec), y in zip(pts, ys):
            if rec.get("lost"):
                ax.annotate("lost %.0f%%" % (100.0 * rec["lost"] / rec["sent"]), (x, y),
                            textcoords="offset points", xytext=(4, -11), fontsize=7,
                            color=COLORS["pylm014"])

    # throughput vs workers
    fig, ax = plt.subplots(figsize=(8.5, 6))
    for system in JOB_SYSTEMS:
        pts = series(system, "workers", WORKER_COUNTS, payload=SMALL)
        if not pts:
            continue
        y, err = errbars(pts)
        ax.errorbar([x for x, _ in pts], y, yerr=err, marker="o", capsize=3,
                    color=COLORS[system], label=SYSTEMS[system],
                    linewidth=2.5 if system == "pylm" else 1.5)
        mark_lost(ax, pts, y)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(WORKER_COUNTS))
    ax.set_xticklabels([str(w) for w in WORKER_COUNTS])
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(rate_fmt)
    ax.set_xlabel("worker processes")
    ax.set_ylabel("messages / s (log)")
    ax.set_title("Job throughput vs workers, 100 B payloads\n%s; %s" % (subtitle, bars),
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    path = "%s-workers.png" % stem
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    # throughput vs payload size: msgs/s and MiB/s
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 6))
    for system in JOB_SYSTEMS + ("memcpy",):
        pts = series(system, "payload", PAYLOAD_SIZES, workers=PAYLOAD_WORKERS)
        if not pts:
            continue
        style = dict(marker="o", capsize=3, color=COLORS[system], label=SYSTEMS[system],
                     linewidth=2.5 if system == "pylm" else 1.5,
                     linestyle="--" if system == "memcpy" else "-")
        xs = [x for x, _ in pts]
        y, err = errbars(pts)
        ax1.errorbar(xs, y, yerr=err, **style)
        mark_lost(ax1, pts, y)
        y2 = [r["msgs_per_s"] * x / MIB for x, r in pts]
        ax2.plot(xs, y2, **{k: v for k, v in style.items() if k != "capsize"})
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(list(PAYLOAD_SIZES))
        ax.set_xticklabels([_fmt_size(s) for s in PAYLOAD_SIZES])
        ax.minorticks_off()
        ax.set_xlabel("payload size (log)")
        ax.grid(True, which="major", alpha=0.3)
    ax1.yaxis.set_major_formatter(rate_fmt)
    ax1.set_ylabel("messages / s (log)")
    ax1.set_title("messages / s", fontsize=10)
    ax2.set_ylabel("MiB / s (log)")
    ax2.set_title("MiB / s (memcpy: one copy, the physical bound)", fontsize=10)
    ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: "%g" % v))
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle("Job throughput vs payload size, %d workers\n%s; %s"
                 % (PAYLOAD_WORKERS, subtitle, bars), fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path = "%s-payload.png" % stem
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def write_outputs(data, out_dir, plots=True):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in data["machine"]["host"])
    stamp = data["run"]["date"].replace(":", "").replace("-", "")[:15]
    path = out_dir / ("compare-%s-%s.json" % (host, stamp))
    text = json.dumps(data, indent=1, sort_keys=False) + "\n"
    path.write_text(text)
    (out_dir / "latest.json").write_text(text)
    table = markdown(data)
    (out_dir / "latest.md").write_text(table)
    written = [path, out_dir / "latest.json", out_dir / "latest.md"]
    if plots:
        try:
            for png in plot(data, str(path.with_suffix(""))):
                latest = out_dir / Path(png).name.replace(path.stem, "latest")
                shutil.copyfile(png, latest)
                written += [Path(png), latest]
        except ImportError as exc:
            _log("no charts: %s (pip install matplotlib, or the bench extra)" % exc)
    return table, written


# ---------------------------------------------------------------------------

PHASES = {"job": job_phase, "eval": eval_phase, "stream": stream_phase,
          "envelope": envelope_phase}


def run_all(args):
    reps = args.reps or (3 if args.quick else 5)
    target = args.target or (0.25 if args.quick else 0.6)
    started = time.monotonic()
    data = {
        "schema": SCHEMA,
        "machine": machine_info(),
        "run": {"date": datetime.datetime.now(datetime.timezone.utc)
                .strftime("%Y-%m-%dT%H:%M:%SZ"),
                "quick": args.quick, "repetitions": reps, "target_seconds": target,
                "loadavg_start": list(os.getloadavg()),
                "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])},
        "systems": SYSTEMS,
        "phases": args.phases,
        "results": [],
    }
    bench = Bench(reps, target, args.quick)
    workdir = Path(tempfile.mkdtemp(prefix="pylm-compare-"))
    try:
        if not args.no_legacy:
            _log("pylm 0.14.4 venv: checking (built on first use, about a minute)")
        lg = Legacy(workdir, enabled=not args.no_legacy)
        if lg.reason:
            _log("pylm 0.14.4 skipped: %s" % lg.reason)
        data["run"]["pylm014"] = dict(lg.versions, available=lg.available, reason=lg.reason)
        bench.start_bar(plan_total(reps, args.phases))
        try:
            for phase in (PHASES[name] for name in args.phases):
                try:
                    phase(bench, lg)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    _log("%s failed: %s\n%s" % (phase.__name__, exc, traceback.format_exc()))
                    data["run"].setdefault("failed_phases", []).append(
                        "%s: %s: %s" % (phase.__name__, type(exc).__name__, exc))
        finally:
            bench.close_bar()
            lg.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    data["results"] = bench.records
    data["run"]["seconds"] = round(time.monotonic() - started, 1)
    data["run"]["loadavg_end"] = list(os.getloadavg())
    return data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="3 repetitions of ~0.25 s per point (default: 5 of ~0.6 s)")
    parser.add_argument("--reps", type=int, help="repetitions per point")
    parser.add_argument("--target", type=float, help="seconds per repetition")
    parser.add_argument("--out", default=str(RESULTS), help="output directory")
    parser.add_argument("--no-legacy", action="store_true", help="leave pylm 0.14.4 out")
    parser.add_argument("--no-plots", action="store_true", help="JSON and markdown only")
    parser.add_argument("--phases", default=",".join(PHASES),
                        type=lambda v: [p for p in v.split(",") if p],
                        help="workloads to run, of %s (default: all)" % ",".join(PHASES))
    parser.add_argument("--plot", metavar="RESULTS.json",
                        help="only chart (and tabulate) an earlier results file")
    args = parser.parse_args(argv)
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error("unknown phases: %s" % ", ".join(sorted(unknown)))

    if args.plot:
        data = json.loads(Path(args.plot).read_text())
        stem = str(Path(args.plot).with_suffix(""))
        for png in plot(data, stem):
            print("wrote", png)
        table = markdown(data)
        Path(stem + ".md").write_text(table)
        print("wrote", stem + ".md")
        print()
        print(table)
        return 0

    data = run_all(args)
    table, written = write_outputs(data, args.out, plots=not args.no_plots)
    print(table)
    for path in written:
        print("wrote", os.path.relpath(path))
    print("took %.0f s" % data["run"]["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
