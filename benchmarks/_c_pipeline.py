"""The C libzmq pipeline (benchmarks/c/pipeline.c): built with the C
compiler against the libzmq that pyzmq loaded (or the system's), and run
as zguide's ventilator -> workers -> sink with the message count of the
"job" group.  The per-message physical reference of issue 15: what libzmq
itself does on this machine, without Python anywhere.

:func:`build` raises :class:`Unavailable` with the reason when there is no
compiler or no libzmq to link with; :func:`run` returns the seconds of
each round.
"""

import ctypes.util
import os
import shutil
import subprocess

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c", "pipeline.c")


class Unavailable(Exception):
    """The C reference cannot be built here (the message says why)."""


def pyzmq_libzmq():
    """The path of the libzmq that pyzmq loaded in this process (a wheel's
    private copy, or the system's), from /proc/self/maps; None if not
    found."""
    import zmq  # noqa: F401  (loads libzmq)
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if os.path.basename(path).startswith("libzmq") and os.path.exists(path):
                    return path
    except OSError:
        pass
    return None


def build(directory):
    """Compile pipeline.c into `directory`; returns the program's path."""
    if not os.path.exists(SOURCE):
        raise Unavailable("%s is missing" % SOURCE)
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise Unavailable("no C compiler (cc, gcc or $CC)")
    library = pyzmq_libzmq()
    if library is not None:
        link = [library, "-Wl,-rpath," + os.path.dirname(library)]
    elif ctypes.util.find_library("zmq"):
        link = ["-lzmq"]
    else:
        raise Unavailable("no libzmq to link with (pyzmq's not found in /proc/self/maps, "
                          "no system libzmq)")
    program = os.path.join(directory, "pipeline")
    cmd = [cc, "-O2", "-o", program, SOURCE] + link + ["-lpthread"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise Unavailable("%s failed: %s" % (" ".join(cmd), done.stderr.strip()[-500:]))
    return program


def run(program, workers, rounds, messages, timeout=300.0):
    """`rounds` rounds of `messages` 100-byte messages through the
    ventilator, `workers` worker processes and the sink (after a warm-up
    round); returns the seconds of each.  The processes are stopped at
    the end, whatever happens."""
    sink = subprocess.Popen([program, "sink", str(workers), str(rounds), str(messages)],
                            stdout=subprocess.PIPE, text=True)
    procs = [sink]
    try:
        endpoints = sink.stdout.readline().split()
        if len(endpoints) != 2:
            raise RuntimeError("the C sink did not start (exit code %s)" % sink.poll())
        for _ in range(workers):
            procs.append(subprocess.Popen([program, "worker"] + endpoints))
        out, _ = sink.communicate(timeout=timeout)
        if sink.returncode != 0:
            raise RuntimeError("the C sink exited with %s" % sink.returncode)
        times = [float(line.split()[1]) for line in out.splitlines() if line.startswith("round ")]
        if len(times) != rounds:
            raise RuntimeError("the C sink reported %d of %d rounds" % (len(times), rounds))
        return times
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
