# The libzmq calls pylm_core makes, declared over zmqapi.h (resolved at run
# time from the libzmq pyzmq loaded; see that header for why).

cdef extern from "zmqapi.h" nogil:
    ctypedef struct pz_msg_t:
        pass
    ctypedef struct pz_pollitem_t:
        void *socket
        int fd
        short events
        short revents
    ctypedef void pz_free_fn(void *data, void *hint) noexcept

    int PZ_ETERM, PZ_DONTWAIT, PZ_SNDMORE, PZ_POLLIN, PZ_POLLOUT
    int PZ_RCVTIMEO, PZ_FD, PZ_EVENTS, PZ_POLLERR

    int pz_load(const char *path, const char **missing)
    int pz_msg_init(pz_msg_t *)
    int pz_msg_init_size(pz_msg_t *, size_t)
    int pz_msg_init_data(pz_msg_t *, void *, size_t, pz_free_fn *, void *)
    int pz_msg_close(pz_msg_t *)
    int pz_msg_copy(pz_msg_t *, pz_msg_t *)
    void *pz_msg_data(pz_msg_t *)
    size_t pz_msg_size(const pz_msg_t *)
    int pz_msg_more(const pz_msg_t *)
    int pz_msg_send(pz_msg_t *, void *, int)
    int pz_msg_recv(pz_msg_t *, void *, int)
    int pz_poll(pz_pollitem_t *, int, long)
    int pz_getsockopt(void *, int, void *, size_t *)
    int pz_setsockopt(void *, int, const void *, size_t)
    int pz_errno()
    void pz_version(int *, int *, int *)
