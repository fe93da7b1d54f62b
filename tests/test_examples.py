"""Every program in examples/ run as users run it: ``python examples/X.py``
in a subprocess of its own session, with real sockets and processes.

Each run is bounded: on timeout the example is killed through its Popen
handle (and whatever it left in its process group after it).  After each
run no process of the example may be left.
"""

import importlib.util
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
_spec = importlib.util.spec_from_file_location("examples_helpers", EXAMPLES / "_helpers.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

#: Seconds an example gets to finish.
RUN_TIMEOUT = 60
#: Seconds the processes of an example get to disappear after it exited.
GONE_TIMEOUT = 5


# -- processes -------------------------------------------------------------------

def _stat(pid):
    """(state, process group) of pid, or None when there is no such process."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(")") + 2:].split()
    return fields[0], int(fields[2])


def _alive(pid):
    """True while pid runs (a zombie has exited: it is not alive)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _group(pgid):
    """PIDs of the live processes in process group pgid."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[1] == pgid and stat[0] != "Z":
                pids.append(int(entry))
    return pids


def _wait_gone(pids, timeout=GONE_TIMEOUT):
    """The pids still alive after up to `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in pids if _alive(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _kill_group(proc):
    """Kill the example and whatever it left in its process group."""
    proc.kill()
    proc.wait(10)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start(name, *args):
    """``python examples/<name>.py args...`` in a session of its own."""
    return subprocess.Popen(
        [sys.executable, "-u", str(EXAMPLES / (name + ".py")), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, cwd=str(EXAMPLES.parent))


def finish(proc, timeout=RUN_TIMEOUT):
    """Wait for the example (killing it after `timeout` s); returns
    (returncode, stdout, stderr) once no process of its group is left."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate(timeout=10)
        pytest.fail("%s did not finish within %s s\nstdout:\n%s\nstderr:\n%s"
                    % (proc.args[2], timeout, out, err))
    deadline = time.monotonic() + GONE_TIMEOUT
    while _group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = _group(proc.pid)
    if left:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("%s left processes behind: %s" % (proc.args[2], left))
    return proc.returncode, out, err


def run(name, *args, timeout=RUN_TIMEOUT):
    """Run an example to its end; it must exit 0 without a traceback.
    Returns its stdout lines."""
    code, out, err = finish(start(name, *args), timeout)
    assert code == 0, "%s exited with %s\nstdout:\n%s\nstderr:\n%s" % (name, code, out, err)
    assert "Traceback" not in err, err
    return out.splitlines()


# -- the examples ------------------------------------------------------------------

# (example, lines its output must contain, its last line)
EXPECTED = [
    ("single", ["b'you sent me a message'", "job: [b'ALPHA', b'BETA', b'GAMMA']"],
     "done: single, 3 job replies"),
    ("arrays", ["one reply: float64 (65537,), 524296 bytes"],
     "done: arrays, 32 arrays of 1 MiB checked"),
    ("parallel", [re.compile(r"b'worker[12] processed a single message'"),
                  re.compile(r"replies per worker: \{'worker1': \d+(, 'worker2': \d+)?\}"
                             r"|replies per worker: \{'worker2': \d+\}")],
     "done: parallel, 500 replies"),
    ("aio_client", ["b'HELLO'", "concurrent: 1000 b'CALL 0' b'CALL 999'", "job: 5000 replies",
                    "timed out", "cancelled: True calls pending: 0"],
     "done: aio_client, 5000 job replies"),
    ("cache", [re.compile(r"stored under [0-9a-f-]{36}"), "get: b'Guillem'",
               "b'hello, Guillem'", "b'hello, Ada'", "delete: my-key",
               "after delete: b''", "b'hello, stranger'"],
     "done: cache"),
    ("scatter", ["replies: BROWN! FOX! QUICK! THE!"],
     "done: scatter, 4 replies for one call"),
    ("gather", ["b'9 (total so far 9)'", re.compile(r"b'100 \(total so far \d+\)'")],
     "done: gather, total 394"),
    ("mux", ["b'a-1'", "replies: b-1 b-2 b-3 b-4 b-5"],
     "done: mux, 5 replies for one call"),
    ("pipeline", ["b'you sent me a message, and the pipeline saw it'"]
     + ["b'you sent me message %d, and the pipeline saw it'" % i for i in range(3)],
     "done: pipeline, 3 replies"),
    ("tee", ["client got: b'you sent me message %d, and I pipelined it'" % i for i in range(5)]
     + ["the archive kept: [%s]" % ", ".join("b'you sent me message %d'" % i for i in range(5))],
     "done: tee, 5 replies, 5 archived"),
    ("stream_even_odd", ["b'%d is %s'" % (i, ("even", "odd")[i % 2]) for i in range(10)],
     "done: stream_even_odd, 5 even and 5 odd replies"),
    ("stream_sink", ["b'sink got: %d is %s'" % (i, ("even", "odd")[i % 2]) for i in range(10)],
     "done: stream_sink, 10 replies"),
    ("server_hub", [re.compile(r"b'worker[12] processed you sent me a message'"),
                    re.compile(r"replies per worker: \{.*\}")],
     "done: server_hub, 100 replies"),
    ("master_pipeline", ["b'pipelined A MESSAGE'"]
     + ["b'pipelined MESSAGE %d'" % i for i in range(10)],
     "done: master_pipeline, 10 replies"),
]


def test_the_examples_are_there():
    for name, _, _ in EXPECTED:
        assert (EXAMPLES / (name + ".py")).is_file(), name


@pytest.mark.parametrize("name, lines, last", EXPECTED, ids=[e[0] for e in EXPECTED])
def test_example(name, lines, last):
    out = run(name)
    assert out, "%s printed nothing" % name
    assert out[-1] == last, out
    for line in lines:
        if isinstance(line, str):
            assert line in out, (line, out)
        else:
            assert any(line.fullmatch(o) for o in out), (line.pattern, out)


def test_an_example_takes_its_ports_from_the_command_line():
    ports = helpers.free_ports(3)
    out = run("single", *ports)
    assert out[-1] == "done: single, 3 job replies"


# -- the demo ------------------------------------------------------------------------

THROUGHPUT = re.compile(r"(\d+) messages in [\d.]+ s with (\d+) worker\(s\): (\d+) messages/s")


def test_demo_reports_messages_per_second():
    code, out, err = finish(start("demo", "--messages", 5000))
    assert code == 0, (out, err)
    assert "Traceback" not in err, err
    match = THROUGHPUT.fullmatch(out.splitlines()[-1])
    assert match, out
    assert match.group(1) == "5000" and match.group(2) == "2"
    assert int(match.group(3)) > 0
    assert "100%" in err  # the progress bar (tqdm, or the plain fallback) got to the end


def test_demo_with_three_workers_without_progress_bar():
    code, out, err = finish(start("demo", "--messages", 3000, "--workers", 3, "--no-progress"))
    assert code == 0, (out, err)
    match = THROUGHPUT.fullmatch(out.splitlines()[-1])
    assert match and match.group(1) == "3000" and match.group(2) == "3", out
    assert "%" not in err, err


def _demo_pids(proc):
    """The PIDs the demo prints with --print-pids (its first line)."""
    line = proc.stdout.readline()
    match = re.fullmatch(r"pids: demo=(\d+) master=(\d+) workers=([\d,]+)\n", line)
    assert match, line
    assert int(match.group(1)) == proc.pid
    return [int(match.group(2))] + [int(p) for p in match.group(3).split(",")]


PROGRESS = re.compile(r"([\d.]+)([kMG]?)/200M")


def _read_stderr_until(proc, predicate, timeout=30.0):
    """Read the example's stderr (its raw pipe, nothing read from it yet)
    until predicate(text so far) holds; returns that text, for the caller
    to put before what finish() reads later.  AssertionError after
    `timeout` s or at end of file."""
    fd = proc.stderr.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while not predicate(data.decode(errors="replace")):
        left = deadline - time.monotonic()
        assert left > 0, "not seen within %s s on stderr:\n%s" % (timeout, data[-2000:])
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, "stderr ended:\n%s" % data[-2000:]
            data += chunk
    return data.decode(errors="replace")


def _progress_seen(text):
    """True once the demo's progress bar shows replies (tqdm: "1.2k/200M")."""
    return any(float(n) > 0 for n, _ in PROGRESS.findall(text))


@pytest.mark.parametrize("when", ["starting", "mid-run"])
def test_ctrl_c_stops_every_process_of_the_demo(when):
    # enough messages to be still running when the signal comes
    proc = start("demo", "--messages", 200_000_000, "--print-pids")
    early_err = ""
    try:
        children = _demo_pids(proc)
        assert len(children) == 3
        if when == "mid-run":
            line = proc.stdout.readline()
            assert "sending 200000000 messages" in line, line
            # replies are coming back: the job runs
            early_err = _read_stderr_until(proc, _progress_seen)
        # a Ctrl-C at a terminal: SIGINT to the whole foreground process group
        os.killpg(proc.pid, signal.SIGINT)
        code, out, err = finish(proc, timeout=30)
        err = early_err + err
    finally:
        if proc.returncode is None:
            _kill_group(proc)
    assert code in (0, 130), (code, out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "killing" not in err, err    # each child stopped on its own
    assert "messages/s" not in out   # interrupted, not finished
    assert _wait_gone(children) == []
    assert _group(proc.pid) == []
