"""The ``pylm`` command end to end, in real processes (``python -m pylm``):
a master, a supervisor of two workers, call, job, stats, keys; a worker
killed with SIGKILL in the middle of a job is restarted and the job
completes; bad usage exits 2, an unreachable cache 1; every way a job
ends with its stdin still open gives its exit code, cleanly."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from pylm._testing import Gate, tcp_addresses, wait_for
from pylm.clients import Client

TESTS = os.path.dirname(os.path.abspath(__file__))
#: Seconds every CLI process gets before the test gives up on it.
LIMIT = 60


def _env(extra=None):
    env = dict(os.environ, **(extra or {}))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS, env.get("PYTHONPATH")) if p)
    return env


def pylm(*args, **kwargs):
    """Run ``python -m pylm ARGS`` to its end: the CompletedProcess."""
    kwargs.setdefault("timeout", LIMIT)
    return subprocess.run([sys.executable, "-m", "pylm", *args], capture_output=True,
                          env=_env(), **kwargs)


def start(*args, stderr=None, env=None):
    """Start ``python -m pylm ARGS`` in the background (`env`: more
    environment variables)."""
    return subprocess.Popen([sys.executable, "-m", "pylm", *args], env=_env(env),
                            stdout=subprocess.DEVNULL, stderr=stderr)


def stop(proc):
    """SIGTERM to the process by its PID, then wait (SIGKILL if it hangs):
    its exit code."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("pid %d did not stop within 20 s of SIGTERM" % proc.pid)


def _stats(db, name="m"):
    client = Client(name, db, timeout=5)
    try:
        return client.stats(timeout=5)
    finally:
        client.close()


def _pids(log_path):
    with open(log_path) as f:
        return [int(pid) for pid in re.findall(r"worker \d+ started: pid (\d+)", f.read())]


#: The payload that Upper.gated holds at the cluster's gate.
GATED = b"line-5000"


@pytest.fixture
def cluster(tmp_path):
    """`pylm master` and `pylm worker cli_services:Upper --processes 2`,
    both up: (db address, supervisor, path of the supervisor's log, the
    Gate where the workers' `gated` holds GATED)."""
    db, pull, pub, wpull, wpush = tcp_addresses(5)
    gate = Gate()
    master = start("master", "--name", "m", "--db", db, "--pull", pull, "--pub", pub,
                   "--worker-pull", wpull, "--worker-push", wpush, "--worker-timeout", "1")
    log_path = tmp_path / "supervisor.log"
    with open(log_path, "w") as log:
        workers = start("worker", "cli_services:Upper", "--db", db, "--processes", "2",
                        stderr=log, env={"PYLM_TEST_GATE": "%s:%d" % gate.address,
                                         "PYLM_TEST_GATED": GATED.decode()})
    try:
        wait_for(lambda: _try_stats(db) and len(_try_stats(db)["workers"]) == 2, 30,
                 what="two workers at the master")
        yield db, workers, log_path, gate
    finally:
        gate.close()
        codes = stop(workers), stop(master)
    assert codes == (0, 0), codes


def _try_stats(db):
    try:
        return _stats(db)
    except (TimeoutError, ValueError):
        return None


def test_cluster_call_job_stats_and_restart(cluster, tmp_path):
    db, workers, log_path, gate = cluster
    done = pylm("call", "m.upper", "hello", "--db", db)
    assert (done.returncode, done.stdout) == (0, b"HELLO\n"), done.stderr

    # a supervised worker killed DURING a job of 10,000 lines (while it
    # holds GATED at the gate): the master gives it up and sends its calls
    # to the other worker (where GATED is held again), the supervisor
    # starts another, and the job completes with every reply once
    pids = wait_for(lambda: len(_pids(log_path)) >= 2 and _pids(log_path), 10,
                    what="the supervisor's log of two workers")
    lines = b"".join(b"line-%d\n" % i for i in range(10000))
    proc = subprocess.Popen([sys.executable, "-m", "pylm", "job", "m.gated", "--db", db,
                             "--timeout", "30"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    ended = {}
    feeder = threading.Thread(target=lambda: ended.update(
        zip(("out", "err"), proc.communicate(lines, timeout=LIMIT))), daemon=True)
    feeder.start()
    try:
        gate.wait_arrived(1, timeout=LIMIT)
        victim = int(gate.who[0])
        assert victim in pids, (victim, pids)
        os.kill(victim, signal.SIGKILL)
        gate.wait_arrived(2, timeout=LIMIT)   # GATED again, at another worker
        assert int(gate.who[1]) != victim
        gate.open()
        feeder.join(LIMIT)
    finally:
        gate.open()
        if proc.poll() is None and feeder.is_alive():
            proc.kill()
        feeder.join(LIMIT)
    assert proc.returncode == 0, ended.get("err")
    replies = ended["out"].splitlines()
    assert len(replies) == 10000
    assert sorted(replies) == sorted(b"LINE-%d" % i for i in range(10000))

    wait_for(lambda: len(_pids(log_path)) >= 3, 20, what="a restart in the log")
    log = log_path.read_text()
    assert re.search(r"worker \d+ \(pid %d\) killed by signal 9; restarting" % victim, log), log
    stats = wait_for(lambda: (lambda s: s["given_up"] >= 1 and len(s["workers"]) == 2 and s)(
        _stats(db)), 20, what="the dead worker given up, its successor registered")
    assert stats["received"] == stats["sent"] == 10001, stats

    out = pylm("stats", "--db", db)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert (shown["name"], shown["kind"], shown["running"]) == ("m", "Master", True)
    assert len(shown["workers"]) == 2
    assert all({"in_flight", "done", "last_seen_s"} <= set(w) for w in shown["workers"])
    assert shown["received"] == shown["sent"] == 10001
    assert (shown["errors"], shown["bad"], shown["queued"]) == (0, 0, 0)
    assert pylm("stats", "--db", db, "--server", "m").returncode == 0
    other = pylm("stats", "--db", db, "--server", "not-m")
    assert other.returncode == 1 and b"not-m" in other.stderr

    # the job command streams: lines go out before stdin ends
    proc = subprocess.Popen([sys.executable, "-m", "pylm", "job", "m.upper", "--db", db],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_env())
    try:
        for word in (b"one", b"two"):
            proc.stdin.write(word + b"\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == word.upper() + b"\n"
        proc.stdin.close()
        assert proc.wait(LIMIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_server_command_and_job_progress(tmp_path):
    db, pull, pub = tcp_addresses(3)
    server = start("server", "cli_services:UpperServer", "--name", "up", "--db", db,
                   "--pull", pull, "--pub", pub)
    try:
        wait_for(lambda: _try_stats_of(db, "up"), 30, what="the server")
        job = pylm("job", "up.upper", "--db", db, "--progress", input=b"a\nb\nc\n")
        assert job.returncode == 0, job.stderr
        assert sorted(job.stdout.splitlines()) == [b"A", b"B", b"C"]
        assert b"3msg" in job.stderr.replace(b" ", b"")     # tqdm's count
        stats = json.loads(pylm("stats", "--db", db).stdout)
        assert stats["kind"] == "Server" and stats["methods"]["upper"]["calls"] == 3
        # a remote error: exit 1, the error on stderr, nothing on stdout
        wrong = pylm("call", "up.nosuch", "x", "--db", db)
        assert (wrong.returncode, wrong.stdout) == (1, b""), wrong.stderr
        assert b"LookupError" in wrong.stderr and b"nosuch" in wrong.stderr
        # the console script installed with the project is the same command
        script = os.path.join(os.path.dirname(sys.executable), "pylm")
        if os.path.exists(script):
            done = subprocess.run([script, "call", "up.upper", "via script", "--db", db],
                                  capture_output=True, env=_env(), timeout=LIMIT)
            assert (done.returncode, done.stdout) == (0, b"VIA SCRIPT\n"), done.stderr
    finally:
        assert stop(server) == 0


def _try_stats_of(db, name):
    try:
        return _stats(db, name)
    except (TimeoutError, ValueError):
        return None


@pytest.mark.parametrize("args, says", [
    ((), b"required"),
    (("call",), b"required"),
    (("call", "nodot", "x", "--db", "tcp://127.0.0.1:1"), b"SERVER.METHOD"),
    (("job", "a.b"), b"--db"),
    (("worker", "no_such_module_here:W", "--db", "tcp://127.0.0.1:1"), b"cannot import"),
    (("worker", "cli_services:Nope", "--db", "tcp://127.0.0.1:1"), b"has no Nope"),
    (("worker", "cli_services:UpperServer", "--db", "tcp://127.0.0.1:1"),
     b"not a subclass of pylm.servers.Worker"),
    (("server", "cli_services", "--name", "a", "--db", "tcp://127.0.0.1:1",
      "--pull", "tcp://127.0.0.1:2", "--pub", "tcp://127.0.0.1:3"), b"MODULE:CLASS"),
    (("server", "cli_services:UpperServer", "--name", "a", "--db", "tcp://127.0.0.1:1",
      "--pull", "y", "--pub", "tcp://127.0.0.1:3"), b"--pull"),
    (("stats", "--db", "tcp://127.0.0.1:1", "--timeout", "soon"), b"--timeout"),
    (("stats", "--db", "tcp://127.0.0.1:1", "--timeout", "-1"), b"--timeout"),
    (("job", "a.b", "--db", "tcp://127.0.0.1:1", "--timeout", "0"), b"--timeout"),
    (("call", "a.b", "x", "--db", "tcp://127.0.0.1:1", "--timeout", "nan"), b"--timeout"),
    (("call", "a.b", "x", "--db", "127.0.0.1:5570"), b"--db"),
    (("stats", "--db", "tcp://127.0.0.1"), b"--db"),
    (("stats", "--db", "tcp://:1"), b"--db"),
    (("worker", "cli_services:Upper", "--db", "ipc://"), b"--db"),
    (("job", "a.b", "--db", "http://127.0.0.1:1"), b"--db"),
    (("frobnicate",), b"invalid choice"),
])
def test_bad_usage_exits_2(args, says):
    done = pylm(*args)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert says in done.stderr, done.stderr


def test_help_of_every_command():
    for command in ("server", "master", "worker", "call", "job", "stats", "keys"):
        done = pylm(command, "--help")
        assert done.returncode == 0 and b"usage: pylm " + command.encode() in done.stdout


@pytest.mark.parametrize("command", [("call", "a.b", "x"), ("stats",), ("job", "a.b")])
def test_unreachable_db_exits_1_within_the_timeout(command):
    db = tcp_addresses(1)[0]            # nothing listens there
    started = time.monotonic()
    done = pylm(*command, "--db", db, "--timeout", "1", input=b"x\n")
    took = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert b"TimeoutError" in done.stderr and db.encode() in done.stderr
    assert took < 1 + 5, took


def test_keys(tmp_path):
    done = pylm("keys", "node", "--dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path)) == ["node.key", "node.key_secret"]
    assert done.stdout.decode().split() == [str(tmp_path / "node.key"),
                                            str(tmp_path / "node.key_secret")]
    # never overwritten: a second call fails with a message
    again = pylm("keys", "node", "--dir", str(tmp_path))
    assert again.returncode != 0 and again.stderr


def test_worker_supervisor_stops_on_sigint(tmp_path):
    """SIGINT (Ctrl-C) stops the supervisor and its workers; exit 0."""
    log_path = tmp_path / "supervisor.log"
    db = tcp_addresses(1)[0]            # no master: workers wait for it
    with open(log_path, "w") as log:
        sup = start("worker", "cli_services:Upper", "--db", db, "--processes", "2",
                    stderr=log)
    try:
        pids = wait_for(lambda: len(_pids(log_path)) >= 2 and _pids(log_path), 20,
                        what="two workers started")
        os.kill(sup.pid, signal.SIGINT)
        assert sup.wait(30) == 0
        for pid in pids:
            wait_for(lambda: not _alive(pid), 10, what="worker %d gone" % pid)
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")
def test_workers_end_when_their_supervisor_is_sigkilled(tmp_path):
    """A supervisor killed with SIGKILL cannot stop its workers: the kernel
    sends them SIGTERM (PR_SET_PDEATHSIG), so none is left orphaned."""
    log_path = tmp_path / "supervisor.log"
    db, pull, pub, wpull, wpush = tcp_addresses(5)
    master = start("master", "--name", "m", "--db", db, "--pull", pull, "--pub", pub,
                   "--worker-pull", wpull, "--worker-push", wpush)
    with open(log_path, "w") as log:
        sup = start("worker", "cli_services:Upper", "--db", db, "--processes", "2",
                    stderr=log)
    pids = []
    try:
        pids = wait_for(lambda: len(_pids(log_path)) >= 2 and _pids(log_path), 20,
                        what="two workers started")
        wait_for(lambda: _try_stats(db) and len(_try_stats(db)["workers"]) == 2, 30,
                 what="two workers at the master")
        os.kill(sup.pid, signal.SIGKILL)
        assert sup.wait(20) == -signal.SIGKILL
        for pid in pids:
            wait_for(lambda: not _alive(pid), 20, what="worker %d gone" % pid)
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
        for pid in pids:                # orphans of a failed test
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        assert stop(master) == 0


def _alive(pid):
    """Whether process `pid` runs (a zombie, waiting to be reaped, does not)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:                     # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


# -- how `pylm job` ends while its stdin is still open ---------------------------
# A thread reads stdin; the interpreter must be able to exit while it waits
# (pylm once aborted there: "Fatal Python error: _enter_buffered_busy").

@pytest.fixture
def held_server():
    """`pylm server cli_services:UpperServer` named "up", whose `hold`
    waits at a Gate: (db address, the gate)."""
    gate = Gate()
    db, pull, pub = tcp_addresses(3)
    server = start("server", "cli_services:UpperServer", "--name", "up", "--db", db,
                   "--pull", pull, "--pub", pub,
                   env={"PYLM_TEST_GATE": "%s:%d" % gate.address})
    try:
        wait_for(lambda: _try_stats_of(db, "up"), 30, what="the server")
        yield db, gate
    finally:
        gate.close()
        assert stop(server) == 0


def _job(db, *args):
    """`pylm job ARGS --db DB` with pipes for stdin, stdout and stderr."""
    return subprocess.Popen([sys.executable, "-m", "pylm", "job", *args, "--db", db],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env())


def _send(proc, line):
    proc.stdin.write(line + b"\n")
    proc.stdin.flush()


def _end_of(proc):
    """Wait for `proc` with its stdin still open: (exit code, stderr)."""
    try:
        code = proc.wait(LIMIT)
        return code, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if not pipe.closed:
                try:
                    pipe.close()
                except BrokenPipeError:
                    pass


def _clean(err):
    return b"Fatal Python error" not in err and b"Traceback" not in err


def test_job_timeout_with_stdin_open_exits_1(held_server):
    db, gate = held_server
    proc = _job(db, "up.hold", "--timeout", "1")
    try:
        _send(proc, b"x")
        gate.wait_arrived(1)
    finally:
        code, err = _end_of(proc)
    assert code == 1 and b"TimeoutError" in err, (code, err)
    assert _clean(err), err


def test_unreachable_db_with_stdin_open_exits_1():
    proc = _job(tcp_addresses(1)[0], "a.b", "--timeout", "1")
    code, err = _end_of(proc)
    assert code == 1 and b"TimeoutError" in err, (code, err)
    assert _clean(err), err


@pytest.mark.parametrize("held", [True, False], ids=["in-a-call", "waiting-for-stdin"])
def test_job_sigint_exits_1_cleanly(held_server, held):
    """Ctrl-C stops a job: exit code 1 (the CLI's 'failed'), no traceback."""
    db, gate = held_server
    proc = _job(db, "up.hold" if held else "up.upper")
    try:
        if held:
            _send(proc, b"x")
            gate.wait_arrived(1)
        else:
            _send(proc, b"y")
            assert proc.stdout.readline() == b"Y\n"
        os.kill(proc.pid, signal.SIGINT)
    finally:
        code, err = _end_of(proc)
    assert code == 1, (code, err)
    assert _clean(err), err


def test_job_into_a_closed_stdout_exits_0(held_server):
    """`pylm job ... | head -1`: the reader goes away, the job ends with 0."""
    db, _ = held_server
    proc = _job(db, "up.upper")
    try:
        _send(proc, b"a")
        assert proc.stdout.readline() == b"A\n"
        proc.stdout.close()
        _send(proc, b"b")       # its reply meets the closed pipe
    finally:
        code, err = _end_of(proc)
    assert code == 0, (code, err)
    assert _clean(err), err
