"""pytest-benchmark set-up shared by benchmarks/bench_*.py (style.md 14).

* ``bench_*.py`` files are collected (the project's python_files is pytest's
  default, test_*.py).
* ``--rounds``, ``--warmup-rounds``, ``--iterations`` override what a
  benchmark passes to ``bench``; with none of them at all, pytest-benchmark
  calibrates by itself.  Give sub-microsecond functions ``iterations``:
  its calibration runs them once per round, and then the timer calls
  and the harness (~0.25 us here) are most of what is measured.
* ``bench(fn, *args, role=..., messages=...)`` records the run under the
  test's benchmark group and role (_targets.py): after pytest-benchmark's
  tables, one summary compares ``ours`` with every other role of each
  group and says which of issue 15's targets the run met.  Times are
  reported, never asserted.  The summary is also written as JSON
  (``--bench-json``, default build/bench-targets.json).
* ``interleave([(role, label, fn), ...], ...)`` measures the sides of a
  group in one test, taking turns (ours, then each baseline, then ours
  again...), and records each side's samples the same way: on this shared
  machine the load changes from second to second, and sides measured one
  after the other (one test each) gave ratios that swung from 0.7x to 2.4x
  between runs, where taking turns gave the same ratio run after run.
  Issue 15's target groups (job, eval, stream, large-*) are measured so.

Run with ``make bench`` (adds --benchmark-disable-gc).
"""

import os
import sys
import time

import pytest

try:  # benchmarks/ on sys.path (pytest's rootdir insertion; no __init__.py)
    import _peers
    import _targets
except ImportError:  # benchmarks/ imported as a package
    from benchmarks import _peers, _targets

# the protobuf reference class lives with the tests
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tests"))


def pytest_addoption(parser):
    group = parser.getgroup("pylm benchmarks")
    group.addoption("--rounds", type=int, default=None,
                    help="rounds per benchmark (benchmark.pedantic)")
    group.addoption("--warmup-rounds", type=int, default=None,
                    help="warm-up rounds per benchmark (benchmark.pedantic)")
    group.addoption("--iterations", type=int, default=None,
                    help="calls per round (benchmark.pedantic)")
    group.addoption("--bench-json", default=os.path.join("build", "bench-targets.json"),
                    help="where the summary of the run is written as JSON ('' for nowhere)")


def pytest_collect_file(file_path, parent):
    # a file named on the command line is collected by pytest itself
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture
def bench(benchmark, request):
    """``bench(fn, *args, role="ours"|"baseline"|..., messages=0, rounds=None,
    warmup_rounds=None, iterations=None)``: benchmark fn(*args), which
    handles `messages` messages per call (0: one call, timed as a latency,
    p50 and p99 in extra_info), and record it (_targets.add)."""
    opts = request.config.option

    def run(fn, *args, role, messages=0, rounds=None, warmup_rounds=None, iterations=None):
        rounds = opts.rounds or rounds
        warmup_rounds = opts.warmup_rounds or warmup_rounds
        iterations = opts.iterations or iterations
        if rounds or warmup_rounds or iterations:
            result = benchmark.pedantic(
                fn, args, rounds=rounds or 100, warmup_rounds=warmup_rounds or 0,
                iterations=iterations or 1)
        else:
            result = benchmark(fn, *args)
        stats = getattr(benchmark, "stats", None)     # None with --benchmark-disable
        if stats is not None:
            times = list(stats.stats.data)
            _targets.add(benchmark.group, role, request.node.name, times, messages)
            recorded = _targets.RESULTS[benchmark.group][role]
            if messages:
                benchmark.extra_info["msgs_per_round"] = messages
                benchmark.extra_info["msgs_per_s"] = round(messages / recorded["median"])
            else:
                benchmark.extra_info["p50_us"] = round(recorded["median"] * 1e6, 1)
                benchmark.extra_info["p99_us"] = round(recorded["p99"] * 1e6, 1)
        return result

    return run


@pytest.fixture
def interleave(benchmark, request):
    """``interleave(sides, messages=0, calls=1, rounds=..., warmup_rounds=...)``:
    measure the `sides` of the test's benchmark group taking turns, and
    record each (_targets.add) under its role, named
    ``test-name[label]``.

    `sides` is a list of (role, label, fn).  One round runs, for each side
    in turn, `calls` calls of fn() and times each call: a sample.  With
    `messages` (> 0) a call handles that many messages and its time is
    reported as msgs/s (give calls=1); with 0 each call is one round trip,
    timed as a latency (p50, p99 of all its calls).  Warm-up rounds run
    first, in the same turns, and are not kept.  ``--rounds`` and
    ``--warmup-rounds`` override the counts.  pytest-benchmark times whole
    rounds (every side's turn): its table row for the test is the time of
    one round of all sides, not a figure of any one side; the summary's
    figures are each side's own samples."""
    opts = request.config.option

    def run(sides, *, messages=0, calls=1, rounds, warmup_rounds):
        rounds = opts.rounds or rounds
        warmup_rounds = opts.warmup_rounds or warmup_rounds
        samples = {role: [] for role, _, _ in sides}
        clock = time.perf_counter

        def one_round(kept):
            for role, _, fn in sides:
                out = samples[role] if kept else []
                append = out.append
                for _ in range(calls):
                    t0 = clock()
                    fn()
                    append(clock() - t0)

        for _ in range(warmup_rounds):
            one_round(False)
        benchmark.pedantic(one_round, (True,), rounds=rounds, warmup_rounds=0, iterations=1)
        if getattr(benchmark, "stats", None) is None:     # --benchmark-disable
            return samples
        for role, label, _ in sides:
            name = "%s[%s]" % (request.node.name, label)
            _targets.add(benchmark.group, role, name, samples[role], messages)
            recorded = _targets.RESULTS[benchmark.group][role]
            if messages:
                benchmark.extra_info["%s_msgs_per_s" % role] = round(messages / recorded["median"])
            else:
                benchmark.extra_info["%s_p50_us" % role] = round(recorded["median"] * 1e6, 1)
                benchmark.extra_info["%s_p99_us" % role] = round(recorded["p99"] * 1e6, 1)
        return samples

    return run


@pytest.fixture(scope="session")
def master_client():
    """A Master and 2 Worker processes (identity method ``foo``) and a
    Client of it here (_peers.master_cluster), shared by the benchmarks
    of the run."""
    with _peers.master_cluster() as client:
        yield client


@pytest.hookimpl(trylast=True)     # after pytest-benchmark's tables
def pytest_terminal_summary(terminalreporter, config):
    lines = _targets.summary_lines()
    if not lines:
        return
    terminalreporter.section("targets (issue 15): ours against each baseline, one run")
    for line in lines:
        terminalreporter.write_line(line)
    path = config.option.bench_json
    if path:
        _targets.write_json(path)
        terminalreporter.write_line("(written to %s)" % path)
