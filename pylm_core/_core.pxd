# cdef classes of the pylm_core extension, for cimport by siblings and tests.
from libc.stdint cimport int64_t, uint64_t
from pylm_core.libzmq cimport pz_msg_t
from pylm_core.wire cimport pz_env, pz_slice


cdef class Frame:
    cdef:
        pz_msg_t msg            # owned; closed in __dealloc__


cdef class PalmMessage:
    cdef:
        # The string fields: str ("" is protobuf's default), or None while
        # still undecoded, their UTF-8 then being _raw[PZ_F_...] in _owner
        # (decoding is lazy: only a field that is read becomes a str).
        # _client and _error are never None: worker_pool.pyx reads them directly.
        object _pipeline, _client, _function, _cache, _error
        int64_t _stage
        # pylm's field 16 (PZ_FLAG_BATCH...), kept so hooks do not lose it
        uint64_t _flags
        # pylm's field 17, the client's call id
        uint64_t _call
        # bytes or a bytes-like object; None while the payload is still
        # _raw[PZ_F_PAYLOAD] in _owner (a view, if 64 KiB or more)
        object _payload
        # the immutable buffer (bytes or Frame) that the undecoded fields
        # point into; None when there are none
        object _owner
        pz_slice _raw[6]        # indexed by PZ_F_*, as pz_env.f

    cdef int to_env(self, pz_env *env, Py_buffer *payload_buf) except -1
    cdef int from_env(self, pz_env *env, object owner) except -1
