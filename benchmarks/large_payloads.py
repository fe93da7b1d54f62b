"""Large-payload jobs, pylm against hand-written pyzmq, and the Master's CPU
time per message: the measurements behind README's "Large payloads".

    python benchmarks/large_payloads.py                 # msgs/s, both systems
    python benchmarks/large_payloads.py --master-cpu    # pylm Master us/msg

Same processes and workloads as benchmarks/compare's job (a Master and
two Worker processes, or zguide's ventilator -> 2 workers -> sink), each
size run three times after a warm-up; medians are printed.  The Master's CPU
time is its utime + stime from /proc over a job, per reply.  Set glibc's
MALLOC_* variables in the environment to see their effect (README).
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compare.systems import OursJob, PyzmqJob, payloads_of  # noqa: E402

SIZES = (64 * 1024, 1024 * 1024)
ROUNDS = 3
#: MiB of payloads per round (bench_large.py's too; `make bench QUICK=1`
#: sets PYLM_BENCH_LARGE_MIB lower)
LARGE_MIB = int(os.environ.get("PYLM_BENCH_LARGE_MIB", 256))


def messages_for(size):
    """LARGE_MIB of payloads per round, between 200 and 200,000 calls."""
    return max(200, min(200000, (LARGE_MIB << 20) // size))


def cpu_seconds(pid):
    fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def each_size(job, sizes, measure):
    """For each size: a warm-up, then ROUNDS of measure(job, n, payloads)."""
    job.grow(2)
    for size in sizes:
        payloads = payloads_of(size)
        n = messages_for(size)
        job.run(n // 10, payloads)
        yield size, [measure(job, n, payloads) for _ in range(ROUNDS)]


def rate(job, n, payloads):
    result = job.run(n, payloads)
    return result["received"] / result["seconds"]


def throughput(system, sizes):
    job = OursJob() if system == "pylm" else PyzmqJob()
    try:
        for size, rates in each_size(job, sizes, rate):
            median = statistics.median(rates)
            print("%-6s %8d B: %9.0f msgs/s %7.0f MiB/s" % (system, size, median,
                                                            median * size / 2**20), flush=True)
    finally:
        job.close()


def master_cpu(sizes):
    job = OursJob()

    def cpu_per_message(job, n, payloads):
        pid = job.peers[0].process.pid
        before = cpu_seconds(pid)
        result = job.run(n, payloads)
        return (cpu_seconds(pid) - before) / max(1, result["received"]) * 1e6

    try:
        for size, per in each_size(job, sizes, cpu_per_message):
            print("%8d B: Master CPU %.1f us/msg (rounds: %s)"
                  % (size, statistics.median(per), ", ".join("%.1f" % x for x in per)),
                  flush=True)
    finally:
        job.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--master-cpu", action="store_true",
                        help="the pylm Master's CPU time per message instead")
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES),
                        help="payload sizes in bytes, comma-separated")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.master_cpu:
        master_cpu(sizes)
    else:
        for system in ("pylm", "pyzmq"):
            throughput(system, sizes)


if __name__ == "__main__":
    main()
