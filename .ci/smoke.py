"""Smoke test of an installed pylm (``make smoke-wheel``): run it with the
Python of a venv the wheel was installed into, from a directory outside
the source tree.

It checks that ``pylm`` and ``pylm_core`` are imported from that venv's
site-packages (not from a source tree on the path), then makes real round
trips over loopback TCP: a Server in a thread, and a Master in a thread
with a Worker in a child process, each called by a Client (one ``eval``
and a ``job`` whose every reply must arrive exactly once).  Only the
runtime dependencies are needed; numpy must not be imported by any of it.
Exits non-zero on any failure.
"""

import logging
import sys
import sysconfig
from collections import Counter

import zmq

import pylm
import pylm_core
from pylm._testing import in_child, running, stop_all, tcp_addresses, wait_for
from pylm.clients import Client
from pylm.servers import Master, Server, Worker

#: Seconds any one call gets (a loaded machine answers in far less).
TIMEOUT = 30
#: Messages of each job.
MESSAGES = 2000


class Upper(Server):
    def upper(self, payload):
        return payload.upper()


class Reverse(Worker):
    """Run in a child process (spawn): module level, so it can be pickled."""

    def reverse(self, payload):
        return payload[::-1]


def check_installed():
    """pylm and pylm_core come from this interpreter's site-packages."""
    site = sysconfig.get_paths()["platlib"], sysconfig.get_paths()["purelib"]
    for module in (pylm, pylm_core, pylm_core._core):
        assert module.__file__.startswith(site), \
            "%s imported from %s, not from %s" % (module.__name__, module.__file__, site)
    print("pylm %s from %s; pyzmq %s, libzmq %s" % (
        pylm.__version__, site[0], zmq.__version__, zmq.zmq_version()))


def check_job(client, function, expected):
    payloads = [b"m%d" % i for i in range(MESSAGES)]
    replies = Counter(client.job(function, iter(payloads), messages=MESSAGES, timeout=TIMEOUT))
    want = Counter(expected(p) for p in payloads)
    assert replies == want, "job %s: %d replies, %d missing, %d extra" % (
        function, sum(replies.values()), sum((want - replies).values()),
        sum((replies - want).values()))


def check_server():
    db, pull, pub = tcp_addresses(3)
    server = Upper("upper", db_address=db, pull_address=pull, pub_address=pub)
    with running(server):
        with Client("upper", db, timeout=TIMEOUT) as client:
            assert client.eval("upper.upper", b"hello", timeout=TIMEOUT) == b"HELLO"
            check_job(client, "upper.upper", bytes.upper)
    print("Server: eval and a job of %d messages" % MESSAGES)


def check_master():
    pull, pub, wpull, wpush, db = tcp_addresses(5)
    master = Master("master", pull_address=pull, pub_address=pub, worker_pull_address=wpull,
                    worker_push_address=wpush, db_address=db)
    with running(master):
        procs = [in_child(Reverse, "reverse-1", db)]
        try:
            with Client("master", db, timeout=TIMEOUT) as client:
                # the worker is ready once it answers
                wait_for(lambda: client.eval("master.reverse", b"abc", timeout=TIMEOUT) == b"cba",
                         timeout=TIMEOUT, what="the worker answering")
                check_job(client, "master.reverse", lambda p: p[::-1])
        finally:
            stop_all(procs)
    assert procs[0].exitcode == 0, procs[0].exitcode
    print("Master and a Worker process: eval and a job of %d messages" % MESSAGES)


def main():
    logging.basicConfig(level=logging.WARNING)
    check_installed()
    check_server()
    check_master()
    assert "numpy" not in sys.modules, "numpy was imported"
    print("smoke test passed")


if __name__ == "__main__":
    main()
