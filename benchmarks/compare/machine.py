"""What the results were measured on: the "machine" object of the results
file (host, CPU, cores, memory, Python, the versions of pyzmq, libzmq, pylm
and protobuf, and the git commit), so that a table can say where it comes
from and two files can be told apart."""

import os
import platform
import socket
import subprocess
import sys

from . import ROOT


def machine_info():
    """The "machine" object; a field this machine cannot tell is None or
    left out."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "host": socket.gethostname(),
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
    }
    try:
        with open("/proc/meminfo") as fh:
            kib = int(fh.readline().split()[1])
            info["memory_gib"] = round(kib / (1024 * 1024), 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import zmq
        info["pyzmq"] = zmq.__version__
        info["libzmq"] = zmq.zmq_version()
    except ImportError:
        pass
    try:
        import pylm
        info["pylm"] = getattr(pylm, "__version__", None)
    except ImportError:
        pass
    try:
        import google.protobuf
        info["protobuf"] = google.protobuf.__version__
    except ImportError:
        pass
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
            text=True, timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        info["git_dirty"] = bool(dirty.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info
