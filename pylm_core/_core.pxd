# cdef classes of the pylm_core extension, for cimport by siblings and tests.
from libc.stdint cimport int64_t, uint64_t
from pylm_core.libzmq cimport pz_msg_t
from pylm_core.wire cimport pz_env


cdef class Frame:
    cdef:
        pz_msg_t msg            # owned; closed in __dealloc__


cdef class PalmMessage:
    cdef:
        # the string fields, always str ("" is protobuf's default)
        object _pipeline, _client, _function, _cache, _error
        int64_t _stage
        # pylm's field 16 (PZ_FLAG_BATCH...), kept so hooks do not lose it
        uint64_t _flags
        # pylm's field 17, the client's call id
        uint64_t _call
        # bytes or a bytes-like object; None while the payload is a view
        object _payload
        # the buffer a payload view points into (bytes or Frame)
        object _owner
        const char *_view_p
        Py_ssize_t _view_n, _view_off

    cdef int to_env(self, pz_env *env, Py_buffer *payload_buf) except -1
    cdef int from_env(self, pz_env *env, object owner) except -1
