# The one return-code checker for every libzmq call the core makes.

cdef object _zmq_error_cls = None
cdef object _zmq_again = None
cdef object _zmq_term = None


cdef int _bind_zmq_errors() except -1:
    """Cache pyzmq's exception classes, so ours are the ones users catch."""
    global _zmq_error_cls, _zmq_again, _zmq_term
    import zmq
    _zmq_error_cls = zmq.ZMQError
    _zmq_again = zmq.Again
    _zmq_term = zmq.ContextTerminated
    return 0


cdef int _check_rc(int rc) except -1:
    """Raise for a failed libzmq call (rc == -1): EAGAIN -> zmq.Again,
    ETERM -> zmq.ContextTerminated, anything else -> zmq.ZMQError.

    EINTR is returned as -2 after giving Python's signal handlers a chance
    to run (a KeyboardInterrupt propagates from here), so that the caller
    can retry with the time it has left."""
    if rc != -1:
        return 0
    return _raise_errno(pz_errno())


cdef int _raise_errno(int err) except -1:
    """_check_rc for an errno already read (see there)."""
    if err == EINTR:
        PyErr_CheckSignals()
        return -2
    if err == EAGAIN:
        raise _zmq_again(err)
    if err == PZ_ETERM:
        raise _zmq_term(err)
    raise _zmq_error_cls(err)
