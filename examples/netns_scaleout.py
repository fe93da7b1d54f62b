"""Scale-out beyond one host: a Master, two Workers and a Client, each in a
network namespace of its own (a host of its own, as far as the network is
concerned), talking TCP over a virtual switch.

    sudo python examples/netns_scaleout.py [--messages N]    # all of it (Linux, root, iproute2)

or each role by itself, on real machines (or namespaces) that reach the
master's address:

    python examples/netns_scaleout.py master --host 10.0.0.1
    python examples/netns_scaleout.py worker --db tcp://10.0.0.1:5559 --name a
    python examples/netns_scaleout.py client --db tcp://10.0.0.1:5559 --messages 2000 --workers 2

The whole-run mode builds four namespaces (master, worker a, worker b,
client), each with one end of a veth pair whose other end sits on a bridge
in a fifth namespace, the switch; addresses 10.X.Y.1-4/24, unique to the
run.  The host's own network is not touched.  Everything is removed on
the way out, whatever happened: processes by PID, then links and
namespaces.  tests/test_netns.py runs the same thing.
"""

import argparse
import collections
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

#: Ports of the master on its own host: pull, pub, worker pull, worker push, db.
PORTS = (5555, 5556, 5557, 5558, 5559)
#: The hosts of the whole-run mode, and their last address byte.
HOSTS = {"master": 1, "a": 2, "b": 3, "client": 4}


# -- the roles ---------------------------------------------------------------

def run_master(args):
    from pylm.servers import Master

    pull, pub, wpull, wpush, db = ("tcp://%s:%d" % (args.host, port) for port in PORTS)
    master = Master("master", pull_address=pull, pub_address=pub,
                    worker_pull_address=wpull, worker_push_address=wpush,
                    db_address=db, log_level=logging.WARNING)
    print("master serving at %s" % db, flush=True)
    master.start()          # until SIGTERM
    return 0


def own_address(towards):
    """The address this host uses to reach `towards` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((towards, 9))
        return s.getsockname()[0]


def run_worker(args):
    from urllib.parse import urlsplit

    from pylm.servers import Worker

    where = ("%s@%s" % (args.name, own_address(urlsplit(args.db).hostname))).encode()
    work = args.work_ms / 1000.0

    class Placed(Worker):
        def where(self, payload):
            """Who ran this call, and from which address; a little work,
            so that the calls spread over the workers."""
            if work:
                time.sleep(work)
            return where + b" " + payload

    worker = Placed(args.name, args.db, log_level=logging.WARNING)
    print("worker %s serving %s" % (where.decode(), args.db), flush=True)
    worker.start()          # until SIGTERM
    return 0


def run_client(args):
    """Wait until `--workers` workers answer, then one job of `--messages`
    calls; print a JSON summary; exit 0 when every reply came back and
    every worker did some of that job."""
    from pylm.clients import Client

    deadline = time.monotonic() + args.timeout
    client = Client("master", args.db, timeout=args.timeout)
    try:
        seen = set()
        while len(seen) < args.workers:
            if time.monotonic() > deadline:
                break
            seen.update(reply.split(b" ")[0] for reply in client.job(
                "master.where", (b"probe" for _ in range(50)), messages=50,
                timeout=args.timeout))
        per_worker = collections.Counter()
        answered = set()
        started = time.monotonic()
        for reply in client.job("master.where", (b"%d" % i for i in range(args.messages)),
                                messages=args.messages, timeout=args.timeout):
            who, _, payload = reply.partition(b" ")
            per_worker[who.decode()] += 1
            answered.add(int(payload))
            if len(answered) == args.progress_at:
                # a test cuts a link now (tests/test_netns.py)
                print("progress %d" % args.progress_at, flush=True)
        took = time.monotonic() - started
    finally:
        client.close()
    summary = {
        "messages": args.messages,
        "replies": sum(per_worker.values()),
        "distinct": len(answered),
        "per_worker": dict(sorted(per_worker.items())),
        "seconds": round(took, 3),
        "client": own_address(args.db.split("//")[1].split(":")[0]),
    }
    print(json.dumps(summary), flush=True)
    ok = (summary["distinct"] == args.messages and summary["replies"] == args.messages
          and len(per_worker) >= args.workers)
    return 0 if ok else 1


# -- the virtual network ----------------------------------------------------------

class NetnsError(RuntimeError):
    pass


def _ip(*args, check=True):
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and out.returncode != 0:
        raise NetnsError("ip %s: %s" % (" ".join(args), (out.stderr or out.stdout).strip()))
    return out


class Switch:
    """Hosts (network namespaces) on a bridge in a namespace of its own.

    ``with Switch(["master", "a", "b"]) as net:`` creates them;
    ``net.address(host)``, ``net.run(host, argv)`` (a Popen inside the
    host's namespace); on exit every process started by ``run`` is
    stopped by its PID, then the links and the namespaces are deleted.
    """

    def __init__(self, hosts=HOSTS, tag=None, subnet=None):
        tag = tag or "%d-%04x" % (os.getpid(), random.getrandbits(16))
        self.prefix = "pylm-%s" % tag
        self.switch = "%s-sw" % self.prefix
        self.hosts = {h: "%s-%s" % (self.prefix, h) for h in hosts}
        self.octets = dict(hosts) if isinstance(hosts, dict) else {
            h: i + 1 for i, h in enumerate(hosts)}
        pid = os.getpid()
        self.subnet = subnet or "10.%d.%d" % ((pid >> 8) % 250 + 1, pid % 256)
        self.procs = []
        self.created = []
        self.links = []

    def address(self, host):
        return "%s.%d" % (self.subnet, self.octets[host])

    def __enter__(self):
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _create(self):
        for ns in [self.switch, *self.hosts.values()]:
            _ip("netns", "add", ns)
            self.created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i, (host, ns) in enumerate(self.hosts.items()):
            port = "port%d" % i
            # the veth is made in the switch, its peer moved into the host
            _ip("-n", self.switch, "link", "add", port, "type", "veth",
                "peer", "name", "eth0", "netns", ns)
            self.links.append(port)
            _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", "%s/24" % self.address(host), "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
        # the bridge forwards once its ports are up (no STP): check each
        # host reaches the master's address
        first = next(iter(self.hosts))
        for host, ns in self.hosts.items():
            if host != first:
                self._wait_reachable(ns, self.address(first))

    def _wait_reachable(self, ns, address, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            out = _ip("netns", "exec", ns, "ping", "-c", "1", "-W", "1", address, check=False) \
                if shutil.which("ping") else None
            if out is None or out.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise NetnsError("%s cannot reach %s: %s" % (ns, address, out.stdout.strip()))
            time.sleep(0.1)

    def run(self, host, argv, **kwargs):
        """Popen of argv inside the host's namespace (``ip netns exec``
        execs argv, so the PID is argv's own)."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.hosts[host], *argv], **kwargs)
        self.procs.append(proc)
        return proc

    def close(self):
        """Stop the processes (SIGTERM, then SIGKILL, by PID), delete the
        links, then the namespaces.  Errors are collected and raised at
        the end, after everything was tried."""
        errors = []
        for proc in reversed(self.procs):
            stop(proc)
        self.procs.clear()
        for port in reversed(self.links):
            out = _ip("-n", self.switch, "link", "del", port, check=False)
            if out.returncode != 0:
                errors.append("link %s: %s" % (port, out.stderr.strip()))
        self.links.clear()
        for ns in reversed(self.created):
            out = _ip("netns", "del", ns, check=False)
            if out.returncode != 0:
                errors.append("netns %s: %s" % (ns, out.stderr.strip()))
        self.created.clear()
        if errors:
            raise NetnsError("teardown: " + "; ".join(errors))

    def set_link(self, host, up):
        """Take the host's link to the switch down (False) or up (True)."""
        port = self.links[list(self.hosts).index(host)]
        _ip("-n", self.switch, "link", "set", port, "up" if up else "down")

    def leftovers(self):
        """Namespaces of this run still present (none after close())."""
        out = _ip("netns", "list", check=False).stdout
        return [line.split()[0] for line in out.splitlines()
                if line.split() and line.split()[0].startswith(self.prefix)]


def stop(proc, timeout=5.0):
    """SIGTERM the process by its PID; SIGKILL when it has not exited."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    return proc.returncode


def netns_unavailable():
    """Why the whole-run mode cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (run as root or with sudo)"
    if shutil.which("ip") is None:
        return "the `ip` command is missing (Debian/Ubuntu: apt-get install iproute2)"
    return None


def run_all(args):
    """Master, two workers and the client on four namespaces."""
    reason = netns_unavailable()
    if reason:
        print("cannot run: %s" % reason, file=sys.stderr)
        return 2
    me = [sys.executable, "-u", os.path.abspath(__file__)]
    with Switch() as net:
        host = net.address("master")
        db = "tcp://%s:%d" % (host, PORTS[-1])
        print("namespaces %s-{sw,%s} on %s.0/24" % (net.prefix, ",".join(HOSTS), net.subnet))
        net.run("master", me + ["master", "--host", host])
        for name in ("a", "b"):
            net.run(name, me + ["worker", "--db", db, "--name", name])
        client = net.run("client", me + ["client", "--db", db, "--messages", str(args.messages),
                                         "--workers", "2"], stdout=subprocess.PIPE, text=True)
        out, _ = client.communicate(timeout=args.timeout + 30)
        print(out.strip())
        summary = json.loads(out.strip().splitlines()[-1])
    print("done: netns_scaleout, %d replies from %s" % (
        summary["replies"], ", ".join("%s %d" % kv for kv in summary["per_worker"].items())))
    return client.returncode


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(run=run_all)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=15.0)
    roles = parser.add_subparsers(dest="role")
    p = roles.add_parser("master", help="serve a Master at --host")
    p.add_argument("--host", required=True, help="this host's address, to bind")
    p.set_defaults(run=run_master)
    p = roles.add_parser("worker", help="serve a Worker of the master at --db")
    p.add_argument("--db", required=True, help="the master's db_address")
    p.add_argument("--name", required=True)
    p.add_argument("--work-ms", type=float, default=0.5, help="sleep per call (ms)")
    p.set_defaults(run=run_worker)
    p = roles.add_parser("client", help="one job through the master at --db")
    p.add_argument("--db", required=True, help="the master's db_address")
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--workers", type=int, default=2, help="workers that must take part")
    p.add_argument("--timeout", type=float, default=15.0)
    p.add_argument("--progress-at", type=int, default=0,
                   help="print a line 'progress N' after N replies of the job")
    p.set_defaults(run=run_client)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
