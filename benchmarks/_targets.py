"""The results of one pytest benchmark run, and the targets they are held
to: the summary table that ends ``make bench``.

Each benchmark adds its result under its group and role
(:func:`add`; conftest.py's ``bench`` fixture does it for every
pytest-benchmark run, and bench_job.py for the C reference it times
itself).  The role ``ours`` is compared with every other role of its group:
the ratio of throughputs (msgs/s ours / theirs) for a group with messages
per round, the ratio of latencies (ours / theirs, lower is better) for one
call per round.  Where TARGETS names a target the row says whether the run
met it; a role in REFERENCES is a reference row, without a target.  Ratios
are figures of one run next to their baseline; nothing here is asserted.
"""

import json
import os

#: (group, role) -> [(statistic, bound)].  "speed": ours msgs/s over theirs
#: must be >= bound; "p50"/"p99": ours latency over theirs must be <= bound.
TARGETS = {
    # issue 15
    ("job", "baseline"): [("speed", 2.0)],
    ("job", "pool100"): [("speed", 2.0)],
    ("large-64KiB", "baseline"): [("speed", 1.0)],
    ("large-1MiB", "baseline"): [("speed", 1.0)],
    ("eval", "baseline"): [("p50", 1.0), ("p99", 1.2)],
    ("stream", "baseline"): [("speed", 2.5)],
    # issues 13 and 14
    ("job-stats", "baseline"): [("speed", 0.95)],
    ("aio-job", "baseline"): [("speed", 0.8)],
    ("futures-map", "baseline"): [("speed", 0.8)],
}

#: (group, role) shown as a reference (a physical bound), not a target.
REFERENCES = {("job", "c-libzmq")}

#: Every result of the run: group -> role -> dict (see add).
RESULTS = {}


def add(group, role, name, times, messages=0):
    """Record a result: `times` the seconds of each round, `messages` per
    round (0: one call per round, a latency)."""
    data = sorted(times)
    RESULTS.setdefault(group, {})[role] = {
        "name": name, "rounds": len(data), "messages": messages,
        "median": _percentile(data, 0.5), "p99": _percentile(data, 0.99)}


def _percentile(data, q):
    """The q-quantile of the sorted `data` (nearest rank; the median of an
    even count is the mean of the middle two, as pytest-benchmark's)."""
    if q == 0.5:
        mid = len(data) // 2
        return data[mid] if len(data) % 2 else (data[mid - 1] + data[mid]) / 2
    return data[min(len(data) - 1, int(len(data) * q))]


def _speed(result):
    return result["messages"] / result["median"]


def _value(result):
    """What a row shows of one side: msgs/s, or the p50 latency."""
    if result["messages"]:
        return "%.0f msgs/s" % _speed(result)
    return "%.1f us p50" % (result["median"] * 1e6)


def _ratio(ours, theirs, statistic):
    if statistic == "speed":
        if ours["messages"]:
            return _speed(ours) / _speed(theirs)
        return theirs["median"] / ours["median"]
    key = "median" if statistic == "p50" else statistic
    return ours[key] / theirs[key]


def rows():
    """One row per (group, other role, statistic): a dict with the group,
    the roles' names, both values, the ratio, the target (or None) and
    whether it was met."""
    out = []
    for group, roles in RESULTS.items():
        ours = roles.get("ours")
        if ours is None:
            continue
        for role, theirs in roles.items():
            if role == "ours":
                continue
            targets = TARGETS.get((group, role))
            if targets is None:
                targets = [("speed" if ours["messages"] else "p50", None)]
            for statistic, bound in targets:
                ratio = _ratio(ours, theirs, statistic)
                met = None
                if bound is not None:
                    met = ratio >= bound if statistic == "speed" else ratio <= bound
                out.append({
                    "group": group, "role": role, "statistic": statistic,
                    "ours": ours, "theirs": theirs, "ratio": ratio, "bound": bound,
                    "met": met, "reference": (group, role) in REFERENCES})
    return out


#: group, the other side's test, ours, theirs, ratio, target, verdict,
#: rounds (ours/theirs)
_FORMAT = "%-15s %-45s %15s %15s %12s %9s %-9s %s"


def summary_lines():
    """The summary table, one line per row (empty when nothing ran)."""
    table = rows()
    if not table:
        return []
    lines = [_FORMAT % ("group", "ours against", "ours", "theirs", "ratio", "target", "",
                        "rounds")]
    for row in table:
        ours, theirs, statistic = row["ours"], row["theirs"], row["statistic"]
        if statistic == "speed":
            ratio = "%.2fx" % row["ratio"]
            target = ">= %.2fx" % row["bound"] if row["bound"] is not None else ""
            shown = (_value(ours), _value(theirs))
        else:
            ratio = "%.2fx %s" % (row["ratio"], statistic)
            target = "<= %.2fx" % row["bound"] if row["bound"] is not None else ""
            key = "median" if statistic == "p50" else statistic
            shown = ("%.1f us %s" % (ours[key] * 1e6, statistic),
                     "%.1f us %s" % (theirs[key] * 1e6, statistic))
        if row["reference"]:
            verdict = "reference"
        elif row["met"] is None:
            verdict = ""
        else:
            verdict = "MET" if row["met"] else "MISSED"
        lines.append(_FORMAT % (
            row["group"], theirs["name"], shown[0].strip(), shown[1].strip(), ratio, target,
            verdict, "%d/%d" % (ours["rounds"], theirs["rounds"])))
    lines.append("ratio: ours msgs/s over theirs (higher is better), or ours latency over "
                 "theirs at p50/p99 (lower is better); medians of the rounds")
    return lines


def write_json(path):
    """The run's results and rows, for whoever regenerates the tables."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as out:
        json.dump({"results": RESULTS, "rows": [
            {k: v for k, v in row.items() if k not in ("ours", "theirs")} for row in rows()]},
            out, indent=1)
