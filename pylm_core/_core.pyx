# cython: language_level=3, embedsignature=True
"""pylm_core: the envelope codec and the message loops of pylm, in C.

One extension made of included parts (uvloop style): errors.pyx (libzmq
return codes), frame.pyx (received messages), envelope.pyx (the PALM codec),
io.pyx (frame-level helpers shared by the loops), router.pyx (the one poll
loop of every server and its routing table), executor.pyx (the execution part of
Server, Pipeline and Worker), publisher.pyx, worker_pool.pyx and intake.pyx (the
Master's three parts: publisher, worker pool, intake), client.pyx (the
client's send, receive and job loops), call_table.pyx (many calls of one
client in flight, told apart by call id: pylm.futures).  C declarations: zmqapi.h/libzmq.pxd (libzmq,
resolved at run time), wire.h/wire.pxd (the wire format), hold.h (buffers
lent to libzmq); constants: consts.pxi.  Everything the included files
cimport is cimported here, once.
"""

cimport cython
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release,
                             PyBuffer_FillInfo, PyObject_CheckBuffer,
                             PyBUF_SIMPLE)
from cpython.bytes cimport (PyBytes_FromStringAndSize, PyBytes_AS_STRING,
                            PyBytes_GET_SIZE)
from cpython.exc cimport PyErr_CheckSignals
from cpython.number cimport PyNumber_Index
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.errno cimport EINTR, EAGAIN, EHOSTUNREACH
from libc.stdint cimport int64_t, uint64_t, uintptr_t
from libc.string cimport memcpy, memcmp, memchr, memmove, memset
from libc.stdlib cimport calloc, free, malloc, realloc
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from pylm_core.libzmq cimport *
from pylm_core.wire cimport *

import sys

from pylm_core.errors import (DecodeError, RemoteError, error_text, NO_METHOD,
                              BAD_FUNCTION, WORKER_LOST)

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object, Py_ssize_t *) except NULL


def load_libzmq(str path):
    """Resolve libzmq's entry points from the object at `path`, which must
    already be loaded (pyzmq's backend extension, whose dependencies include
    the libzmq it uses).  Called once by pylm_core/__init__.py."""
    cdef const char *missing = NULL
    cdef bytes bpath = path.encode()
    if pz_load(bpath, &missing) != 0:
        raise ImportError("pylm_core: cannot use pyzmq's libzmq (%s): %s"
                          % (path, (<bytes>missing).decode(errors="replace") if missing else "?"))
    _bind_zmq_errors()


def zmq_version():
    """The version of the libzmq the core calls, as "major.minor.patch"."""
    cdef int a, b, c
    pz_version(&a, &b, &c)
    return "%d.%d.%d" % (a, b, c)


include "consts.pxi"
include "errors.pyx"
include "frame.pyx"
include "envelope.pyx"
include "io.pyx"
include "subscriptions.pyx"
include "router.pyx"
include "executor.pyx"
include "publisher.pyx"
include "worker_pool.pyx"
include "intake.pyx"
include "client.pyx"
include "call_table.pyx"
