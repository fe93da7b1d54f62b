"""The examples of the low-level API, each run as a program (as a reader
would run it), with a bound on its run time; the test checks what it
printed."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RUN_TIMEOUT = 60


def run_example(name, *args):
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=EXAMPLES,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, "%s exited %d:\n%s\n%s" % (name, proc.returncode,
                                                           proc.stdout, proc.stderr)
    return proc.stdout


def test_parts_master_example():
    out = run_example("parts_master.py")
    assert re.search(r"b'worker[12] processed a single message'", out), out
    # both workers got a share once both were connected
    assert re.search(r"replies per worker: \{'worker1': \d+, 'worker2': \d+\}", out), out
    assert "done: parts_master, 200 replies" in out


def test_http_worker_example():
    out = run_example("http_worker.py")
    assert "b'a message processed online'" in out
    assert "20 replies, the last: call 9 processed online" in out
    assert "done: http_worker" in out


def test_http_gateway_example():
    out = run_example("http_gateway.py")
    assert "GET /function -> 200 b'acknowledged (no body)'" in out
    assert "POST /function -> 200 b'acknowledged hello'" in out
    assert re.search(r"GET /nothing -> 404 b.*no method '_\.nothing'", out), out
    assert "done: http_gateway" in out


@pytest.mark.parametrize("name", ["parts_master.py", "http_worker.py", "http_gateway.py"])
def test_example_has_a_docstring_that_says_how_to_run_it(name):
    text = (EXAMPLES / name).read_text()
    assert text.startswith('"""') and "python examples/%s" % name in text
