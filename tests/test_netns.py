"""Scale-out beyond one host: a Master, two Workers and a Client in network
namespaces of their own, over TCP between the namespaces' addresses
(examples/netns_scaleout.py, whose Switch builds the network).

Namespaces: <prefix>-master, -a, -b (the three hosts of the cluster) and
-client, each with a veth to a bridge in <prefix>-sw; <prefix> and the
10.X.Y.0/24 subnet are unique to the run.  Each role is the example run by
``ip netns exec <ns> python examples/netns_scaleout.py <role> ...``.
Whatever happens, the processes are stopped by PID and the links and
namespaces deleted, and the test checks that none is left.

Needs root and iproute2 (`ip`); skipped otherwise, or when namespaces
cannot be made here (a container without CAP_SYS_ADMIN), unless
PYLM_NETNS_REQUIRED=1.  Runs twice, plain and with CURVE on every process
(keys from the PYLM_* environment variables); about 3 s each.
"""

import importlib.util
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "netns_scaleout.py"
_spec = importlib.util.spec_from_file_location("netns_scaleout", EXAMPLE)
netns = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(netns)

pytestmark = pytest.mark.timeout(60)

MESSAGES = 2000
#: Seconds for the client's whole run (it waits for both workers first).
CLIENT_TIMEOUT = 30


#: Run in the client's namespace: whether the cache at argv[1] answers a
#: plain REQ and (when PYLM_SERVER_KEY is set) a CURVE REQ with the
#: environment's keys, each given 2 s.
PROBE = """
import json, os, sys
import zmq, zmq.auth
ctx = zmq.Context()
answered = {}
kinds = {"plain": {}}
if os.environ.get("PYLM_SERVER_KEY"):
    public, secret = zmq.auth.load_certificate(os.environ["PYLM_SECRET_KEY"])
    kinds["curve"] = {zmq.CURVE_SERVERKEY: zmq.auth.load_certificate(
        os.environ["PYLM_SERVER_KEY"])[0], zmq.CURVE_PUBLICKEY: public, zmq.CURVE_SECRETKEY: secret}
for label, options in kinds.items():
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    for option, value in options.items():
        sock.setsockopt(option, value)
    sock.connect(sys.argv[1])
    sock.send(b"probe")
    answered[label] = sock.poll(2000) != 0
    sock.close()
ctx.term()
print(json.dumps(answered))
"""


def _unavailable(reason):
    if os.environ.get("PYLM_NETNS_REQUIRED"):
        pytest.fail("network namespaces required but unavailable: %s" % reason)
    pytest.skip(reason)


@pytest.fixture
def net():
    reason = netns.netns_unavailable()
    if reason:
        _unavailable(reason)
    switch = netns.Switch(netns.HOSTS)
    try:
        switch.__enter__()
    except netns.NetnsError as exc:
        _unavailable("cannot create network namespaces here: %s" % exc)
    try:
        yield switch
    finally:
        procs = list(switch.procs)
        switch.close()
        assert all(p.poll() is not None for p in procs), "a process outlived the teardown"
        assert not switch.leftovers(), "namespaces left: %s" % switch.leftovers()


def _logs(tmp_path):
    return "\n".join("--- %s\n%s" % (p.name, p.read_text(errors="replace")[-3000:])
                     for p in sorted(tmp_path.glob("*.log")))


@pytest.fixture(params=["plain", "curve"])
def security(request, tmp_path, monkeypatch):
    """Plain, or CURVE for every process through the environment (one
    cluster key pair, authorized; the processes inherit the variables)."""
    if request.param == "curve":
        from pylm.security import generate_keys

        public, secret = generate_keys(str(tmp_path / "keys"), "cluster")
        authorized = tmp_path / "authorized"
        authorized.mkdir()
        os.link(public, authorized / "cluster.key")
        monkeypatch.setenv("PYLM_SECRET_KEY", secret)
        monkeypatch.setenv("PYLM_SERVER_KEY", public)
        monkeypatch.setenv("PYLM_AUTHORIZED_KEYS", str(authorized))
    return request.param


def test_master_and_workers_on_three_hosts(net, tmp_path, security):
    me = [sys.executable, "-u", str(EXAMPLE)]
    host = net.address("master")
    db = "tcp://%s:%d" % (host, netns.PORTS[-1])

    def start(ns, role, *args):
        with open(tmp_path / ("%s.log" % ns), "wb") as log:
            return net.run(ns, me + [role, *args], stdout=log, stderr=subprocess.STDOUT)

    master = start("master", "master", "--host", host)
    workers = {name: start(name, "worker", "--db", db, "--name", name) for name in ("a", "b")}
    client = net.run("client", me + ["client", "--db", db, "--messages", str(MESSAGES),
                                     "--workers", "2", "--timeout", "15"],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = client.communicate(timeout=CLIENT_TIMEOUT)
    except subprocess.TimeoutExpired:
        netns.stop(client)
        pytest.fail("the client did not finish in %s s\n%s" % (CLIENT_TIMEOUT, _logs(tmp_path)))
    context = "client rc=%s\nstdout:\n%s\nstderr:\n%s\n%s" % (
        client.returncode, out, err[-3000:], _logs(tmp_path))
    assert client.returncode == 0, context
    summary = json.loads(out.strip().splitlines()[-1])

    # every call answered, once
    assert summary["replies"] == MESSAGES, context
    assert summary["distinct"] == MESSAGES, context
    # both workers did work, each from its own namespace's address, and the
    # client called from its own
    assert set(summary["per_worker"]) == {"a@%s" % net.address("a"),
                                          "b@%s" % net.address("b")}, context
    assert all(n > 0 for n in summary["per_worker"].values()), context
    assert summary["client"] == net.address("client"), context
    # nobody died on the way
    assert master.poll() is None, context
    assert all(w.poll() is None for w in workers.values()), context
    # from the client's host, a plain peer at the Master's cache is answered
    # only without keys, and one with the cluster's keys only with them
    probe = net.run("client", [sys.executable, "-c", PROBE, db],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = probe.communicate(timeout=CLIENT_TIMEOUT)
    assert probe.returncode == 0, err
    expected = {"plain": True} if security == "plain" else {"plain": False, "curve": True}
    assert json.loads(out) == expected, context


#: Messages of the partition test's job, and after how many replies worker a's
#: link is cut; how long it stays down (longer than the Master's 3 s
#: worker_timeout: the Master gives the worker up and hands its calls on).
PARTITION_MESSAGES = 20000
PARTITION_AT = PARTITION_MESSAGES * 3 // 10
PARTITION_SECONDS = 5


def _read_line(proc, timeout):
    """The next line of proc's stdout within `timeout` s ('' at its end)."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else None


def test_a_link_cut_for_5_s_mid_job_heals_and_the_job_completes_exactly_once(net, tmp_path):
    """Worker a's link to the switch (so to the Master) goes down for 5 s
    at 30% of the job, then up again: every call is answered once (the
    Master gives a up and hands its calls to b; a's late results are
    dropped; a rejoins when the link is back)."""
    me = [sys.executable, "-u", str(EXAMPLE)]
    host = net.address("master")
    db = "tcp://%s:%d" % (host, netns.PORTS[-1])

    def start(ns, role, *args):
        with open(tmp_path / ("%s.log" % ns), "wb") as log:
            return net.run(ns, me + [role, *args], stdout=log, stderr=subprocess.STDOUT)

    start("master", "master", "--host", host)
    workers = {name: start(name, "worker", "--db", db, "--name", name) for name in ("a", "b")}
    client = net.run("client", me + ["client", "--db", db, "--messages",
                                     str(PARTITION_MESSAGES), "--workers", "2",
                                     "--timeout", "20", "--progress-at", str(PARTITION_AT)],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    cut = False
    try:
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while time.monotonic() < deadline:
            line = _read_line(client, deadline - time.monotonic())
            if not line:
                break
            lines.append(line)
            if line.startswith("progress"):
                net.set_link("a", False)
                cut = True
                try:
                    time.sleep(PARTITION_SECONDS)   # the fault's length, not a wait for state
                finally:
                    net.set_link("a", True)
                break
        out, err = client.communicate(timeout=CLIENT_TIMEOUT)
    except subprocess.TimeoutExpired:
        netns.stop(client)
        pytest.fail("the client did not finish in time\n%s" % _logs(tmp_path))
    out = "".join(lines) + out
    context = "client rc=%s\nstdout:\n%s\nstderr:\n%s\n%s" % (
        client.returncode, out, err[-3000:], _logs(tmp_path))
    assert cut, "the job ended before the link was cut\n" + context
    assert client.returncode == 0, context
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["replies"] == PARTITION_MESSAGES, context
    assert summary["distinct"] == PARTITION_MESSAGES, context
    assert all(w.poll() is None for w in workers.values()), context
