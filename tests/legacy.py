"""pylm 0.14 beside us, for the interop tests (tests/test_interop.py).

pylm 0.14 is installed from PyPI into a venv of its own (never into .venv:
it would shadow this package, and it needs ``protobuf==3.20.3``), and its
programs run there as subprocesses, talking to ours over loopback TCP.

- :func:`ensure_legacy_venv`: build the venv once (``.venv-pylm014`` at the
  repo root, or ``$PYLM_LEGACY_VENV``), reuse it while it is valid; raises
  :class:`LegacyUnavailable` when pip cannot fetch the packages.  Also run by
  ``make legacy-venv`` (``python tests/legacy.py build [VENV]``).
- :data:`NODE_SCRIPT` / :class:`LegacyNode`: the pylm 0.14 program (written
  to the test's tmp_path at run time; addresses on its command line) and the
  handle of one run of it, stopped by its Popen handle with bounded waits.
- :func:`tcp_addresses`, :func:`wait_cache`, :class:`Served`: free loopback
  ports, readiness of a server (either kind) through its cache, and one of
  our servers or workers run in a thread.

Only the standard library is imported at module level, so that the build
runs with a bare ``python3``; pyzmq and pylm are imported where used.
"""

import contextlib
import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

__all__ = [
    "ROOT", "REQUIREMENTS", "LegacyUnavailable", "legacy_venv_path", "venv_python",
    "venv_is_valid", "ensure_legacy_venv", "NODE_SCRIPT", "LegacyNode", "tcp_ports",
    "tcp_addresses", "wait_cache", "Served",
]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = ROOT / ".venv-pylm014"

#: What the legacy venv holds: pylm 0.14.4 imports only with protobuf 3.20.x;
#: pyzmq and requests are its run-time dependencies (named so that a pip
#: resolver change cannot drop them).
REQUIREMENTS = ("pylm==0.14.4", "protobuf==3.20.3", "pyzmq", "requests")
STAMP_NAME = ".pylm014-installed"

#: Bounds of the build: per network operation, and for the whole pip run.
PIP_NET_TIMEOUT = 30
PIP_RUN_TIMEOUT = 420

# Checks run by the venv's own python: the right pylm, importable, from
# the venv (not from this repository) and with the protobuf it needs.
_CHECK = r"""
import importlib.metadata as md, os, sys
import google.protobuf, zmq
import pylm, pylm.servers, pylm.clients
from pylm.parts.messages_pb2 import PalmMessage
assert md.version("pylm") == "0.14.4", md.version("pylm")
assert google.protobuf.__version__ == "3.20.3", google.protobuf.__version__
assert os.path.realpath(pylm.__file__).startswith(os.path.realpath(sys.prefix)), pylm.__file__
print("ok", sys.version.split()[0], zmq.__version__)
"""


class LegacyUnavailable(RuntimeError):
    """pylm 0.14 cannot be installed here (no PyPI, no venv support)."""


def legacy_venv_path():
    return Path(os.environ.get("PYLM_LEGACY_VENV") or DEFAULT_VENV).resolve()


def venv_python(venv):
    return Path(venv) / "bin" / "python"


def _stamp_text():
    return "\n".join(REQUIREMENTS) + "\n"


def _clean_env():
    """The environment for the legacy interpreter: nothing that could put
    this repository (or the dev venv) on its path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONNOUSERSITE"] = "1"
    return env


def venv_is_valid(venv):
    """The venv exists, was completed by us for REQUIREMENTS, and its pylm
    is 0.14.4 from the venv itself."""
    venv = Path(venv)
    python = venv_python(venv)
    try:
        if (venv / STAMP_NAME).read_text() != _stamp_text():
            return False
    except OSError:
        return False
    if not python.exists():
        return False
    try:
        out = subprocess.run([str(python), "-I", "-c", _CHECK], capture_output=True,
                             text=True, timeout=60, cwd=tempfile.gettempdir())
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.startswith("ok")


@contextlib.contextmanager
def _build_lock(venv):
    """One builder at a time per venv path (pytest-xdist workers, make and
    pytest running together)."""
    digest = hashlib.sha1(str(venv).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / ("pylm014-venv-%s.lock" % digest)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tail(text, lines=12):
    return "\n".join(text.strip().splitlines()[-lines:])


def _pip_errors(text):
    """pip's ERROR lines (else its last lines): the reason of a failure."""
    errors = [line for line in text.splitlines() if line.startswith("ERROR:")]
    return "\n".join(errors[-3:]) if errors else _tail(text, 4)


def ensure_legacy_venv(venv=None, base_python=None, log=None):
    """The python of a venv with pylm 0.14.4 in it, built when missing or
    invalid.  Raises LegacyUnavailable when it cannot be built (pip could
    not fetch from PyPI, or venv is unusable)."""
    venv = Path(venv).resolve() if venv else legacy_venv_path()
    base_python = base_python or getattr(sys, "_base_executable", None) or sys.executable
    log = log or (lambda msg: None)
    with _build_lock(venv):
        if venv_is_valid(venv):
            return venv_python(venv)
        log("building %s (%s)" % (venv, " ".join(REQUIREMENTS)))
        started = time.monotonic()
        shutil.rmtree(venv, ignore_errors=True)
        try:
            subprocess.run([base_python, "-m", "venv", str(venv)], check=True,
                           capture_output=True, text=True, timeout=180, env=_clean_env())
        except (OSError, subprocess.SubprocessError) as exc:
            shutil.rmtree(venv, ignore_errors=True)
            detail = getattr(exc, "stderr", "") or ""
            raise LegacyUnavailable("cannot create a venv with %s: %s %s"
                                    % (base_python, exc, _tail(detail))) from None
        python = venv_python(venv)
        cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check",
               "--no-input", "--timeout", str(PIP_NET_TIMEOUT), "--retries", "2",
               *REQUIREMENTS]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True,
                                 timeout=PIP_RUN_TIMEOUT, env=_clean_env(),
                                 cwd=tempfile.gettempdir())
        except subprocess.TimeoutExpired:
            shutil.rmtree(venv, ignore_errors=True)
            raise LegacyUnavailable("pip install %s did not finish in %d s (PyPI unreachable?)"
                                    % (" ".join(REQUIREMENTS), PIP_RUN_TIMEOUT)) from None
        if out.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise LegacyUnavailable("pip could not install %s (PyPI unreachable?):\n%s"
                                    % (" ".join(REQUIREMENTS), _pip_errors(out.stderr or out.stdout)))
        (venv / STAMP_NAME).write_text(_stamp_text())
        if not venv_is_valid(venv):
            check = subprocess.run([str(python), "-I", "-c", _CHECK], capture_output=True,
                                   text=True, timeout=60)
            shutil.rmtree(venv, ignore_errors=True)
            raise RuntimeError("pylm 0.14 installed but does not import:\n%s"
                               % _tail(check.stderr))
        log("built %s in %.1f s" % (venv, time.monotonic() - started))
        return python


# ---------------------------------------------------------------------------
# the pylm 0.14 program

#: Seconds after which a legacy program exits on its own (faulthandler),
#: whatever happens to the test process.
NODE_LIFETIME = 120

NODE_SCRIPT = r'''
"""A pylm 0.14 program for tests/test_interop.py (run in the legacy venv).

    node.py server NAME DB PULL PUB [--pipelined]
    node.py master NAME DB PULL PUB WORKER_PULL WORKER_PUSH
    node.py worker NAME DB
    node.py pipeline NAME DB SUB PUB PREVIOUS
    node.py client SERVER DB --function F [--evals N] [--job N] [--push A] [--sub A]
    node.py evals SERVER DB --function F --evals N [--rcvtimeo MS]
    node.py cache SERVER DB OP... (OP: set:KEY:VALUE, delete:KEY, get:KEY)
    node.py encode IN.json OUT.json | decode IN.json OUT.json

Methods tag what they return with who ran them: ``old-<role>:<payload>``.
"""
import argparse, faulthandler, importlib.metadata, json, os, sys, time

faulthandler.dump_traceback_later(int(os.environ.get("NODE_LIFETIME", "120")), exit=True)

import zmq
import pylm
from pylm.parts.messages_pb2 import PalmMessage

assert importlib.metadata.version("pylm") == "0.14.4"
assert os.path.realpath(pylm.__file__).startswith(os.path.realpath(sys.prefix)), pylm.__file__


def tagged(tag):
    def method(self, payload):
        return tag + b":" + payload
    return method


def ready():
    print("READY", flush=True)


def cmd_server(a):
    from pylm.servers import Server
    cls = type("OldServer", (Server,), {"foo": tagged(b"old-server")})
    server = cls(a.name, a.args[0], a.args[1], a.args[2], pipelined=a.pipelined)
    ready()
    server.start()


def cmd_master(a):
    from pylm.servers import Master
    master = Master(a.name, *a.args[1:5], a.args[0], pipelined=a.pipelined)
    ready()
    master.start()


def cmd_worker(a):
    from pylm.servers import Worker
    cls = type("OldWorker", (Worker,), {"foo": tagged(b"old-worker")})
    worker = cls(a.name, a.args[0])
    ready()
    worker.start()


def cmd_pipeline(a):
    from pylm.servers import Pipeline
    cls = type("OldPipeline", (Pipeline,), {"bar": tagged(b"old-pipeline")})
    pipe = cls(a.name, a.args[0], a.args[1], a.args[2], a.args[3], to_client=True)
    ready()
    pipe.start()


def _retried(call, tries):
    """call(), again (up to `tries` in all) when a reply never came.

    Only for replies a pylm 0.14 publisher sends (the last stage is pylm
    0.14's): it cannot hold a reply for a subscription still on its way,
    so such a reply may be lost (pylm 0.14's protocol, not ours).  Our
    servers hold it (pylm_core/subscriptions.pyx): calls to them are made
    once.  A call made again is said so on stderr."""
    for attempt in range(1, tries + 1):
        try:
            return call()
        except zmq.Again:
            if attempt == tries:
                raise
            print("no reply within RCVTIMEO; calling again (try %d)" % (attempt + 1),
                  file=sys.stderr, flush=True)


def cmd_client(a):
    from pylm.clients import Client
    from pylm.parts.core import zmq_context
    # pylm 0.14 user code bounds its waits this way (API.md, Clients)
    zmq_context.setsockopt(zmq.RCVTIMEO, a.rcvtimeo)
    client = Client(a.name, a.args[0], push_address=a.push, sub_address=a.sub)
    out = {"eval": [], "job": []}
    for i in range(a.evals):
        out["eval"].append(_retried(lambda: client.eval(a.function, b"eval-%d" % i), a.tries)
                           .decode("latin-1"))
    if a.job:
        out["job"] = _retried(lambda: [r.decode("latin-1") for r in client.job(
            a.function, (b"job-%d" % i for i in range(a.job)), messages=a.job)], a.tries)
    out["set"] = client.set(b"legacy-value", "legacy-key")
    out["get"] = client.get("legacy-key").decode("latin-1")
    client.clean()
    print("RESULT " + json.dumps(out), flush=True)


def cmd_evals(a):
    """--evals calls of eval on one client, each made once, stopping at the
    first whose reply does not come within --rcvtimeo ms: prints
    ``ANSWERED k`` (k replies, each checked)."""
    from pylm.clients import Client
    from pylm.parts.core import zmq_context
    zmq_context.setsockopt(zmq.RCVTIMEO, a.rcvtimeo)
    client = Client(a.name, a.args[0], push_address=a.push, sub_address=a.sub)
    answered = 0
    for i in range(a.evals):
        try:
            reply = client.eval(a.function, b"eval-%d" % i)
        except zmq.Again:
            break
        assert reply.endswith(b":eval-%d" % i), reply
        answered += 1
    print("ANSWERED %d" % answered, flush=True)
    # the client's sockets are not closed: pylm 0.14 gives no way to, and
    # the process ends here


def cmd_cache(a):
    """pylm 0.14's Client.set/delete/get, one OP after another; prints
    RESULT [reply of each OP, as str]."""
    from pylm.clients import Client
    from pylm.parts.core import zmq_context
    zmq_context.setsockopt(zmq.RCVTIMEO, a.rcvtimeo)
    client = Client(a.name, a.args[0])
    out = []
    for op in a.args[1:]:
        verb, _, rest = op.partition(":")
        if verb == "set":
            key, _, value = rest.partition(":")
            out.append(client.set(value.encode(), key))
        elif verb == "delete":
            out.append(client.delete(rest))
        else:
            out.append(client.get(rest).decode("latin-1"))
    client.clean()
    print("RESULT " + json.dumps(out), flush=True)


FIELDS = ("pipeline", "client", "stage", "function", "cache", "payload")


def cmd_encode(a):
    """Cases (field dicts, payload in hex) -> protobuf bytes (hex)."""
    out = []
    for case in json.load(open(a.name)):
        msg = PalmMessage()
        for field in FIELDS:
            if field in case:
                value = case[field]
                setattr(msg, field, bytes.fromhex(value) if field == "payload" else value)
        out.append(msg.SerializeToString().hex())
    json.dump(out, open(a.args[0], "w"))


def cmd_decode(a):
    """Wire bytes (hex) -> field dicts, plus protobuf's re-encoding."""
    out = []
    for blob in json.load(open(a.name)):
        msg = PalmMessage()
        msg.ParseFromString(bytes.fromhex(blob))
        fields = {f: getattr(msg, f) for f in FIELDS}
        fields["payload"] = fields["payload"].hex()
        fields["reencoded"] = msg.SerializeToString().hex()
        out.append(fields)
    json.dump(out, open(a.args[0], "w"))


p = argparse.ArgumentParser()
p.add_argument("command")
p.add_argument("name")
p.add_argument("args", nargs="*")
p.add_argument("--pipelined", action="store_true")
p.add_argument("--function", default="")
p.add_argument("--evals", type=int, default=0)
p.add_argument("--job", type=int, default=0)
p.add_argument("--push")
p.add_argument("--sub")
p.add_argument("--rcvtimeo", type=int, default=10000)
p.add_argument("--tries", type=int, default=1,
               help="client: calls made again when no reply came (pylm 0.14 publishers)")
a = p.parse_args()
globals()["cmd_" + a.command](a)
'''


class LegacyNode:
    """One run of NODE_SCRIPT under the legacy python, stdout and stderr
    to files in `workdir`.  Use as a context manager (or call stop()):
    the process is always terminated, then killed, by its Popen handle,
    with bounded waits."""

    def __init__(self, python, workdir, label, *args, lifetime=NODE_LIFETIME):
        self.label = label
        workdir = Path(workdir)
        script = workdir / "pylm014_node.py"
        if not script.exists():
            script.write_text(NODE_SCRIPT)
        self.out_path = workdir / ("%s.out" % label)
        self.err_path = workdir / ("%s.err" % label)
        env = _clean_env()
        env["NODE_LIFETIME"] = str(lifetime)
        self.argv = [str(python), "-u", str(script), *map(str, args)]
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=err, cwd=str(workdir), env=env)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def stdout(self):
        return self.out_path.read_text(errors="replace")

    def stderr(self):
        return self.err_path.read_text(errors="replace")

    def logs(self):
        return ("--- %s: %s (rc=%s)\n--- stdout:\n%s\n--- stderr (tail):\n%s"
                % (self.label, " ".join(self.argv[2:]), self.popen.returncode,
                   self.stdout()[-3000:], _tail(self.stderr(), 40)))

    def wait_line(self, prefix, timeout=20.0):
        """The first stdout line starting with prefix; AssertionError (with
        the logs) when the process exits or the time runs out first."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.stdout().splitlines():
                if line.startswith(prefix):
                    return line
            if self.popen.poll() is not None:
                # it may have printed the line just before exiting
                for line in self.stdout().splitlines():
                    if line.startswith(prefix):
                        return line
                raise AssertionError("%s exited before %r\n%s" % (self.label, prefix, self.logs()))
            if time.monotonic() > deadline:
                raise AssertionError("%s: no %r within %s s\n%s"
                                     % (self.label, prefix, timeout, self.logs()))
            time.sleep(0.02)

    def wait_exit(self, timeout=30.0):
        """Wait for the process to end; its return code.  AssertionError when
        it is still running after `timeout` (it is then killed)."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError("%s still running after %s s\n%s"
                                 % (self.label, timeout, self.logs())) from None

    def stop(self, timeout=5.0):
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        return self.popen.returncode


# ---------------------------------------------------------------------------
# addresses, readiness, our side

def tcp_ports(n, host="127.0.0.1"):
    """pylm._testing.tcp_ports (imported here, when used: building the venv
    runs with a bare python3, without pylm)."""
    from pylm._testing import tcp_ports as ports
    return ports(n, host)


def tcp_addresses(n, host="127.0.0.1"):
    """pylm._testing.tcp_addresses (see tcp_ports)."""
    from pylm._testing import tcp_addresses as addresses
    return addresses(n, host)


def wait_cache(db_address, name, timeout=20.0, process=None):
    """Wait until the cache at db_address answers ``get name`` with `name`
    (either kind of server).  Plain pyzmq and our envelope, no Client."""
    import zmq
    from pylm.parts.messages_pb2 import PalmMessage

    request = PalmMessage(function="%s.get" % name, payload=b"name").SerializeToString()
    ctx = zmq.Context.instance()
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if process is not None and process.popen.poll() is not None:
            raise AssertionError("%s exited while starting\n%s" % (process.label, process.logs()))
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(db_address)
            sock.send(request)
            if sock.poll(300, zmq.POLLIN):
                last = sock.recv()
                if last == name.encode():
                    return
        finally:
            sock.close(linger=0)
        time.sleep(0.05)
    logs = process.logs() if process is not None else ""
    raise AssertionError("no cache with name %r at %s within %s s (last answer %r)\n%s"
                         % (name, db_address, timeout, last, logs))


class Served:
    """One of our servers or workers, its start() run in a thread.

    As a context manager: on exit stop() is called and the thread joined
    (bounded); a start() that raised, or a thread that does not stop, fails
    the test."""

    def __init__(self, server, *start_args):
        self.server = server
        self.error = None

        def run():
            try:
                server.start(*start_args)
            except BaseException as exc:  # reported in __exit__
                self.error = exc

        self.thread = threading.Thread(target=run, name="served-%s" % server.name,
                                       daemon=True)
        self.thread.start()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.server.stop()
        self.thread.join(10)
        if exc_type is None:
            assert not self.thread.is_alive(), "%s did not stop in 10 s" % self.server.name
            if self.error is not None:
                raise AssertionError("%s.start() raised %r"
                                     % (self.server.name, self.error)) from self.error
        return False


# ---------------------------------------------------------------------------

def main(argv):
    if len(argv) < 2 or argv[1] != "build":
        print("usage: python tests/legacy.py build [VENV]", file=sys.stderr)
        return 2
    venv = argv[2] if len(argv) > 2 else None
    try:
        python = ensure_legacy_venv(venv, log=lambda m: print(m, file=sys.stderr))
    except LegacyUnavailable as exc:
        print("legacy venv not built: %s" % exc, file=sys.stderr)
        return 1
    print(python)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
