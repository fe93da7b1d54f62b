"""pylm 0.14.4, the system this project replaces, run from PyPI in a venv
of its own (tests/legacy.py builds it, and PYLM_LEGACY_VENV points at an
existing one).  Its interpreter runs pylm014_driver.py: servers as
background processes, and one client process that takes commands on stdin.

pylm 0.14's own Client loses replies (it subscribes after it sends): a
repetition ends when no reply came for JOB_TIMEOUT_MS (EVAL_TIMEOUT_MS for
an eval), and the missing replies are counted as lost.
"""

import json
import queue
import subprocess
import threading
import time
from pathlib import Path

import legacy
from pylm._testing import tcp_addresses

from .measure import log
from .systems import START_TIMEOUT

#: The program the pylm 0.14.4 interpreter runs.
DRIVER = Path(__file__).resolve().with_name("pylm014_driver.py")
#: Milliseconds without a reply after which a repetition ends.
JOB_TIMEOUT_MS = 500
EVAL_TIMEOUT_MS = 200
#: Messages of a repetition at most, and calls of an eval repetition, by --quick.
MAX_MESSAGES = {False: 3000, True: 1500}
EVAL_CALLS = {False: 20, True: 10}
#: Seconds to wait for the client's answer to one command.
COMMAND_TIMEOUT = 60.0


class Legacy:
    """pylm 0.14.4 programs (pylm014_driver.py) run by the legacy venv's
    python: servers as background processes (``node``), and one client
    process that takes commands on stdin (``call``).  Every process is
    stopped by its Popen handle.  When the venv cannot be had, `available`
    is False and `reason` says why."""

    def __init__(self, workdir, enabled=True):
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
            self.python = str(legacy.ensure_legacy_venv(log=log))
        except legacy.LegacyUnavailable as exc:
            self.reason = "pylm 0.14.4 venv could not be built: %s" % exc
        except Exception as exc:
            self.reason = "pylm 0.14.4 venv failed: %s: %s" % (type(exc).__name__, exc)
        if self.python:
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

    def _argv(self, *args):
        # -I: neither the driver's folder (this package) nor anything from
        # the environment goes on the legacy interpreter's path; -B: it
        # writes no bytecode (PYTHONDONTWRITEBYTECODE, which -I ignores)
        return [self.python, "-I", "-B", "-u", str(DRIVER), *map(str, args)]

    def node(self, label, *args):
        """Start the driver with `args` (a server role) in the background,
        its output to <workdir>/<label>.log."""
        out = open(self.workdir / ("%s.log" % label), "wb")
        proc = subprocess.Popen(self._argv(*args), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=str(self.workdir),
                                env=legacy._clean_env())
        out.close()
        proc.label = label
        self.nodes.append(proc)
        return proc

    def wait_cache(self, address, name, proc):
        """Wait until `proc` printed READY and, given an `address`, until
        the cache there answers with `name`."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            log_text = (self.workdir / ("%s.log" % proc.label)).read_text(errors="replace")
            if "READY" in log_text:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("pylm 0.14 %s did not start:\n%s"
                                   % (proc.label, log_text[-2000:]))
            time.sleep(0.02)
        if address:
            legacy.wait_cache(address, name, timeout=START_TIMEOUT)

    def _start_client(self):
        if self._client_log is None:
            self._client_log = open(self.workdir / "client.log", "ab")
        self.client = subprocess.Popen(
            self._argv("client"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._client_log, cwd=str(self.workdir), env=legacy._clean_env(),
            text=True, bufsize=1)
        self._lines = queue.Queue()

        def reader(stream, lines):
            for line in stream:
                if line.startswith("RESULT "):
                    lines.put(json.loads(line[7:]))
            lines.put(None)

        threading.Thread(target=reader, args=(self.client.stdout, self._lines),
                         daemon=True).start()

    def call(self, cmd, timeout=COMMAND_TIMEOUT):
        """Send one command to the client process (started, or started
        again, when needed); its result."""
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
        """Stop every server process (last started first)."""
        for proc in reversed(self.nodes):
            self._stop(proc)
        self.nodes.clear()

    def close(self):
        """Stop the client and every server process."""
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
    """pylm 0.14.4 Master + N Workers, driven by its own Client (the job
    system interface of systems.py)."""

    def __init__(self, lg):
        self.lg = lg
        self.db, pull, pub, wpull, wpush = tcp_addresses(5)
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
                raise TimeoutError("pylm 0.14 workers %s of %s answered"
                                   % (sorted(seen), self.names))
            seen.update(self.lg.call(dict(op="job", server="master", db=self.db,
                                          function="master.who", n=300, size=8, collect=True,
                                          timeout_ms=JOB_TIMEOUT_MS))["distinct"])

    def run(self, n, payloads):
        r = self.lg.call(dict(op="job", server="master", db=self.db, function="master.foo",
                              n=n, size=len(payloads[0]), timeout_ms=JOB_TIMEOUT_MS))
        return {k: r[k] for k in ("seconds", "sent", "received")}
