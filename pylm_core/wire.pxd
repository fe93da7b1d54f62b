# Declarations over wire.h: the envelope's protobuf wire format in C.
from libc.stdint cimport int64_t, uint64_t

cdef extern from "wire.h" nogil:
    enum:
        PZ_F_PIPELINE, PZ_F_CLIENT, PZ_F_FUNCTION, PZ_F_CACHE, PZ_F_PAYLOAD
        PZ_F_ERROR, PZ_NSLICE
    enum:
        PZ_OK, PZ_E_VARINT, PZ_E_FIELD0, PZ_E_WIRETYPE, PZ_E_LENGTH
        PZ_E_FIXED, PZ_E_UTF8, PZ_E_GROUP, PZ_E_DEPTH

    ctypedef struct pz_slice:
        const char *p
        size_t n

    ctypedef struct pz_env:
        pz_slice f[6]
        int64_t stage
        uint64_t flags
        uint64_t call
        uint64_t lost
        int bad_field

    int PZ_FLAG_BATCH
    size_t PZ_HINT_MAX

    ctypedef struct pz_batch:
        char *buf
        size_t len, cap
        int count
        int completed
        size_t hint

    int pz_batch_next(const char **pp, const char *end, pz_slice *out)
    int pz_batch_reserve(pz_batch *b, size_t extra)
    int pz_batch_add_env(pz_batch *b, const pz_env *e)
    int pz_batch_add_env_h(pz_batch *b, const pz_env *e, const pz_slice *head)
    int pz_batch_add_raw(pz_batch *b, const char *data, size_t n)
    int pz_batch_add_call(pz_batch *b, const char *prefix, size_t pn, const char *payload,
                          size_t n, uint64_t flags, uint64_t call)
    void pz_batch_free_cb(void *data, void *hint) noexcept
    int pz_batch_taking_back            # thread-local (see wire.h)
    uint64_t pz_batches_given          # counted with the GIL
    uint64_t pz_batches_freed_now()     # counted by libzmq's I/O thread

    int pz_parse(const char *buf, size_t n, pz_env *e)
    size_t pz_encoded_size(const pz_env *e)
    size_t pz_encoded_size_h(const pz_env *e, const pz_slice *head)
    char *pz_encode(const pz_env *e, char *out)
    char *pz_encode_h(const pz_env *e, const pz_slice *head, char *out)
    int pz_function_at(const pz_slice *fn, int64_t stage, pz_slice *out)
    bint pz_utf8_ok(const char *s, size_t n)
