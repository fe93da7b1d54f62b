"""What every example needs besides pylm itself: addresses, and servers
started in the background and stopped again.

Each example runs a whole cluster in one script, so that it can be read and
run on its own.  In production each server would be its own program that
calls ``start()`` (which blocks), and the client another one.
"""

import argparse
import contextlib
import multiprocessing
import signal
import threading
import time

from pylm._testing import tcp_ports

#: Seconds a server or process gets to stop before we give up on it.
STOP_TIMEOUT = 10.0


def free_ports(n, host="127.0.0.1"):
    """`n` distinct free TCP ports on `host` (pylm._testing.tcp_ports: picked
    below the kernel's ephemeral range, so nothing else takes them first)."""
    return tcp_ports(n, host)


def addresses(n, description=None, argv=None):
    """`n` ``tcp://host:port`` addresses: the ports given on the command
    line (``example.py [--host H] [PORT ...]``), else free ports on
    127.0.0.1 chosen now."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("ports", nargs="*", type=int,
                        help="%d TCP ports to use (default: free ports)" % n)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    if args.ports and len(args.ports) != n:
        parser.error("give %d ports, or none" % n)
    ports = args.ports or free_ports(n, args.host)
    return ["tcp://%s:%d" % (args.host, port) for port in ports]


@contextlib.contextmanager
def serving(*servers):
    """Run each server's ``start()`` in a thread of this process; on the
    way out ``stop()`` each one and join its thread (bounded), and raise
    if a start() failed."""
    threads, failures = [], []

    def run(server):
        try:
            server.start()
        except BaseException as exc:
            failures.append((server, exc))
            raise

    try:
        for server in servers:
            thread = threading.Thread(target=run, args=(server,), name=server.name,
                                      daemon=True)
            thread.start()
            threads.append((server, thread))
        yield servers
    finally:
        for server, thread in reversed(threads):
            server.stop()
            thread.join(STOP_TIMEOUT)
            if thread.is_alive():
                raise RuntimeError("%s did not stop within %s s" % (server.name, STOP_TIMEOUT))
        if failures:
            server, exc = failures[0]
            raise RuntimeError("%s.start() failed: %r" % (server.name, exc)) from exc


def answered(client, function, payload, timeout=15.0):
    """``client.eval(function, payload)``, repeated until the stream answers.

    The stages of a stream are joined by PUB/SUB, and a subscriber only
    gets what is published after its subscription has reached the
    publisher: a stage that has just started misses the first messages.
    A client's first call waits until the stages on its path are joined,
    but it cannot see through a handle_stream override (custom topics), so
    before the real work such streams are probed like this.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.eval(function, payload, timeout=0.5)
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


def _run_in_child(cls, args, kwargs):
    server = cls(*args, **kwargs)
    server.start()      # SIGTERM makes start() return


@contextlib.contextmanager
def processes(*specs):
    """Run ``cls(*args).start()`` in a child process (spawn) for each
    ``(cls, args...)`` in specs; on the way out stop each by SIGTERM to
    its handle and wait for it (bounded; killed if it does not exit).
    `cls` must be importable (defined at module level)."""
    ctx = multiprocessing.get_context("spawn")
    procs = []
    try:
        for cls, *args in specs:
            proc = ctx.Process(target=_run_in_child, args=(cls, args, {}), daemon=True)
            proc.start()
            procs.append(proc)
        yield procs
    finally:
        codes = [stop_process(proc) for proc in procs]
        # 0: start() returned; -SIGTERM: stopped before start() got going
        if any(code not in (0, -signal.SIGTERM) for code in codes):
            raise RuntimeError("a child process failed: exit codes %s" % codes)


def stop_process(proc, timeout=STOP_TIMEOUT, repeat=1.0):
    """SIGTERM `proc` (again every `repeat` s) until it exits, at most
    `timeout` s, then SIGKILL it.  Returns its exit code."""
    waited = 0.0
    while proc.is_alive() and waited < timeout:
        proc.terminate()
        proc.join(repeat)
        waited += repeat
    if proc.is_alive():
        proc.kill()
        proc.join(STOP_TIMEOUT)
    return proc.exitcode


__all__ = ["free_ports", "addresses", "serving", "answered", "processes", "stop_process"]
