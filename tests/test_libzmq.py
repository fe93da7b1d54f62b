"""One libzmq in the process, shared by pyzmq and pylm_core (style.md §5).

pylm_core resolves libzmq's entry points from the copy pyzmq has already
loaded; if it linked or loaded a second libzmq, inproc endpoints and
``Socket.underlying`` handles would not work across the two.
"""

import os
import re
import subprocess
import sys

import pytest

import pylm_core
import zmq

LIBZMQ = re.compile(r"(^|/)libzmq[-.][^/]*\.so(\.|$)")

CHILD = r"""
import re, sys
for name in sys.argv[1:]:
    __import__(name)
import pylm_core, zmq
LIBZMQ = re.compile(%r)
paths = set()
for line in open("/proc/self/maps"):
    fields = line.split()
    if len(fields) >= 6 and LIBZMQ.search(fields[5]):
        paths.add(fields[5])
print(len(paths), pylm_core.zmq_version(), zmq.zmq_version(), *sorted(paths))
""" % LIBZMQ.pattern


def libzmq_mappings():
    """The distinct files named like libzmq mapped into this process."""
    paths = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and LIBZMQ.search(fields[5]):
                paths.add(fields[5])
    return paths


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_one_libzmq_mapped():
    paths = libzmq_mappings()
    assert len(paths) == 1, paths
    (path,) = paths
    # it is the libzmq pyzmq ships (or links), not one found elsewhere
    backend = os.path.dirname(zmq.backend.cython._zmq.__file__)
    site = os.path.dirname(os.path.dirname(os.path.dirname(backend)))
    libs = os.path.join(site, "pyzmq.libs")
    if os.path.isdir(libs):
        assert os.path.dirname(path) == libs


def test_same_version_as_pyzmq():
    assert pylm_core.zmq_version() == zmq.zmq_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", pylm_core.zmq_version())


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
@pytest.mark.parametrize("first", [["pylm_core"], ["zmq"], ["zmq", "pylm_core"]],
                         ids=["core-first", "zmq-first", "both"])
def test_one_libzmq_in_a_fresh_process(first):
    """Whatever is imported first, a new interpreter maps one libzmq."""
    out = subprocess.run([sys.executable, "-c", CHILD, *first],
                         capture_output=True, text=True, timeout=60, check=True)
    count, core_version, zmq_version, *paths = out.stdout.split()
    assert count == "1", paths
    assert core_version == zmq_version
