"""The pylm demo (``make demo``): a Master and its Workers, each in its own
process, and a Client job of 100,000 small messages through them, with a
progress bar and the throughput at the end.

    python examples/demo.py [--messages N] [--workers N] [--size BYTES]
                            [--no-progress] [--print-pids]

Ctrl-C stops everything: every process is stopped through its handle (with
bounded waits) and the demo exits with status 130, quietly.
"""

import signal
import sys

if __name__ == "__main__":
    # A Ctrl-C while the imports below run: leave quietly (main() takes
    # over from here on).  Not in the spawned children, which import this
    # module as __mp_main__.
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))

import argparse
import itertools
import logging
import multiprocessing
import os
import time

from pylm.clients import Client
from pylm.servers import Master, Worker

from _helpers import free_ports

try:
    import tqdm
except ImportError:        # the progress bar is optional (pip install tqdm)
    tqdm = None

#: Seconds each child gets to stop after SIGTERM before it is killed.
STOP_TIMEOUT = 10.0
#: Seconds for the workers to come up, and for any one reply.
READY_TIMEOUT = 30.0
REPLY_TIMEOUT = 30.0


class DemoWorker(Worker):
    def identity(self, payload):
        return payload

    def pid(self, payload):
        return b"%d" % os.getpid()


# -- the child processes ---------------------------------------------------------

def _leave(signum, frame):
    """SIGTERM before start() installed its handlers, or after it restored
    this one on its way out: nothing is open then, so end the process at
    once.  (An exception raised here could land anywhere, even in a
    weakref callback, where Python prints it and goes on.)"""
    os._exit(0)


def _child(kind, args):
    """Body of a child process: run a Master or a DemoWorker until SIGTERM
    (or a Ctrl-C at the terminal) makes start() return."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(processName)s %(name)s %(levelname)s %(message)s")
    # Until start() installs its own handlers a SIGTERM just ends the
    # process; SIGINT stays ignored as inherited.
    signal.signal(signal.SIGTERM, _leave)
    if kind == "master":
        server = Master("demo", *args, log_level=logging.WARNING)
    else:
        server = DemoWorker(*args, log_level=logging.WARNING)
    server.start()
    # start() returned: we are on our way out, and the parent may repeat
    # its SIGTERM meanwhile (it must not cut the interpreter's shutdown)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def start_cluster(n_workers, procs):
    """Start the Master and the workers, appending each to `procs` as it
    starts; returns the Master's db_address."""
    pull, pub, worker_pull, worker_push, db = ("tcp://127.0.0.1:%d" % port
                                               for port in free_ports(5))
    ctx = multiprocessing.get_context("spawn")
    specs = [("master", "master", (pull, pub, worker_pull, worker_push, db))]
    specs += [("worker-%d" % i, "worker", ("worker-%d" % i, db)) for i in range(n_workers)]
    # The children start with SIGINT ignored, so that a Ctrl-C while they
    # boot does not end them with a KeyboardInterrupt traceback; once
    # serving, pylm's own handler stops them cleanly on SIGINT.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for name, kind, args in specs:
            proc = ctx.Process(target=_child, args=(kind, args), name=name, daemon=True)
            proc.start()
            procs.append(proc)
    finally:
        signal.signal(signal.SIGINT, previous)
    return db


def stop_process(proc, timeout=STOP_TIMEOUT, repeat=0.5):
    """SIGTERM `proc` through its handle, again every `repeat` s, until it
    exits; SIGKILL it after `timeout` s.  Returns its exit code."""
    if proc.pid is None:
        return None
    deadline = time.monotonic() + timeout
    while proc.is_alive() and time.monotonic() < deadline:
        proc.terminate()
        proc.join(min(repeat, max(0.0, deadline - time.monotonic())))
    if proc.is_alive():
        print("demo: %s (pid %d) did not stop in %s s; killing it"
              % (proc.name, proc.pid, timeout), file=sys.stderr)
        proc.kill()
        proc.join(STOP_TIMEOUT)
    return proc.exitcode


# -- the client ------------------------------------------------------------------

def check_alive(procs):
    """Raise when a child process has died."""
    for proc in procs:
        if not proc.is_alive():
            raise RuntimeError("%s (pid %d) exited with status %s"
                               % (proc.name, proc.pid, proc.exitcode))


def wait_for_workers(client, procs, n_workers):
    """Call until every worker has answered (a worker that connects late
    would otherwise miss the start of the timed job)."""
    seen = set()
    deadline = time.monotonic() + READY_TIMEOUT
    while len(seen) < n_workers:
        check_alive(procs)
        if time.monotonic() > deadline:
            raise TimeoutError("only %d of %d workers answered within %s s"
                               % (len(seen), n_workers, READY_TIMEOUT))
        try:
            seen.update(client.job("demo.pid", itertools.repeat(b"", 2000), messages=2000,
                                   timeout=1.0))
        except TimeoutError:
            pass          # not up yet (the replies of this round come in late, ignored)
    return seen


class Progress:
    """A tqdm bar when tqdm is there, else a line every 10%."""

    def __init__(self, total, enabled):
        self.total = total
        self.done = 0
        self.bar = None
        self.enabled = enabled
        self.next_report = total // 10
        if enabled and tqdm is not None:
            # no monitor thread: Ctrl-C must reach the main thread, which
            # waits in zmq_poll
            tqdm.tqdm.monitor_interval = 0
            self.bar = tqdm.tqdm(total=total, unit="msg", unit_scale=True,
                                 mininterval=0.25, smoothing=0.1, file=sys.stderr)

    def update(self, n):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and self.done >= self.next_report:
            print("%d%%" % (100 * self.done // self.total), file=sys.stderr, flush=True)
            self.next_report += max(1, self.total // 10)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_job(client, messages, size, progress):
    """The timed job; returns (replies, bytes received, seconds)."""
    payload = b"x" * size
    step = max(1, min(1000, messages // 200))
    received = nbytes = pending = 0
    start = time.perf_counter()
    for reply in client.job("demo.identity", itertools.repeat(payload, messages),
                            messages=messages, timeout=REPLY_TIMEOUT):
        received += 1
        nbytes += len(reply)
        pending += 1
        if pending == step:
            progress.update(pending)
            pending = 0
    elapsed = time.perf_counter() - start
    progress.update(pending)
    return received, nbytes, elapsed


# -- main --------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000,
                        help="messages in the job (default 100000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--size", type=int, default=100, help="payload bytes (default 100)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--print-pids", action="store_true",
                        help="print the PIDs of the demo and its children first")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.workers < 1 or args.size < 0:
        parser.error("--messages and --workers must be >= 1, --size >= 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    interrupted = False

    def on_sigint(signum, frame):
        nonlocal interrupted
        if not interrupted:       # the first Ctrl-C interrupts; later ones
            interrupted = True    # would only cut the clean-up short
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    procs, client, progress, status = [], None, None, 0
    try:
        db = start_cluster(args.workers, procs)
        if args.print_pids:
            print("pids: demo=%d master=%d workers=%s"
                  % (os.getpid(), procs[0].pid, ",".join(str(p.pid) for p in procs[1:])),
                  flush=True)
        client = Client("demo", db)
        wait_for_workers(client, procs, args.workers)
        print("%d worker(s) ready; sending %d messages of %d bytes"
              % (args.workers, args.messages, args.size), flush=True)
        progress = Progress(args.messages, not args.no_progress)
        received, nbytes, elapsed = run_job(client, args.messages, args.size, progress)
        progress.close()
        if received != args.messages or nbytes != args.messages * args.size:
            print("demo: got %d replies (%d bytes), expected %d" % (
                received, nbytes, args.messages), file=sys.stderr)
            status = 1
        print("%d messages in %.2f s with %d worker(s): %.0f messages/s"
              % (received, elapsed, args.workers, received / elapsed), flush=True)
    except KeyboardInterrupt:
        status = 130
    except Exception as exc:  # a failure of the demo itself: one line, not a traceback
        print("demo failed: %s: %s" % (type(exc).__name__, exc), file=sys.stderr)
        status = 1
    finally:
        interrupted = True        # from here on Ctrl-C is ignored
        if progress is not None:
            progress.close()
        if client is not None:
            client.close()
        for proc in procs:
            code = stop_process(proc)
            if code not in (0, -signal.SIGTERM) and status == 0:
                print("demo: %s exited with status %s" % (proc.name, code), file=sys.stderr)
                status = 1
    if status == 130:
        print("interrupted; every process stopped", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
