"""Large-payload jobs, pylm against hand-written pyzmq, and the Master's CPU
time per message: the measurements behind README's "Large payloads".

    python benchmarks/large_payloads.py                 # msgs/s, both systems
    python benchmarks/large_payloads.py --master-cpu    # pylm Master us/msg
    python benchmarks/large_payloads.py --window-mib 0,64,16 --sizes 1048576
        # Client.job's window_bytes (MiB; 0: no byte bound) interleaved
        # with pyzmq in one run: msgs/s, the Master's CPU us/msg, and the
        # Master's peak RSS over a job of each (fresh processes)

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
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _peers import cpu_seconds  # noqa: E402
from compare.systems import OursJob, PyzmqJob, payloads_of, stream_of  # noqa: E402

SIZES = (64 * 1024, 1024 * 1024)
ROUNDS = 3
#: MiB of payloads per round (bench_large.py's too; `make bench QUICK=1`
#: sets PYLM_BENCH_LARGE_MIB lower)
LARGE_MIB = int(os.environ.get("PYLM_BENCH_LARGE_MIB", 256))


def messages_for(size):
    """LARGE_MIB of payloads per round, between 200 and 200,000 calls."""
    return max(200, min(200000, (LARGE_MIB << 20) // size))


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


def vm_kb(pid, field):
    """`field` (VmRSS, VmHWM...) of /proc/<pid>/status in kB."""
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def ours_with_window(job, n, payloads, window_bytes):
    """One job through `job` (OursJob) with Client.job's default call
    window and `window_bytes`: (msgs/s, Master CPU us/msg)."""
    pid = job.peers[0].process.pid
    cpu = cpu_seconds(pid)
    t0 = time.perf_counter()
    got = sum(1 for _ in job.client.job("master.foo", stream_of(payloads, n), messages=n,
                                        timeout=30, window_bytes=window_bytes))
    seconds = time.perf_counter() - t0
    assert got == n, "%d of %d replies" % (got, n)
    return n / seconds, (cpu_seconds(pid) - cpu) / n * 1e6


def windows(sizes, mibs):
    """For each size: ROUNDS * 2 rounds of ours at each window_bytes,
    interleaved with pyzmq's (compare's 16 MiB window); then the Master's
    peak RSS over one job at each, fresh processes each."""
    unbounded = 1 << 60
    bounds = [(m << 20) if m else unbounded for m in mibs]
    name = {b: ("%d MiB" % (b >> 20) if b != unbounded else "no byte bound") for b in bounds}
    rounds = ROUNDS * 2 + 1
    for size in sizes:
        payloads, n = payloads_of(size), messages_for(size)
        ours, pz = OursJob(), PyzmqJob()
        try:
            ours.grow(2)
            pz.grow(2)
            ours_with_window(ours, n // 10, payloads, bounds[0])
            pz.run(n // 10, payloads)
            runs = {b: [] for b in bounds}
            base = []
            for _ in range(rounds):
                for b in bounds:
                    runs[b].append(ours_with_window(ours, n, payloads, b))
                result = pz.run(n, payloads)
                base.append(result["received"] / result["seconds"])
        finally:
            ours.close()
            pz.close()
        median = statistics.median(base)
        print("%d B, %d calls a round, %d rounds interleaved; pyzmq %.0f msgs/s"
              % (size, n, rounds, median), flush=True)
        for b in bounds:
            rate = statistics.median(r for r, _ in runs[b])
            cpu = statistics.median(c for _, c in runs[b])
            job = OursJob()
            try:
                job.grow(2)
                ours_with_window(job, n, payloads, b)
                hwm = vm_kb(job.peers[0].process.pid, "VmHWM") / 1024
            finally:
                job.close()
            print("  window_bytes %-14s %8.0f msgs/s = %.2fx pyzmq; Master CPU %.0f us/msg, "
                  "Master peak RSS %.0f MB" % (name[b], rate, rate / median, cpu, hwm),
                  flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--master-cpu", action="store_true",
                        help="the pylm Master's CPU time per message instead")
    parser.add_argument("--window-mib", default=None,
                        help="compare Client.job's window_bytes (MiB, comma-separated; "
                             "0: no byte bound) instead")
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES),
                        help="payload sizes in bytes, comma-separated")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.window_mib:
        windows(sizes, [int(m) for m in args.window_mib.split(",")])
    elif args.master_cpu:
        master_cpu(sizes)
    else:
        for system in ("pylm", "pyzmq"):
            throughput(system, sizes)


if __name__ == "__main__":
    main()
