"""pytest-benchmark set-up shared by benchmarks/bench_*.py (style.md 14).

* ``bench_*.py`` files are collected (the project's python_files is pytest's
  default, test_*.py).
* ``--rounds``, ``--warmup-rounds``, ``--iterations`` override what a
  benchmark passes to ``bench``; with none of them at all, pytest-benchmark
  calibrates by itself.  Give sub-microsecond functions ``iterations``:
  its calibration runs them once per round, and then the timer calls
  and the harness (~0.25 us here) are most of what is measured.
* ``bench(fn, *args, role=...)`` records the median under the test's
  benchmark group; for every group with an ``ours`` and a ``baseline`` run
  the ratio of medians is printed after pytest-benchmark's tables.  Times are
  reported, never asserted.

Run with ``make bench`` (adds --benchmark-disable-gc).
"""

import os
import sys

import pytest

# the protobuf reference class lives with the tests
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tests"))

_MEDIANS = {}   # group -> {role: (median seconds, test name)}


def pytest_addoption(parser):
    group = parser.getgroup("pylm benchmarks")
    group.addoption("--rounds", type=int, default=None,
                    help="rounds per benchmark (benchmark.pedantic)")
    group.addoption("--warmup-rounds", type=int, default=None,
                    help="warm-up rounds per benchmark (benchmark.pedantic)")
    group.addoption("--iterations", type=int, default=None,
                    help="calls per round (benchmark.pedantic)")


def pytest_collect_file(file_path, parent):
    # a file named on the command line is collected by pytest itself
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture
def bench(benchmark, request):
    """``bench(fn, *args, role="ours"|"baseline", rounds=None,
    warmup_rounds=None, iterations=None)``: benchmark fn(*args)."""
    opts = request.config.option

    def run(fn, *args, role, rounds=None, warmup_rounds=None, iterations=None):
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
            _MEDIANS.setdefault(benchmark.group, {})[role] = (
                stats.stats.median, request.node.name)
        return result

    return run


def pytest_terminal_summary(terminalreporter):
    lines = []
    for group, roles in _MEDIANS.items():
        if "ours" in roles and "baseline" in roles:
            (ours, ours_name), (base, base_name) = roles["ours"], roles["baseline"]
            lines += [
                "%s: ours     %-34s median %10.1f ns" % (group, ours_name, ours * 1e9),
                "%s: baseline %-34s median %10.1f ns" % (group, base_name, base * 1e9),
                "%s: baseline / ours = %.2fx  (ours / baseline = %.3f)"
                % (group, base / ours, ours / base),
            ]
    if lines:
        terminalreporter.section("ratio of medians")
        for line in lines:
            terminalreporter.write_line(line)
