"""The pylm 0.14.4 side of benchmarks/compare, run by the interpreter of the
pylm 0.14.4 venv (tests/legacy.py builds it), never imported by this
project's Python: it imports pylm 0.14.4 and its protobuf envelope.

    pylm014_driver.py master NAME DB PULL PUB WORKER_PULL WORKER_PUSH
    pylm014_driver.py worker NAME DB
    pylm014_driver.py server NAME DB PULL PUB [--pipelined]
    pylm014_driver.py pipeline NAME DB SUB PUB PREVIOUS [--pipelined]
    pylm014_driver.py client     JSON commands on stdin; "RESULT <json>" lines out

A server prints READY before it starts.  The client takes one command a
line ({"op": "job" | "eval" | "envelope" | "quit", ...}, see the op_*
functions) and answers each with one RESULT line.

pylm 0.14's Client opens a new SUB socket for each eval and job and sends
at once: replies published before that subscription reaches the server
are lost, and its recv waits forever.  Waits are bounded here with the
context's RCVTIMEO (how pylm 0.14 code bounds them) and what did not come
back is counted as lost.  Every process exits on its own after
DRIVER_LIFETIME seconds (default 1800), whatever happens to the benchmark.
"""

import faulthandler
import gc
import itertools
import json
import logging
import os
import sys
import threading
import time

import zmq
from pylm.parts.core import zmq_context
from pylm.parts.messages_pb2 import PalmMessage

#: pylm 0.14's servers and clients log at this level: warnings and errors
#: only, so that the benchmark's output is its tables
LOG = logging.WARNING


def identity(self, payload):
    """The method every benchmark calls (foo, f, g, h)."""
    return payload


def who(self, payload):
    """The worker's name: which workers a job reached."""
    return self.name.encode()


def payload_of(size, tag):
    """`size` bytes, not all alike, that start with `tag` (a round's tag,
    so that a late reply of an earlier round is told apart)."""
    block = bytes(range(256))
    return (tag + block * (size // 256 + 1))[:max(size, len(tag))]


#: One Client per (server, db, sub): made at the first command for them.
CLIENTS = {}


def client_for(cmd):
    """The Client of the server `cmd` names."""
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
    """Send cmd["n"] calls of cmd["function"] with Client.job; the seconds
    until the last reply, and how many came back (or, with cmd["collect"],
    which distinct replies came back, for `who`)."""
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
    """cmd["calls"] calls of Client.eval, one at a time: their latencies,
    and how many were lost or came back wrong."""
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
    """cmd["n"] times decode + stage += 1 + encode of a 100 B-payload
    PalmMessage (protobuf 3.20.3, pure Python); the seconds, and the last
    encoding (hex) for the caller to check."""
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
    """Answer the commands on stdin, one RESULT line each, until "quit"."""
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
    """Run the role argv[1] (see the module's docstring)."""
    faulthandler.dump_traceback_later(int(os.environ.get("DRIVER_LIFETIME", "1800")),
                                      exit=True)
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


if __name__ == "__main__":
    main(sys.argv)
