"""The command line of the side-by-side benchmark (``python -m
benchmarks.compare --help``), and one run: the machine, pylm 0.14.4's venv,
every phase asked for, then the results written (report.py)."""

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from . import RESULTS, __doc__ as overview
from .machine import machine_info
from .measure import Bench, log
from .phases import PHASES, plan_total
from .pylm014 import Legacy
from .report import SCHEMA, markdown, plot, write_outputs
from .systems import SYSTEMS

#: How the command is named in --help and in the results file.
PROG = "python -m benchmarks.compare"


def run_all(args):
    """Run the phases `args` asks for; the results (report.py's
    docstring has their layout)."""
    reps = args.reps or (3 if args.quick else 5)
    target = args.target or (0.25 if args.quick else 0.6)
    started = time.monotonic()
    data = {
        "schema": SCHEMA,
        "machine": machine_info(),
        "run": {"date": datetime.datetime.now(datetime.timezone.utc)
                .strftime("%Y-%m-%dT%H:%M:%SZ"),
                "quick": args.quick, "repetitions": reps, "target_seconds": target,
                "loadavg_start": list(os.getloadavg()),
                "command": " ".join([PROG] + sys.argv[1:])},
        "systems": SYSTEMS,
        "phases": args.phases,
        "results": [],
    }
    bench = Bench(reps, target, args.quick)
    workdir = Path(tempfile.mkdtemp(prefix="pylm-compare-"))
    try:
        if not args.no_legacy:
            log("pylm 0.14.4 venv: checking (built on first use, about a minute)")
        legacy = Legacy(workdir, enabled=not args.no_legacy)
        if legacy.reason:
            log("pylm 0.14.4 skipped: %s" % legacy.reason)
        data["run"]["pylm014"] = dict(legacy.versions, available=legacy.available,
                                      reason=legacy.reason)
        bench.start_bar(plan_total(reps, args.phases))
        try:
            for phase in (PHASES[name] for name in args.phases):
                try:
                    phase(bench, legacy)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    log("%s failed: %s\n%s" % (phase.__name__, exc, traceback.format_exc()))
                    data["run"].setdefault("failed_phases", []).append(
                        "%s: %s: %s" % (phase.__name__, type(exc).__name__, exc))
        finally:
            bench.close_bar()
            legacy.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    data["results"] = bench.records
    data["run"]["seconds"] = round(time.monotonic() - started, 1)
    data["run"]["loadavg_end"] = list(os.getloadavg())
    return data


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=overview.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="3 repetitions of ~0.25 s per point (default: 5 of ~0.6 s)")
    parser.add_argument("--reps", type=int, help="repetitions per point")
    parser.add_argument("--target", type=float, help="seconds per repetition")
    parser.add_argument("--out", default=str(RESULTS), help="output directory")
    parser.add_argument("--no-legacy", action="store_true", help="leave pylm 0.14.4 out")
    parser.add_argument("--no-plots", action="store_true", help="JSON and markdown only")
    parser.add_argument("--phases", default=",".join(PHASES),
                        type=lambda v: [p for p in v.split(",") if p],
                        help="workloads to run, of %s (default: all)" % ",".join(PHASES))
    parser.add_argument("--plot", metavar="RESULTS.json",
                        help="only chart (and tabulate) an earlier results file")
    args = parser.parse_args(argv)
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error("unknown phases: %s" % ", ".join(sorted(unknown)))

    if args.plot:
        data = json.loads(Path(args.plot).read_text())
        stem = str(Path(args.plot).with_suffix(""))
        for png in plot(data, stem):
            print("wrote", png)
        table = markdown(data)
        Path(stem + ".md").write_text(table)
        print("wrote", stem + ".md")
        print()
        print(table)
        return 0

    data = run_all(args)
    table, written = write_outputs(data, args.out, plots=not args.no_plots)
    print(table)
    for path in written:
        print("wrote", os.path.relpath(path))
    print("took %.0f s" % data["run"]["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
