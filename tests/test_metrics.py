"""Prometheus metrics (``metrics_port=``): the endpoint scraped over HTTP
on 127.0.0.1 while a job is held at a Gate and at its end; the CLI's
--metrics-port; without prometheus_client nothing is imported, and asking
for metrics says what to install."""

import os
import re
import subprocess
import sys
import threading
import urllib.request

import pytest

from pylm._testing import Gate, free_port, running, tcp_addresses, wait_for
from pylm.clients import Client
from pylm.servers import Master, Server, Worker

pytest.importorskip("prometheus_client")  # the `test` extra installs it

N = 200
HOLD = 50


def scrape(port):
    """{(metric name, labels text): value} of GET /metrics."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    samples = {}
    for line in text.splitlines():
        m = re.match(r"^(pylm_\w+)(\{[^}]*\})? (\S+)$", line)
        if m:
            samples[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return samples


class HeldWorker(Worker):
    def work(self, payload):
        if payload == b"%d" % HOLD:
            self.gate.wait()
        return payload


class Echo(Server):
    def work(self, payload):
        return payload


def _job(client, function, n):
    replies = []
    thread = threading.Thread(
        target=lambda: replies.extend(client.job(function, [b"%d" % i for i in range(n)],
                                                 timeout=30)), daemon=True)
    thread.start()
    return thread, replies


def test_master_metrics_during_and_after_a_job():
    db, pull, pub, wpull, wpush = tcp_addresses(5)
    port = free_port()
    master = Master("m", pull, pub, wpull, wpush, db, metrics_port="127.0.0.1:%d" % port)
    with Gate() as gate, running(master):
        workers = [HeldWorker(db_address=db) for _ in range(2)]
        for w in workers:
            w.gate = gate
        with running(workers[0]), running(workers[1]):
            client = Client("m", db)
            try:
                wait_for(lambda: scrape(port).get(("pylm_workers", '{server="m"}')) == 2, 20,
                         what="2 workers in the metrics")
                thread, replies = _job(client, "m.work", N)
                gate.wait_arrived(1)
                during = scrape(port)
                gate.open()
                thread.join(30)
                assert sorted(replies) == sorted(b"%d" % i for i in range(N))
                after = scrape(port)
            finally:
                client.close()
    key = '{server="m"}'
    assert 0 < during[("pylm_messages_received_total", key)] <= N
    assert during[("pylm_messages_sent_total", key)] < N
    assert sum(v for (name, _), v in during.items() if name == "pylm_worker_in_flight") >= 1
    assert after[("pylm_messages_received_total", key)] == N
    assert after[("pylm_messages_sent_total", key)] == N
    assert sum(v for (name, _), v in after.items() if name == "pylm_worker_done_total") == N
    assert after[("pylm_workers_given_up_total", key)] == 0
    assert after[("pylm_messages_queued", key)] == 0
    # the port is released when the server stops
    with pytest.raises(OSError):
        scrape(port)


def test_server_metrics_per_method():
    db, pull, pub = tcp_addresses(3)
    port = free_port()
    server = Echo("e", db, pull, pub, metrics_port="127.0.0.1:%d" % port)
    with running(server):
        client = Client("e", db)
        try:
            assert len(list(client.job("e.work", [b"x"] * 30))) == 30
            with pytest.raises(Exception):
                client.eval("e.nosuch", b"x", timeout=10)
        finally:
            client.close()
        samples = scrape(port)
    assert samples[("pylm_method_calls_total", '{method="work",server="e"}')] == 30
    assert samples[("pylm_method_errors_total", '{method="work",server="e"}')] == 0
    assert samples[("pylm_messages_received_total", '{server="e"}')] == 31
    assert samples[("pylm_errors_total", '{server="e"}')] == 1
    assert samples[("pylm_uptime_seconds", '{server="e"}')] > 0


def test_cli_metrics_port():
    db, pull, pub = tcp_addresses(3)
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (os.path.dirname(os.path.abspath(__file__)), env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([sys.executable, "-m", "pylm", "server", "cli_services:UpperServer",
                             "--name", "up", "--db", db, "--pull", pull, "--pub", pub,
                             "--metrics-port", "127.0.0.1:%d" % port], env=env)
    try:
        samples = wait_for(lambda: _try_scrape(port), 30, what="the metrics endpoint")
        assert samples[("pylm_method_calls_total", '{method="upper",server="up"}')] == 0
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def _try_scrape(port):
    try:
        return scrape(port)
    except OSError:
        return None


def test_without_prometheus_client():
    """A server without metrics_port never imports prometheus_client; one
    with it, where prometheus_client is missing, says what to install."""
    db, pull, pub = tcp_addresses(3)
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from pylm._testing import running\n"
        "from pylm.servers import Server\n"
        "with running(Server('s', %r, %r, %r)):\n"
        "    pass\n"
        "try:\n"
        "    Server('s', %r, %r, %r, metrics_port=9)\n"
        "except ImportError as exc:\n"
        "    print(exc)\n" % (db, pull, pub, db, pull, pub))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert b"pip install 'pylm[metrics]'" in done.stdout, done.stdout
    # and in a process where it is installed, serving does not import it
    code = (
        "import sys\n"
        "from pylm._testing import running\n"
        "from pylm.servers import Server\n"
        "with running(Server('s', %r, %r, %r)):\n"
        "    pass\n"
        "print('prometheus_client' in sys.modules)\n" % (db, pull, pub))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, b"False\n"), done.stderr


def test_a_bare_port_binds_the_loopback_interface_only():
    from pylm._metrics import parse_metrics_address
    assert parse_metrics_address(9100) == ("127.0.0.1", 9100)
    assert parse_metrics_address("9100") == ("127.0.0.1", 9100)
    assert parse_metrics_address(":9100") == ("127.0.0.1", 9100)
    assert parse_metrics_address("0.0.0.0:9100") == ("0.0.0.0", 9100)
    assert parse_metrics_address("[::1]:9100") == ("::1", 9100)
    db, pull, pub = tcp_addresses(3)
    port = free_port()
    server = Echo("e", db, pull, pub, metrics_port=port)
    with running(server):
        assert scrape(port)[("pylm_messages_received_total", '{server="e"}')] == 0
        assert server._metrics._httpd.server_address[:2] == ("127.0.0.1", port)


def test_a_taken_metrics_port_fails_start_and_the_server_is_not_running():
    import socket

    db, pull, pub = tcp_addresses(3)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = Echo("e", db, pull, pub, metrics_port="127.0.0.1:%d" % port)
        with pytest.raises(OSError):
            server.start()
    stats = server.live_stats()
    assert stats["running"] is False, stats
    # its addresses were released: the same server starts on a free port
    server = Echo("e", db, pull, pub, metrics_port="127.0.0.1:%d" % free_port())
    with running(server):
        client = Client("e", db, timeout=10)
        try:
            assert client.eval("e.work", b"x", timeout=10) == b"x"
        finally:
            client.close()
