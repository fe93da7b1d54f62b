"""The ``pylm`` command (also ``python -m pylm``): run servers, masters and
supervised workers, call servers, stream jobs, read live statistics and
make keys, from a shell, systemd unit or container (shared/API.md,
"Operations").

Exit codes: 0 success; 1 a remote error or a timeout (the message on
stderr), or Ctrl-C (SIGINT) during a call, job or stats (the three codes of
API.md, rather than the shell's 130); 2 bad usage (argparse's convention: a
message and the usage, also for a malformed address or timeout).  ``pylm
job`` whose stdout is closed by its reader (``| head``) exits 0, whether or
not its stdin is still open.  A server, master or worker supervisor stopped
by SIGTERM or SIGINT exits 0.

Every option shared by several commands is built once, by the ``_add_*``
functions below; the security options are handed to the classes as
``secret_key=``, ``server_key=``, ``authorized_keys=`` only when given, so
that a command without them builds exactly the objects pylm 0.14 code
builds.
"""

import argparse
import importlib
import json
import logging
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["main", "build_parser"]

logger = logging.getLogger("pylm.cli")

#: Exit codes.
OK, FAILED, USAGE = 0, 1, 2
#: Seconds for configuration fetches and calls unless --timeout says.
DEFAULT_TIMEOUT = 10.0
#: Lines of stdin read ahead of the replies by ``pylm job``.
JOB_AHEAD = 4000
#: A supervised worker restarted after dying waits this long first, doubled
#: for each death in a row, up to BACKOFF_MAX; a worker that lived
#: BACKOFF_RESET seconds starts again from BACKOFF_MIN.
BACKOFF_MIN, BACKOFF_MAX, BACKOFF_RESET = 0.5, 30.0, 30.0
#: Seconds supervised workers get to stop after SIGTERM before SIGKILL.
STOP_GRACE = 10.0


class Usage(Exception):
    """Bad usage found after parsing (exit code 2)."""


# -- options shared by several commands -------------------------------------

def _add_logging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", default="WARNING", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                        help="level of the log on stderr (default WARNING)")


def zmq_address(text: str) -> str:
    """An argparse type: a ZeroMQ address, ``tcp://HOST:PORT``,
    ``ipc://PATH`` or ``inproc://NAME`` (anything else exits 2 here rather
    than failing later with exit code 1, as a remote failure would)."""
    scheme, sep, rest = text.partition("://")
    if sep and scheme in ("ipc", "inproc") and rest:
        return text
    if sep and scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if colon and host and port.isdigit() and 0 < int(port) < 65536:
            return text
    raise argparse.ArgumentTypeError(
        "%r is not a ZeroMQ address: tcp://HOST:PORT, ipc://PATH or inproc://NAME" % text)


def positive_seconds(text: str) -> float:
    """An argparse type: a number of seconds greater than 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError("%r is not a number of seconds greater than 0" % text)
    return value


def _add_db(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--db", required=required, metavar="ADDRESS", type=zmq_address,
                        help="the server's cache address (db_address), e.g. tcp://127.0.0.1:5570")


def _add_timeout(parser: argparse.ArgumentParser, default: Optional[float], what: str) -> None:
    parser.add_argument("--timeout", type=positive_seconds, default=default, metavar="S",
                        help="seconds to wait for %s" % what)


def _add_security(parser: argparse.ArgumentParser, serves: bool) -> None:
    """CURVE options: a server takes all three, a client/worker the first two."""
    parser.add_argument("--secret-key", metavar="FILE",
                        help="this process's .key_secret file (CURVE)")
    parser.add_argument("--server-key", metavar="FILE",
                        help="public .key file of the server this process connects to")
    if serves:
        parser.add_argument("--authorized-keys", metavar="DIR",
                            help="directory of the public .key files of accepted peers")


def _security_kwargs(args: argparse.Namespace) -> Dict[str, str]:
    """The security keywords the user gave (none: pylm 0.14's objects)."""
    return {name: getattr(args, name) for name in ("secret_key", "server_key", "authorized_keys")
            if getattr(args, name, None) is not None}


def _class_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("target", metavar="MODULE:CLASS",
                        help="the %s class to run, e.g. mypackage.services:Calculator" % what)


def _add_metrics(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", metavar="[HOST:]PORT", default=None,
                        help="serve Prometheus metrics at http://HOST:PORT/metrics "
                             "(needs pylm[metrics]; HOST defaults to 127.0.0.1: give "
                             "0.0.0.0:PORT for every interface)")


def _metrics_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    if args.metrics_port is None:
        return {}
    value = args.metrics_port
    return {"metrics_port": int(value) if value.isdigit() else value}


def _function_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("function", metavar="SERVER.METHOD",
                        help="what to call; SERVER is the server's name")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every command."""
    parser = argparse.ArgumentParser(
        prog="pylm", description="Run and operate pylm clusters.",
        epilog="Exit codes: 0 success, 1 remote error or timeout, 2 bad usage.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_logging(p)
        return p

    p = command("server", "Run a Server subclass: calls from clients, results published.")
    _class_arg(p, "Server")
    p.add_argument("--name", required=True, help="the server's name")
    _add_db(p)
    p.add_argument("--pull", required=True, metavar="ADDRESS", type=zmq_address,
                   help="where clients push calls")
    p.add_argument("--pub", required=True, metavar="ADDRESS", type=zmq_address,
                   help="where results are published")
    _add_metrics(p)
    _add_security(p, serves=True)
    p.set_defaults(run=_cmd_server)

    p = command("master", "Run a Master: spreads calls over workers (`pylm worker`).")
    p.add_argument("--class", dest="target", metavar="MODULE:CLASS", default=None,
                   help="a Master subclass (scatter/gather); default pylm.servers:Master")
    p.add_argument("--name", required=True, help="the master's name")
    _add_db(p)
    p.add_argument("--pull", required=True, metavar="ADDRESS", type=zmq_address,
                   help="where clients push calls")
    p.add_argument("--pub", required=True, metavar="ADDRESS", type=zmq_address,
                   help="where results are published")
    p.add_argument("--worker-pull", required=True, metavar="ADDRESS", type=zmq_address,
                   help="where workers send results (worker_pull_address)")
    p.add_argument("--worker-push", required=True, metavar="ADDRESS", type=zmq_address,
                   help="where workers get calls (worker_push_address)")
    p.add_argument("--worker-timeout", type=positive_seconds, default=3.0, metavar="S",
                   help="a worker silent this long is given up, its calls sent to "
                        "others (default 3)")
    _add_metrics(p)
    _add_security(p, serves=True)
    p.set_defaults(run=_cmd_master)

    p = command("worker", "Run K worker processes for a Master, restarting any that dies.")
    _class_arg(p, "Worker")
    _add_db(p)
    p.add_argument("--processes", type=int, default=1, metavar="K",
                   help="worker processes to supervise (default 1); 0 runs one worker "
                        "in this process, unsupervised")
    p.add_argument("--name", default=None,
                   help="worker name (default: a UUID per process)")
    _add_security(p, serves=False)
    p.set_defaults(run=_cmd_worker)

    p = command("call", "Call SERVER.METHOD once with PAYLOAD and print the reply.")
    _function_arg(p)
    p.add_argument("payload", metavar="PAYLOAD", help="the payload (UTF-8 text)")
    _add_db(p)
    _add_timeout(p, DEFAULT_TIMEOUT, "the configuration and the reply (default %g)"
                 % DEFAULT_TIMEOUT)
    _add_security(p, serves=False)
    p.set_defaults(run=_cmd_call)

    p = command("job", "Call SERVER.METHOD with each line of stdin; print each reply "
                       "as a line, in order of arrival.")
    _function_arg(p)
    _add_db(p)
    _add_timeout(p, None, "each reply (default: no limit; the configuration fetch waits "
                          "%g s)" % DEFAULT_TIMEOUT)
    p.add_argument("--progress", action="store_true",
                   help="show a progress bar on stderr (needs tqdm: pylm[progress])")
    _add_security(p, serves=False)
    p.set_defaults(run=_cmd_job)

    p = command("stats", "Print a running server's live statistics as JSON.")
    _add_db(p)
    p.add_argument("--server", default=None, metavar="NAME",
                   help="the server's name, checked against its cache (default: whatever "
                        "server serves --db)")
    _add_timeout(p, DEFAULT_TIMEOUT, "the answer (default %g)" % DEFAULT_TIMEOUT)
    _add_security(p, serves=False)
    p.set_defaults(run=_cmd_stats)

    p = command("keys", "Make a CURVE key pair: NAME.key (public) and NAME.key_secret.")
    p.add_argument("name", metavar="NAME", help="file name of the pair, without extension")
    p.add_argument("--dir", default=".", help="directory to write to (default: .)")
    p.set_defaults(run=_cmd_keys)
    return parser


# -- helpers ------------------------------------------------------------------

def load_class(spec: str) -> type:
    """The class named by ``MODULE:CLASS``; Usage when it cannot be had."""
    module_name, sep, qualname = spec.partition(":")
    if not sep or not module_name or not qualname:
        raise Usage("%r is not MODULE:CLASS" % spec)
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:  # any failure of the user's module is bad usage here
        raise Usage("cannot import %s: %s: %s" % (module_name, type(exc).__name__, exc))
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise Usage("module %s has no %s" % (module_name, qualname)) from None
    if not isinstance(obj, type):
        raise Usage("%s is not a class" % spec)
    return obj


def _server_of(function: str) -> str:
    server, dot, method = function.partition(".")
    if not dot or not server or not method:
        raise Usage("%r is not SERVER.METHOD" % function)
    return server


def _build(args: argparse.Namespace, cls: Any, *posargs: Any, **kwargs: Any) -> Any:
    """cls(*posargs, **kwargs) plus the security keywords given; a pylm
    without them (before CURVE support) is told apart from other errors."""
    security = _security_kwargs(args)
    try:
        return cls(*posargs, **kwargs, **security)
    except TypeError as exc:
        if security and any(name in str(exc) for name in security):
            raise Usage("%s takes no %s here: %s" % (cls.__name__, ", ".join(
                "--" + name.replace("_", "-") for name in security), exc)) from None
        raise


def _client(args: argparse.Namespace, server: str, timeout: Optional[float]) -> Any:
    from pylm.clients import Client
    return _build(args, Client, server, args.db, timeout=timeout)


def _check(cls: type, base: type, spec: str) -> None:
    if not issubclass(cls, base):
        raise Usage("%s is not a subclass of pylm.servers.%s" % (spec, base.__name__))


# -- commands -------------------------------------------------------------------

def _cmd_server(args: argparse.Namespace) -> int:
    from pylm.servers import Server
    cls = load_class(args.target)
    _check(cls, Server, args.target)
    _build(args, cls, args.name, args.db, args.pull, args.pub, **_metrics_kwargs(args)).start()
    return OK


def _cmd_master(args: argparse.Namespace) -> int:
    from pylm.servers import Master
    cls = load_class(args.target) if args.target else Master
    _check(cls, Master, args.target)
    _build(args, cls, args.name, args.pull, args.pub, args.worker_pull, args.worker_push,
           args.db, worker_timeout=args.worker_timeout, **_metrics_kwargs(args)).start()
    return OK


def _cmd_worker(args: argparse.Namespace) -> int:
    from pylm.servers import Worker
    # the class is imported before any process starts: a typo fails at once
    cls = load_class(args.target)
    _check(cls, Worker, args.target)
    if args.processes < 0:
        raise Usage("--processes must be 0 or more")
    if args.processes == 0:
        _build(args, cls, args.name or "", args.db).start()
        return OK
    return Supervisor(_worker_command(args), args.processes).run()


def _worker_command(args: argparse.Namespace) -> List[str]:
    """The command line of one supervised worker: this command, unsupervised."""
    cmd = [sys.executable, "-m", "pylm", "worker", args.target, "--db", args.db,
           "--processes", "0", "--log-level", args.log_level]
    if args.name:
        cmd += ["--name", args.name]
    for option, value in _security_kwargs(args).items():
        cmd += ["--" + option.replace("_", "-"), value]
    return cmd


def _cmd_call(args: argparse.Namespace) -> int:
    server = _server_of(args.function)
    with _client(args, server, args.timeout) as client:
        reply = client.eval(args.function, args.payload.encode(), timeout=args.timeout)
    sys.stdout.buffer.write(reply + b"\n")
    sys.stdout.flush()
    return OK


def _cmd_job(args: argparse.Namespace) -> int:
    """Lines of stdin to calls, replies to lines of stdout.

    A thread reads stdin ahead (at most JOB_AHEAD lines); the main thread
    sends what has been read as one job and prints its replies, then the
    next.  So an endless or interactive stdin works: a line is sent as soon
    as it is read, not when stdin ends or a batch fills."""
    server = _server_of(args.function)
    if args.progress:
        from pylm._progress import progress_bar
        bar = progress_bar(None, desc=args.function)
    else:
        bar = None
    # Ctrl-C and SIGTERM end the job at once, whatever the main thread is
    # waiting on: a signal that lands while it holds the GIL just before a
    # wait inside the core would only be seen when that wait returns (never,
    # for a call that hangs).  So they are blocked here, in every thread
    # started from now on too, and taken by one thread that exits.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    threading.Thread(target=_exit_on_signal, daemon=True, name="pylm-job-signals").start()
    lines: "queue.Queue[Optional[bytes]]" = queue.Queue(JOB_AHEAD)
    # the thread reads the descriptor, not sys.stdin: a daemon thread still
    # blocked in a BufferedReader at exit (stdin left open after a timeout,
    # Ctrl-C or a closed stdout) makes the interpreter abort on its lock
    threading.Thread(target=_read_lines, args=(sys.stdin.fileno(), lines), daemon=True,
                     name="pylm-job-stdin").start()
    out = sys.stdout.buffer
    try:
        with _client(args, server, args.timeout or DEFAULT_TIMEOUT) as client:
            ended = False
            while not ended:
                chunk, ended = _take_lines(lines)
                if not chunk:
                    continue
                for reply in client.job(args.function, chunk, timeout=args.timeout):
                    out.write(reply + b"\n")
                    if bar is not None:
                        bar.update(1)
                out.flush()
    finally:
        if bar is not None:
            bar.close()
    return OK


#: What ends a `pylm job` at once (exit code 1).
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _exit_on_signal() -> None:
    """Wait for SIGINT or SIGTERM (blocked in every thread of the job) and
    end the process: exit code 1, a line on stderr, no traceback."""
    sig = signal.sigwait(_STOP_SIGNALS)
    try:
        sys.stderr.write("pylm job: stopped by %s\n" % signal.Signals(sig).name)
        sys.stderr.flush()
    finally:
        os._exit(FAILED)


def _read_lines(fd: int, lines: "queue.Queue[Optional[bytes]]") -> None:
    """Put each line read from the file descriptor `fd` (without its
    newline; a last line without one too) on `lines`, then None.  os.read
    holds no Python lock while it waits, so the interpreter may exit while
    this daemon thread still waits for input."""
    rest = b""
    try:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError as exc:      # stdin closed or unreadable: its end
                logger.warning("reading stdin failed: %s", exc)
                break
            if not data:
                break
            parts = (rest + data).split(b"\n")
            rest = parts.pop()
            for line in parts:
                lines.put(line)
        if rest:
            lines.put(rest)
    finally:
        lines.put(None)


def _take_lines(lines: "queue.Queue[Optional[bytes]]") -> Tuple[List[bytes], bool]:
    """Every line read so far (waiting for one when there is none), and
    whether stdin ended."""
    chunk: List[bytes] = []
    item = lines.get()
    while item is not None:
        chunk.append(item)
        try:
            item = lines.get_nowait()
        except queue.Empty:
            return chunk, False
    return chunk, True


def _cmd_stats(args: argparse.Namespace) -> int:
    from pylm._cache import CacheClient
    server = args.server
    if server is None:
        cache = CacheClient(args.db, "pylm", args.timeout)
        try:
            server = cache.request("get", b"name").decode(errors="replace")
        finally:
            cache.close()
        if not server:
            raise LookupError("the cache at %s names no server" % args.db)
    with _client(args, server, args.timeout) as client:
        stats = client.stats(timeout=args.timeout)
    print(json.dumps(stats, indent=2, sort_keys=True))
    return OK


def _cmd_keys(args: argparse.Namespace) -> int:
    from pylm.security import generate_keys
    for path in generate_keys(args.dir, args.name):
        print(path)
    return OK


# -- the worker supervisor ---------------------------------------------------------

#: prctl(2) option: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1


def _parent_death_signal() -> Optional[Any]:
    """On Linux, a preexec_fn for the supervised workers: each gets SIGTERM
    when the supervisor dies, even by SIGKILL (which it cannot catch to
    stop them), so that no worker is left orphaned.  None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)    # loaded here, not after fork
    parent = os.getpid()

    def die_with_parent() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:      # it died before prctl
            os._exit(1)

    return die_with_parent


class Supervisor:
    """Runs `count` copies of `command` and keeps them running: a process
    that exits is started again after a back-off (BACKOFF_MIN doubling to
    BACKOFF_MAX while it keeps dying), with a log line saying which, its
    PID and how it ended.  SIGTERM or SIGINT stops them all (SIGTERM, then
    SIGKILL after STOP_GRACE) and run() returns 0.  On Linux the workers
    also get SIGTERM when the supervisor dies without stopping them
    (SIGKILL, a crash): PR_SET_PDEATHSIG."""

    def __init__(self, command: List[str], count: int) -> None:
        self.command = command
        self.count = count
        self.procs: List[Optional["subprocess.Popen[bytes]"]] = [None] * count
        self.started = [0.0] * count
        self.backoff = [BACKOFF_MIN] * count
        self.due = [0.0] * count        # when a dead one may start again
        self._stopping = False
        self._preexec = _parent_death_signal()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stopping = True

    def _start(self, i: int) -> None:
        # preexec_fn is safe here: the supervisor runs no other thread
        proc = subprocess.Popen(self.command, preexec_fn=self._preexec)
        self.procs[i] = proc
        self.started[i] = time.monotonic()
        logger.info("worker %d started: pid %d", i, proc.pid)

    def _reap(self, i: int, proc: "subprocess.Popen[bytes]", now: float) -> None:
        """Worker i (`proc`) ended: log it and schedule its restart."""
        code = proc.returncode
        how = ("killed by signal %d" % -code) if code < 0 else "exited with code %d" % code
        if now - self.started[i] >= BACKOFF_RESET:
            self.backoff[i] = BACKOFF_MIN
        logger.warning("worker %d (pid %d) %s; restarting in %.1f s",
                       i, proc.pid, how, self.backoff[i])
        self.due[i] = now + self.backoff[i]
        self.backoff[i] = min(self.backoff[i] * 2, BACKOFF_MAX)
        self.procs[i] = None

    def run(self) -> int:
        old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for i in range(self.count):
                self._start(i)
            while True:
                time.sleep(0.1)
                if self._stopping:  # no restart once SIGTERM/SIGINT came
                    break
                now = time.monotonic()
                for i in range(self.count):
                    proc = self.procs[i]
                    if proc is not None and proc.poll() is not None:
                        self._reap(i, proc, now)
                    if self.procs[i] is None and now >= self.due[i]:
                        self._start(i)
        finally:
            self._stop_all()
            for sig, handler in old.items():
                signal.signal(sig, handler)
        return OK

    def _stop_all(self) -> None:
        live = [p for p in self.procs if p is not None and p.poll() is None]
        logger.info("stopping %d worker(s)", len(live))
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for proc in live:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("worker pid %d did not stop in %g s; killing it",
                               proc.pid, STOP_GRACE)
                proc.kill()
                proc.wait()


# -- entry point ----------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``pylm`` command; returns its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)     # exits 2 on bad usage, 0 on --help
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # the supervisor's own lines (starts, deaths, restarts) always show
    logger.setLevel(min(logging.INFO, logging.getLevelName(args.log_level)))
    try:
        code: int = args.run(args)
        return code
    except Usage as exc:
        print("pylm %s: error: %s" % (args.command, exc), file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        return FAILED
    except BrokenPipeError:
        # stdout closed by the reader (`pylm job ... | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK
    except Exception as exc:  # a remote error or timeout: a message, no traceback
        print("pylm %s: %s: %s" % (args.command, type(exc).__name__, exc), file=sys.stderr)
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
