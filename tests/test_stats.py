"""Live statistics (``Client.stats()``) of a Server, a Master and a
Pipeline while a job runs (a call held at a Gate: the server is certainly
mid-job) and at its end; a server that does not serve statistics; job
progress bars."""

import subprocess
import sys
import threading

import pytest
import zmq

from pylm import RemoteError
from pylm._context import context
from pylm._stats import StatsUnavailable
from pylm._testing import Gate, running, tcp_addresses, wait_for
from pylm.clients import Client
from pylm.servers import Master, Pipeline, Server, Worker

N = 300
HOLD = 100          # the payload number held at the gate


class Held:
    """A method that waits at self.gate for payload HOLD, and raises for
    payloads ending in '!'."""

    def work(self, payload):
        if payload == b"%d" % HOLD:
            self.gate.wait()
        if payload.endswith(b"!"):
            raise ValueError("bang")
        return payload


class HeldServer(Held, Server):
    pass


class HeldWorker(Held, Worker):
    pass


class HeldPipeline(Held, Pipeline):
    pass


class Pass(Server):
    def pass_on(self, payload):
        return payload


def _job_in_thread(make_client, function, payloads):
    """Run a job in a thread, on a Client of its own made by make_client()
    (a Client belongs to one thread): (thread, list its replies go to)."""
    replies = []

    def run():
        with make_client() as client:
            replies.extend(client.job(function, payloads, timeout=30))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, replies


def _held_then_done(stats_of, make_client, function, gate):
    """Start a job of N payloads (on a Client made by make_client()), read
    the stats while payload HOLD waits at the gate, open it, let the job
    end: (stats while held, stats at the end)."""
    thread, replies = _job_in_thread(make_client, function, [b"%d" % i for i in range(N)])
    gate.wait_arrived(1)
    during = stats_of()
    gate.open()
    thread.join(30)
    assert not thread.is_alive()
    assert sorted(replies) == sorted(b"%d" % i for i in range(N))
    return during, stats_of()


def test_server_stats_during_and_after_a_job():
    db, pull, pub = tcp_addresses(3)
    server = HeldServer("held", db, pull, pub)
    with Gate() as gate, running(server):
        server.gate = gate
        client = Client("held", db)
        try:
            before = client.stats()
            during, after = _held_then_done(client.stats, lambda: Client("held", db),
                                            "held.work", gate)
            with pytest.raises(RemoteError):
                client.eval("held.work", b"x!", timeout=10)
            final = client.stats()
        finally:
            client.close()
    assert (before["name"], before["kind"], before["running"]) == ("held", "Server", True)
    assert before["received"] == before["sent"] == 0
    # the server runs calls in order: HOLD is running, HOLD + 1 came in
    assert during["received"] == during["methods"]["work"]["calls"] == HOLD + 1
    assert during["sent"] == HOLD
    assert after["received"] == after["sent"] == N
    assert after["methods"]["work"] == {"calls": N, "errors": 0}
    assert final["methods"]["work"] == {"calls": N + 1, "errors": 1}
    assert (final["errors"], final["bad"]) == (1, 0)
    assert after["uptime_s"] >= during["uptime_s"] > 0
    # after start() returned: the last numbers, and server.stats as before
    assert server.live_stats()["running"] is False
    assert server.live_stats()["received"] == N + 1
    assert server.stats["processed"] == N + 1


def test_master_stats_during_and_after_a_job():
    db, pull, pub, wpull, wpush = tcp_addresses(5)
    master = Master("m", pull, pub, wpull, wpush, db)
    with Gate() as gate, running(master):
        workers = [HeldWorker(db_address=db) for _ in range(2)]
        for w in workers:
            w.gate = gate
        with running(workers[0]), running(workers[1]):
            client = Client("m", db)
            try:
                wait_for(lambda: len(client.stats()["workers"]) == 2, 20, what="2 workers")
                during, after = _held_then_done(client.stats, lambda: Client("m", db),
                                                "m.work", gate)
            finally:
                client.close()
    assert (during["kind"], during["running"]) == ("Master", True)
    assert len(during["workers"]) == 2
    # the call held is in flight on its worker, not done
    assert sum(w["in_flight"] for w in during["workers"]) >= 1
    assert during["sent"] < N and during["received"] <= N
    assert after["received"] == after["sent"] == N
    assert sum(w["done"] for w in after["workers"]) == N
    assert all(w["in_flight"] == 0 and w["last_seen_s"] >= 0 for w in after["workers"])
    assert [after[k] for k in ("given_up", "requeued", "poisoned", "queued")] == [0, 0, 0, 0]


def test_pipeline_stats_during_and_after_a_job():
    db, pull, pub, pdb, ppub = tcp_addresses(5)
    server = Pass("first", db, pull, pub, pipelined=True)
    pipeline = HeldPipeline("second", pdb, pub, ppub, "first")
    with Gate() as gate, running(server), running(pipeline):
        pipeline.gate = gate
        client = Client("first", db, sub_address=ppub)
        stats = Client("second", pdb)
        try:
            during, after = _held_then_done(
                stats.stats, lambda: Client("first", db, sub_address=ppub),
                ["first.pass_on", "second.work"], gate)
            first = client.stats()
        finally:
            client.close()
            stats.close()
    assert (during["kind"], during["running"]) == ("Pipeline", True)
    assert during["received"] == during["methods"]["work"]["calls"] == HOLD + 1
    assert after["received"] == after["sent"] == N
    assert first["received"] == first["sent"] == N
    assert first["methods"]["pass_on"]["calls"] == N


def test_stats_of_a_server_that_does_not_serve_them():
    """pylm 0.14's cache service (and ours, for an operation it does not
    know) answers with empty bytes: a clear error, not a hang."""
    db = tcp_addresses(1)[0]
    rep = context().socket(zmq.REP)
    rep.bind(db)

    def answer_empty():
        # the config requests of Client(), then the stats request
        for _ in range(5):
            if not rep.poll(10000):
                return
            request = rep.recv()
            rep.send(b"old" if b"name" in request[-8:] else b"")

    thread = threading.Thread(target=answer_empty, daemon=True)
    thread.start()
    try:
        client = Client("old", db, timeout=10)
        with pytest.raises(StatsUnavailable, match="pylm 0.14"):
            client.stats()
        client.close()
    finally:
        thread.join(15)
        rep.close(linger=0)


def test_job_progress_bar_on_stderr(capsys):
    db, pull, pub = tcp_addresses(3)
    server = Pass("bar", db, pull, pub)
    with running(server):
        client = Client("bar", db)
        try:
            replies = list(client.job("bar.pass_on", [b"x"] * 50, progress=True))
            streamed = list(client.job("bar.pass_on", iter([b"y"] * 7), messages=7,
                                       progress=True))
        finally:
            client.close()
    assert replies == [b"x"] * 50 and streamed == [b"y"] * 7
    err = capsys.readouterr().err
    assert "50/50" in err and "7/7" in err


def test_progress_without_tqdm_is_a_clear_error():
    code = (
        "import sys; sys.modules['tqdm'] = None\n"
        "from pylm.clients import Client\n"
        "c = Client('x', None, 'tcp://127.0.0.1:9', 'tcp://127.0.0.1:9', this_config=True)\n"
        "try:\n"
        "    c.job('x.y', [b'a'], progress=True)\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    print('no error')\n"
        "c.close()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert b"pip install 'pylm[progress]'" in done.stdout, done.stdout
