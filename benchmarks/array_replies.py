"""What a Server's process spends to send one 1 MiB reply, by how the
method returns it: the measurement behind README's "numpy arrays".

    python benchmarks/array_replies.py

arr     the float64 array itself (the core writes pylm.arrays' header, then
        the data, into the reply: no join)
joined  pylm.arrays.dumps(array) (the header and data joined into bytes
        first, then copied into the reply)
raw     bytes of the same size (the bytes path, for reference)

A Server in a child process, a Client here asking for JOB replies per round
(window 16), the three interleaved for ROUNDS rounds.  The Server's CPU time
(utime + stime from /proc) per reply is printed, median and rounds: CPU time,
unlike a rate, hardly moves with the load of a shared machine.
"""

import itertools
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _peers import LOG_LEVEL, Peer, cpu_seconds, tcp_addresses  # noqa: E402
from pylm.arrays import dumps  # noqa: E402
from pylm.clients import Client  # noqa: E402
from pylm.servers import Server  # noqa: E402

JOB = 1000
ROUNDS = 7
ARRAY = np.random.default_rng(1).random((1 << 20) // 8)


class ReplyServer(Server):
    raw_bytes = ARRAY.tobytes()

    def arr(self, payload):
        return ARRAY

    def joined(self, payload):
        return dumps(ARRAY)

    def raw(self, payload):
        return self.raw_bytes


def run_reply_server(report, name, db, pull, pub):
    server = ReplyServer(name, db, pull, pub, log_level=LOG_LEVEL)
    report()
    server.start()


def main():
    db, pull, pub = tcp_addresses(3)
    peer = Peer(run_reply_server, "srv", db, pull, pub, name="srv")
    peer.start(30)
    try:
        with Client("srv", db, timeout=30) as client:
            client.eval("srv.raw", b"", timeout=30)
            per = {name: [] for name in ("arr", "joined", "raw")}
            for _ in range(ROUNDS):
                for name, rounds in per.items():
                    before = cpu_seconds(peer.process.pid)
                    for _ in client.job("srv." + name, itertools.repeat(b"", JOB),
                                        messages=JOB, window=16, timeout=30):
                        pass
                    rounds.append((cpu_seconds(peer.process.pid) - before) / JOB * 1e6)
            for name, rounds in per.items():
                print("%-7s Server CPU %4.0f us/reply (rounds: %s)"
                      % (name, statistics.median(rounds), " ".join("%.0f" % x for x in rounds)),
                      flush=True)
    finally:
        peer.stop()


if __name__ == "__main__":
    main()
