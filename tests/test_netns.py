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
import subprocess
import sys
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
