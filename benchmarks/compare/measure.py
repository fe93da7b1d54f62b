"""How a point is measured, for every system the same way: a warm-up run
that grows until it lasts a quarter of the target, repetitions sized from
it to last about the target, interleaved across the systems (no system
always runs first or last), and a record per system with the median and
the spread of its repetitions (the "results" of the results file).

A system takes part in a point as a :class:`Runner`; :class:`Bench` runs
the points, keeps the records and shows progress.
"""

import math
import statistics
import sys
import time

from .systems import MIB, label


def log(msg):
    """A line on stderr that does not break the progress bar."""
    try:
        from tqdm import tqdm
        tqdm.write(msg, file=sys.stderr)
    except ImportError:
        print(msg, file=sys.stderr, flush=True)


class Runner:
    """How one system runs one point: ``fn(n)`` runs n messages (or calls,
    or codec operations) and returns the repetition's numbers.  `n0` is the
    size of the first, warm-up run, from which the repetitions are sized,
    between `nmin` and `nmax`."""

    def __init__(self, fn, n0, nmin, nmax):
        self.fn, self.n0, self.nmin, self.nmax = fn, n0, nmin, nmax


def clamp(x, lo, hi):
    """x as an int between lo and hi."""
    return int(max(lo, min(hi, x)))


def _rep_rate(rep):
    return rep["received"] / rep["seconds"] if rep["seconds"] > 0 else 0.0


def _percentile(values, q):
    data = sorted(values)
    if not data:
        return None
    return data[min(len(data) - 1, int(math.ceil(q * len(data))) - 1)]


class Bench:
    """Runs the points; keeps the records and the progress bar."""

    def __init__(self, reps, target, quick):
        self.reps, self.target, self.quick = reps, target, quick
        self.records = []
        self.bar = None

    # progress -------------------------------------------------------------
    def start_bar(self, total):
        try:
            from tqdm import tqdm
        except ImportError:
            self.bar = None
            return
        self.bar = tqdm(total=total, unit="run", dynamic_ncols=True, file=sys.stderr,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")

    def tick(self, n=1):
        if self.bar is not None:
            self.bar.update(n)

    def say(self, what):
        if self.bar is not None:
            self.bar.set_description_str(what[:48])
        else:
            print("...", what, file=sys.stderr, flush=True)

    def close_bar(self):
        if self.bar is not None:
            self.bar.close()

    # records --------------------------------------------------------------
    def skip(self, workload, systems, reason, **point):
        """A "skipped" record, with its reason, for each of `systems`."""
        for system in systems:
            self.records.append(dict(point, workload=workload, system=system,
                                     label=label(workload, system), status="skipped",
                                     reason=reason))
            self.tick(self.reps + 1)

    def point(self, workload, kind, runners, **point):
        """Measure one point for every system in `runners` ({system:
        Runner}); kind is 'throughput', 'latency' or 'codec'."""
        self.say("%s %s" % (workload, " ".join("%s=%s" % kv for kv in point.items())))
        sizes, errors, reps = {}, {}, {s: [] for s in runners}
        for system, r in runners.items():
            try:
                # warm-up: grow until a run lasts a quarter of the target,
                # so that one slow first run does not size the repetitions
                n = r.n0
                while True:
                    t0 = time.perf_counter()
                    first = r.fn(n)
                    if n >= r.nmax or time.perf_counter() - t0 >= self.target / 4:
                        break
                    n = min(r.nmax, n * 4)
                sizes[system] = self._size(kind, r, first)
            except Exception as exc:
                errors[system] = "%s: %s" % (type(exc).__name__, exc)
                log("%s %s %s: %s" % (workload, point, system, errors[system]))
            self.tick()
        order = list(runners)
        for rep in range(self.reps):
            # rotate the order: no system always runs first or last
            for system in order[rep % len(order):] + order[:rep % len(order)]:
                if system not in errors:
                    try:
                        reps[system].append(runners[system].fn(sizes[system]))
                    except Exception as exc:
                        errors[system] = "%s: %s" % (type(exc).__name__, exc)
                        log("%s %s %s: %s" % (workload, point, system, errors[system]))
                self.tick()
        for system in runners:
            rec = dict(point, workload=workload, system=system, label=label(workload, system))
            rec.update(summarize(kind, reps[system], point.get("payload")))
            if system in errors:
                rec["error"] = errors[system]
                rec["status"] = "error" if not reps[system] else "partial"
            else:
                rec["status"] = "ok"
            self.records.append(rec)
        return self.records[-len(runners):]

    def _size(self, kind, r, first):
        if kind == "throughput":
            rate = _rep_rate(first)
            return clamp(rate * self.target, r.nmin, r.nmax)
        if kind == "latency":
            lat = first["latencies"]
            if not lat:
                return r.nmin
            return clamp(self.target / statistics.median(lat), r.nmin, r.nmax)
        return clamp(first["ops"] / first["seconds"] * self.target, r.nmin, r.nmax)


def summarize(kind, reps, payload=None):
    """The numbers of a record from its repetitions: msgs/s (throughput),
    p50/p99 latency (latency) or ns per operation (codec)."""
    out = {"repetitions": len(reps), "reps": reps}
    if not reps:
        return out
    if kind == "throughput":
        rates = [_rep_rate(r) for r in reps]
        sent = sum(r["sent"] for r in reps)
        received = sum(r["received"] for r in reps)
        out.update(msgs_per_s=statistics.median(rates), msgs_per_s_min=min(rates),
                   msgs_per_s_max=max(rates), messages_per_rep=reps[-1]["sent"],
                   sent=sent, received=received, lost=sent - received)
        if payload:
            out["mib_per_s"] = out["msgs_per_s"] * payload / MIB
    elif kind == "latency":
        p50s = [_percentile(r["latencies"], 0.50) for r in reps if r["latencies"]]
        p99s = [_percentile(r["latencies"], 0.99) for r in reps if r["latencies"]]
        calls = sum(r["calls"] for r in reps)
        lost = sum(r.get("lost", 0) + r.get("wrong", 0) for r in reps)
        out.update(p50_us=statistics.median(p50s) * 1e6 if p50s else None,
                   p99_us=statistics.median(p99s) * 1e6 if p99s else None,
                   calls_per_rep=reps[-1]["calls"], calls=calls, lost=lost)
        # the raw latencies are many: keep per-repetition percentiles only
        def us(value):
            return None if value is None else value * 1e6

        out["reps"] = [{"calls": r["calls"], "answered": len(r["latencies"]),
                        "lost": r.get("lost", 0) + r.get("wrong", 0),
                        "p50_us": us(_percentile(r["latencies"], 0.50)),
                        "p99_us": us(_percentile(r["latencies"], 0.99))} for r in reps]
    else:
        per_op = [r["seconds"] / r["ops"] * 1e9 for r in reps]
        out.update(ns_per_op=statistics.median(per_op), ns_per_op_min=min(per_op),
                   ns_per_op_max=max(per_op), ops_per_rep=reps[-1]["ops"])
        out["reps"] = [{"ops": r["ops"], "seconds": r["seconds"]} for r in reps]
    return out


def latency_runner(call):
    """fn(n): n calls of call(), one at a time; their latencies."""
    def run(n):
        lat = []
        t_start = time.perf_counter()
        for _ in range(n):
            t0 = time.perf_counter()
            call()
            lat.append(time.perf_counter() - t0)
        return {"latencies": lat, "calls": n, "lost": 0,
                "seconds": time.perf_counter() - t_start}
    return run
