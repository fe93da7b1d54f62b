"""Large payloads over the Master's local links (pylm/_local.py): a Master
with ipc twins, the same Master over tcp (``local_ipc=False``), and
zguide's ventilator -> 2 workers -> sink over tcp and over ipc, all in one
run, rounds alternating between the systems.

    python benchmarks/large_local.py                     # 64 KiB and 1 MiB
    python benchmarks/large_local.py --window-bytes 1048576 --rounds 7

Prints, per size and system, the median msgs/s and its ratio to pyzmq over
tcp (the issue's baseline) and over ipc, and the CPU time per message of
each process (client or ventilator/sink first, then the Master and workers,
from /proc), which load distorts less than wall-clock rates.
"""

import argparse
import os
import statistics
import sys

import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _peers  # noqa: E402
from compare import systems  # noqa: E402
from compare.systems import OursJob, PyzmqJob, payloads_of  # noqa: E402


class TcpOursJob(OursJob):
    """pylm with its Master's links on tcp only."""
    MASTER_OPTIONS = {"local_ipc": False}


class IpcPyzmqJob(PyzmqJob):
    """The zguide pipeline with its two bound sockets on ipc."""

    def __init__(self):
        super().__init__()
        for sock in (self.vent, self.sink):
            sock.unbind(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        self.vent.bind("ipc://@pylm-bench-vent-%d" % os.getpid())
        self.sink.bind("ipc://@pylm-bench-sink-%d" % os.getpid())
        self.vent_ep = self.vent.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sink_ep = self.sink.getsockopt_string(zmq.LAST_ENDPOINT)


SYSTEMS = (("pylm-tcp", TcpOursJob), ("pylm-ipc", OursJob), ("pyzmq-tcp", PyzmqJob),
           ("pyzmq-ipc", IpcPyzmqJob))


def cpu_of(job):
    """CPU seconds of this process (the client or ventilator and sink) and
    of each of the job's peers."""
    mine = os.times()
    return [mine.user + mine.system] + [_peers.cpu_seconds(p.process.pid) for p in job.peers]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="65536,1048576")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window-bytes", type=int, default=systems.WINDOW_BYTES,
                        help="bytes of payloads in flight (calls: at least 8)")
    args = parser.parse_args(argv)
    systems.WINDOW_BYTES = args.window_bytes
    jobs = {}
    try:
        for name, cls in SYSTEMS:
            jobs[name] = cls()
            jobs[name].grow(2)
        print("window: %d bytes; load average %.1f" % (args.window_bytes, os.getloadavg()[0]))
        for size in (int(s) for s in args.sizes.split(",")):
            n = max(200, min(200000, (256 << 20) // size))
            payloads = payloads_of(size)
            rates = {k: [] for k in jobs}
            cpu = {k: [] for k in jobs}
            for job in jobs.values():
                job.run(n // 10, payloads)
            for _ in range(args.rounds):
                for k, job in jobs.items():
                    before = cpu_of(job)
                    result = job.run(n, payloads)
                    after = cpu_of(job)
                    rates[k].append(result["received"] / result["seconds"])
                    cpu[k].append([(b - a) / n * 1e6 for a, b in zip(before, after)])
            median = {k: statistics.median(v) for k, v in rates.items()}
            for k in jobs:
                per = [statistics.median(c[i] for c in cpu[k]) for i in range(len(cpu[k][0]))]
                print("%8d B %-9s %8.0f msgs/s  %.2fx pyzmq-tcp  %.2fx pyzmq-ipc  "
                      "CPU us/msg %s = %.0f  (rounds: %s)"
                      % (size, k, median[k], median[k] / median["pyzmq-tcp"],
                         median[k] / median["pyzmq-ipc"], " + ".join("%.0f" % x for x in per),
                         sum(per), " ".join("%.0f" % x for x in rates[k])), flush=True)
        print("load average %.1f" % os.getloadavg()[0])
    finally:
        for job in jobs.values():
            job.close()


if __name__ == "__main__":
    main()
