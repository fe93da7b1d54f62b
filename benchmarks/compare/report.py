"""What a run leaves behind, from its results: the markdown tables (the
ones README.md shows), the two charts, and the files in the output folder
(compare-<host>-<date>.json with copies as latest.json, latest.md and
latest-*.png).  ``--plot`` redraws them from an earlier results file.

The results file ("schema": SCHEMA) holds "machine" (machine.py), "run"
(date, options, load, pylm 0.14.4's versions, failed phases), "systems"
(systems.SYSTEMS), "phases", and "results": one record per point and
system (measure.py).
"""

import json
import shutil
from pathlib import Path

from . import pylm014
from .measure import log
from .phases import (
    ENVELOPE_SYSTEMS, EVAL_SYSTEMS, JOB_SYSTEMS, PAYLOAD_SIZES, PAYLOAD_WORKERS, SMALL,
    STREAM_SYSTEMS, WORKER_COUNTS)
from .systems import KIB, MIB, SYSTEMS

#: The version of the results file's layout.
SCHEMA = 1
#: The colour of each system in the charts.
COLORS = {
    "pylm": "#1f77b4", "pyzmq": "#2ca02c", "pool1": "#ff7f0e", "pool100": "#d62728",
    "ppe": "#9467bd", "pylm014": "#8c564b", "memcpy": "#7f7f7f", "protobuf": "#17becf",
}


def _fmt_rate(x):
    if x is None:
        return "-"
    if x >= 1e6:
        return "%.2fM" % (x / 1e6)
    if x >= 1e4:
        return "%.0fk" % (x / 1e3)
    if x >= 1e3:
        return "%.1fk" % (x / 1e3)
    return "%.0f" % x


def _fmt_size(size):
    if size >= MIB:
        return "%d MiB" % (size // MIB)
    if size >= KIB:
        return "%d KiB" % (size // KIB)
    return "%d B" % size


def _find(records, **match):
    for rec in records:
        if all(rec.get(k) == v for k, v in match.items()):
            return rec
    return None


def _lost_note(rec):
    if rec and rec.get("lost"):
        total = rec.get("sent") or rec.get("calls") or 0
        return " (lost %d/%d)" % (rec["lost"], total) if total else " (lost %d)" % rec["lost"]
    return ""


def _cell(rec, value_key, fmt):
    if rec is None:
        return "-"
    if rec.get("status") == "skipped":
        return "skipped"
    value = rec.get(value_key)
    if value is None:
        return "failed" if rec.get("error") else "-"
    return fmt(value) + _lost_note(rec)


def markdown(data):
    """The tables of a results file, with a first line that says where and
    how they were measured."""
    recs = data["results"]
    meta = data["machine"]
    run = data["run"]
    lines = []
    lines.append("Measured %s on %s: %s, %s cores, Python %s, pyzmq %s / libzmq %s; "
                 "%s run, median of %d repetitions per point, every system in the same run "
                 "(load average %s at the start, %s at the end)."
                 % (run["date"][:10], meta.get("host"), meta.get("cpu_model"), meta.get("cores"),
                    meta.get("python"), meta.get("pyzmq"), meta.get("libzmq"),
                    "quick" if run["quick"] else "full", run["repetitions"],
                    "%.1f" % run["loadavg_start"][0] if run.get("loadavg_start") else "?",
                    "%.1f" % run["loadavg_end"][0] if run.get("loadavg_end") else "?"))
    lines.append("")

    has = {r["workload"] for r in recs}
    if "job" in has:
        lines.extend(_job_tables(recs))
    if "eval" in has:
        lines.extend(_eval_table(recs))
    if "stream" in has:
        lines.extend(_stream_table(recs))
    if "envelope" in has:
        lines.extend(_envelope_table(recs))
    notes = sorted({"%s: %s" % (r["label"], r.get("reason") or r.get("error"))
                    for r in recs if r.get("status") in ("skipped", "error", "partial")})
    if notes:
        lines.extend("- %s" % n for n in notes)
        lines.append("")
    lines.append("pylm 0.14.4's own Client loses replies (it subscribes after it sends): "
                 "a repetition ends after %d ms without a reply (%d ms for an eval) and what "
                 "did not come back is shown as lost." % (pylm014.JOB_TIMEOUT_MS,
                                                          pylm014.EVAL_TIMEOUT_MS))
    return "\n".join(lines) + "\n"


def _job_tables(recs):
    lines = []
    lines.append("**Job throughput, 100 B payloads (msgs/s)**")
    lines.append("")
    lines.append("| system | " + " | ".join("%d worker%s" % (w, "s" if w > 1 else "")
                                             for w in WORKER_COUNTS) + " |")
    lines.append("|---|" + "---:|" * len(WORKER_COUNTS))
    for system in JOB_SYSTEMS:
        cells = [_cell(_find(recs, workload="job", system=system, workers=w, payload=SMALL),
                       "msgs_per_s", _fmt_rate) for w in WORKER_COUNTS]
        lines.append("| %s | %s |" % (SYSTEMS[system], " | ".join(cells)))
    lines.append("")

    # job vs payload
    lines.append("**Job throughput by payload size, %d workers (msgs/s; MiB/s)**"
                 % PAYLOAD_WORKERS)
    lines.append("")
    lines.append("| system | " + " | ".join(_fmt_size(s) for s in PAYLOAD_SIZES) + " |")
    lines.append("|---|" + "---:|" * len(PAYLOAD_SIZES))

    def both(rec):
        if rec is None or rec.get("msgs_per_s") is None:
            return _cell(rec, "msgs_per_s", _fmt_rate)
        text = _fmt_rate(rec["msgs_per_s"])
        if rec.get("payload", 0) >= 4 * KIB:
            text += "; %.0f MiB/s" % rec["mib_per_s"]
        return text + _lost_note(rec)

    for system in JOB_SYSTEMS + ("memcpy",):
        cells = [both(_find(recs, workload="job", system=system, workers=PAYLOAD_WORKERS,
                            payload=s)) for s in PAYLOAD_SIZES]
        lines.append("| %s | %s |" % (SYSTEMS[system], " | ".join(cells)))
    lines.append("")
    return lines


def _eval_table(recs):
    lines = []
    lines.append("**Round trip of one call, 100 B (microseconds)**")
    lines.append("")
    lines.append("| system | p50 | p99 | calls (lost) |")
    lines.append("|---|---:|---:|---:|")
    for system in EVAL_SYSTEMS:
        rec = _find(recs, workload="eval", system=system)
        if rec is None:
            continue
        if rec.get("status") == "skipped":
            lines.append("| %s | skipped | | |" % rec["label"])
            continue
        f = (lambda v: "-" if v is None else "%.0f" % v)
        lines.append("| %s | %s | %s | %s%s |" % (
            rec["label"], f(rec.get("p50_us")), f(rec.get("p99_us")), rec.get("calls", "-"),
            " (%d)" % rec["lost"] if rec.get("lost") else ""))
    lines.append("")
    return lines


def _stream_table(recs):
    lines = ["**3-stage stream, 100 B payloads (msgs/s)**", "",
             "| system | msgs/s |", "|---|---:|"]
    for system in STREAM_SYSTEMS:
        rec = _find(recs, workload="stream", system=system)
        if rec is not None:
            lines.append("| %s | %s |" % (rec["label"], _cell(rec, "msgs_per_s", _fmt_rate)))
    lines.append("")
    return lines


def _envelope_table(recs):
    lines = ["**Envelope codec: decode + stage += 1 + encode, 100 B payload (ns per message)**",
             "", "| codec | ns/op |", "|---|---:|"]
    for system in ENVELOPE_SYSTEMS:
        rec = _find(recs, workload="envelope", system=system)
        if rec is not None:
            lines.append("| %s | %s |" % (rec["label"],
                                          _cell(rec, "ns_per_op", lambda v: "%.0f" % v)))
    lines.append("")
    return lines


def plot(data, stem):
    """<stem>-workers.png and <stem>-payload.png from the results."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    recs = data["results"]
    if not any(r["workload"] == "job" for r in recs):
        return []
    run = data["run"]
    meta = data["machine"]
    subtitle = "%s, %s cores, %s; %s run, median of %d reps" % (
        meta.get("cpu_model"), meta.get("cores"), run["date"][:10],
        "quick" if run["quick"] else "full", run["repetitions"])
    def tick(v, _):
        for scale, suffix in ((1e6, "M"), (1e3, "k")):
            if v >= scale:
                return "%g%s" % (v / scale, suffix)
        return "%g" % v

    rate_fmt = FuncFormatter(tick)
    bars = "bars: fastest and slowest repetition"
    written = []

    def series(system, key, xs, **match):
        pts = []
        for x in xs:
            rec = _find(recs, workload="job", system=system, **{key: x}, **match)
            if rec and rec.get("msgs_per_s"):
                pts.append((x, rec))
        return pts

    def errbars(pts, scale=1.0):
        y = [r["msgs_per_s"] * scale for _, r in pts]
        lo = [max(0.0, (r["msgs_per_s"] - r["msgs_per_s_min"]) * scale) for _, r in pts]
        hi = [max(0.0, (r["msgs_per_s_max"] - r["msgs_per_s"]) * scale) for _, r in pts]
        return y, [lo, hi]

    def mark_lost(ax, pts, ys):
        for (x, rec), y in zip(pts, ys):
            if rec.get("lost"):
                ax.annotate("lost %.0f%%" % (100.0 * rec["lost"] / rec["sent"]), (x, y),
                            textcoords="offset points", xytext=(4, -11), fontsize=7,
                            color=COLORS["pylm014"])

    # throughput vs workers
    fig, ax = plt.subplots(figsize=(8.5, 6))
    for system in JOB_SYSTEMS:
        pts = series(system, "workers", WORKER_COUNTS, payload=SMALL)
        if not pts:
            continue
        y, err = errbars(pts)
        ax.errorbar([x for x, _ in pts], y, yerr=err, marker="o", capsize=3,
                    color=COLORS[system], label=SYSTEMS[system],
                    linewidth=2.5 if system == "pylm" else 1.5)
        mark_lost(ax, pts, y)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(WORKER_COUNTS))
    ax.set_xticklabels([str(w) for w in WORKER_COUNTS])
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(rate_fmt)
    ax.set_xlabel("worker processes")
    ax.set_ylabel("messages / s (log)")
    ax.set_title("Job throughput vs workers, 100 B payloads\n%s; %s" % (subtitle, bars),
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    path = "%s-workers.png" % stem
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    # throughput vs payload size: msgs/s and MiB/s
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 6))
    for system in JOB_SYSTEMS + ("memcpy",):
        pts = series(system, "payload", PAYLOAD_SIZES, workers=PAYLOAD_WORKERS)
        if not pts:
            continue
        style = dict(marker="o", capsize=3, color=COLORS[system], label=SYSTEMS[system],
                     linewidth=2.5 if system == "pylm" else 1.5,
                     linestyle="--" if system == "memcpy" else "-")
        xs = [x for x, _ in pts]
        y, err = errbars(pts)
        ax1.errorbar(xs, y, yerr=err, **style)
        mark_lost(ax1, pts, y)
        y2 = [r["msgs_per_s"] * x / MIB for x, r in pts]
        ax2.plot(xs, y2, **{k: v for k, v in style.items() if k != "capsize"})
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(list(PAYLOAD_SIZES))
        ax.set_xticklabels([_fmt_size(s) for s in PAYLOAD_SIZES])
        ax.minorticks_off()
        ax.set_xlabel("payload size (log)")
        ax.grid(True, which="major", alpha=0.3)
    ax1.yaxis.set_major_formatter(rate_fmt)
    ax1.set_ylabel("messages / s (log)")
    ax1.set_title("messages / s", fontsize=10)
    ax2.set_ylabel("MiB / s (log)")
    ax2.set_title("MiB / s (memcpy: one copy, the physical bound)", fontsize=10)
    ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: "%g" % v))
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle("Job throughput vs payload size, %d workers\n%s; %s"
                 % (PAYLOAD_WORKERS, subtitle, bars), fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path = "%s-payload.png" % stem
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def write_outputs(data, out_dir, plots=True):
    """Write the results file, its latest.* copies, the tables and (with
    `plots`, when matplotlib imports) the charts to `out_dir`; the tables
    and the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in data["machine"]["host"])
    stamp = data["run"]["date"].replace(":", "").replace("-", "")[:15]
    path = out_dir / ("compare-%s-%s.json" % (host, stamp))
    text = json.dumps(data, indent=1, sort_keys=False) + "\n"
    path.write_text(text)
    (out_dir / "latest.json").write_text(text)
    table = markdown(data)
    (out_dir / "latest.md").write_text(table)
    written = [path, out_dir / "latest.json", out_dir / "latest.md"]
    if plots:
        try:
            for png in plot(data, str(path.with_suffix(""))):
                latest = out_dir / Path(png).name.replace(path.stem, "latest")
                shutil.copyfile(png, latest)
                written += [Path(png), latest]
        except ImportError as exc:
            log("no charts: %s (pip install matplotlib, or the bench extra)" % exc)
    return table, written
