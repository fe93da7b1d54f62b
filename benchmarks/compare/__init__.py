"""Side-by-side benchmark: this pylm against the usual alternatives, all
measured in one run, on this machine, written to one JSON file and charted.

    python -m benchmarks.compare            # full run (about 5-10 min on 2 cores)
    python -m benchmarks.compare --quick    # fewer, shorter repetitions (2-3 min)
    python -m benchmarks.compare --plot benchmarks/results/latest.json
    make bench [QUICK=1]                    # pytest benchmarks, then this

(from the repository's root, with the project's venv: .venv/bin/python).

Systems (each one where it fits the workload):

    pylm      this project: Master + N Worker processes, Client.job; Client.eval
              to a Server; Server(pipelined) -> Pipeline -> Pipeline -> Client
    pyzmq     hand-written pyzmq: ventilator PUSH -> N worker processes -> sink
              PULL; REQ/REP; PUSH -> PUB/SUB -> PUB/SUB -> PUB -> SUB chain
    pool1     multiprocessing.Pool(N).imap(chunksize=1) (eval: Pool.apply)
    pool100   multiprocessing.Pool(N).imap(chunksize=100)
    ppe       concurrent.futures.ProcessPoolExecutor(N).map (eval: submit().result())
    pylm014   pylm 0.14.4 from PyPI, in its own venv (tests/legacy.py), as
              subprocesses, driven by its own Client; replies it loses are counted
    memcpy    one in-memory copy of each payload (the physical bound), payload sweep
    protobuf  protobuf (upb) PalmMessage, envelope codec only

Workloads (every point is measured for every system in the same run, the
repetitions of a point interleaved across systems; each point reports the
median of its repetitions):

    job       identity method, 100 B payloads, 1, 2 and 4 workers; then 2
              workers with 4 KiB, 64 KiB and 1 MiB payloads (msgs/s, MiB/s)
    eval      one call at a time to one server process: p50 and p99 latency
    stream    3 stages, 100 B payloads (msgs/s)
    envelope  decode + stage += 1 + encode of a 100 B-payload envelope (ns/op)

The number of messages of each repetition is sized from a first (warm-up)
run so that a repetition takes about --target seconds.  Client and sender
keep at most a window of calls in flight (2000 messages, fewer for large
payloads: 16 MiB in flight at most), the same for pylm and pyzmq.

Output: benchmarks/results/compare-<host>-<date>.json, a copy as latest.json,
PNG charts next to each, and a markdown table (printed, and written to
latest.md) for README.md.

The modules, in the order a run uses them:

    __main__        the command line; one run from start to written results
    machine         what the results were measured on
    systems         the systems under test, each as an object that runs n
                    messages (our servers and the pyzmq baselines are the
                    peers of benchmarks/_peers.py, shared with bench_*.py)
    pylm014         pylm 0.14.4 in its venv: its processes and its client
    pylm014_driver  the program the pylm 0.14.4 interpreter runs
    measure         warm-up, sizing, interleaved repetitions, the records
    phases          the workloads: which points, which systems at each
    report          the markdown tables, the charts, the files written
"""

import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
BENCHMARKS = PACKAGE.parent
ROOT = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"

# _peers.py (benchmarks/), legacy.py and palm_reference.py (tests/) are plain
# modules in folders that are not packages: they import once their folders
# are on the path, here and in the spawned children (which inherit sys.path).
for _folder in (BENCHMARKS, ROOT / "tests"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))
