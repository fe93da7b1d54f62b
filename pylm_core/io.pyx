# Frame-level helpers over libzmq shared by every loop: receive a multipart
# message into zmq_msg_t's, send an encoded envelope, wait on a full queue
# while staying stoppable.  nogil where they block.

from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

cdef enum:
    MAX_FRAMES = 4          # no message of ours has more frames than this
    IN_PLAIN = 0            # one frame: an envelope (PULL, our DEALER)
    IN_TOPIC = 1            # two frames: topic, envelope (SUB)


cdef inline long long now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <long long>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline long long now_ms() noexcept nogil:
    return now_ns() // 1000000


cdef inline void *sock_handle(object sock) except NULL:
    """libzmq's socket pointer of a pyzmq Socket (its `underlying`)."""
    cdef size_t addr = sock.underlying
    if addr == 0:
        raise ValueError("socket is closed")
    return <void *>addr


cdef struct Multipart:
    pz_msg_t f[MAX_FRAMES]
    int n                   # frames kept (at most MAX_FRAMES)
    int total               # frames the message had


cdef inline void mp_init(Multipart *m) noexcept nogil:
    cdef int i
    for i in range(MAX_FRAMES):
        pz_msg_init(&m.f[i])
    m.n = 0
    m.total = 0


cdef inline void mp_close(Multipart *m) noexcept nogil:
    cdef int i
    for i in range(MAX_FRAMES):
        pz_msg_close(&m.f[i])
    m.n = 0
    m.total = 0


cdef int mp_recv(Multipart *m, void *sock, int flags) noexcept nogil:
    """Receive one whole multipart message; frames past MAX_FRAMES are read
    and dropped (m.total counts them).  0, or -1 with zmq_errno set (EAGAIN
    when flags has DONTWAIT and nothing is waiting).  zmq_msg_recv frees
    what a frame held before, so a Multipart is reused without closing."""
    cdef pz_msg_t extra
    cdef int more, rc
    m.n = 0
    m.total = 0
    if pz_msg_recv(&m.f[0], sock, flags) < 0:
        return -1
    m.n = 1
    m.total = 1
    more = pz_msg_more(&m.f[0])
    while more:
        if m.n < MAX_FRAMES:
            if pz_msg_recv(&m.f[m.n], sock, 0) < 0:
                return -1
            more = pz_msg_more(&m.f[m.n])
            m.n += 1
        else:
            pz_msg_init(&extra)
            rc = pz_msg_recv(&extra, sock, 0)
            more = pz_msg_more(&extra) if rc >= 0 else 0
            pz_msg_close(&extra)
            if rc < 0:
                return -1
        m.total += 1
    return 0


cdef inline const char *msg_ptr(pz_msg_t *m) noexcept nogil:
    return <const char *>pz_msg_data(m)


# The frame before a batch of envelopes on a pylm-to-pylm link:
# client -> server [BATCH_MARK, batch]; server -> client [topic, BATCH_MARK, batch].
BATCH_MARK = b"\x00pylm-batch"
cdef bytes _BATCH_MARK = BATCH_MARK


cdef inline bint is_mark(pz_msg_t *m) noexcept nogil:
    return pz_msg_size(m) == 11 and memcmp(pz_msg_data(m), b"\x00pylm-batch", 11) == 0


# The frame before [envelope, payload] on a pylm-to-pylm link: the payload
# travels in a frame of its own, pointing at the caller's buffer (no copy).
PAYLOAD_MARK = b"\x00pylm-payld"
cdef bytes _PAYLOAD_MARK = PAYLOAD_MARK


cdef inline bint is_payload_mark(pz_msg_t *m) noexcept nogil:
    return pz_msg_size(m) == 11 and memcmp(pz_msg_data(m), b"\x00pylm-payld", 11) == 0


cdef inline void take_payload(pz_env *env, pz_msg_t *m) noexcept nogil:
    """Point env's payload at frame m (the third frame of a PAYLOAD_MARK
    message)."""
    env.f[PZ_F_PAYLOAD].p = msg_ptr(m)
    env.f[PZ_F_PAYLOAD].n = pz_msg_size(m)


cdef inline bint for_other_client(pz_batch *b, object topic, const char *tp,
                                  size_t tn) noexcept:
    """Does batch b, which holds replies for client `topic` (bytes), hold
    any while a reply for client tp[0:tn] comes?  Then b is sent first: a
    batch frame goes to one client's topic."""
    return b.count != 0 and (tn != <size_t>PyBytes_GET_SIZE(topic)
                             or memcmp(tp, PyBytes_AS_STRING(topic), tn) != 0)


cdef int batch_to_msg(pz_batch *b, pz_msg_t *m) except -1:
    """Hand b's buffer to a new zmq message (libzmq frees it; no copy) and
    leave b empty."""
    global pz_batches_given
    if b.buf == NULL:
        pz_msg_init(m)
    elif pz_msg_init_data(m, b.buf, b.len, pz_batch_free_cb, NULL) != 0:
        raise MemoryError()
    else:
        pz_batches_given += 1
    b.buf = NULL
    b.len = b.cap = 0
    b.count = b.completed = 0
    return 0


cdef int send_owned(void *sock, pz_msg_t *m, int flags) except -1:
    """Send m (closing it on failure)."""
    cdef int rc, err
    while True:
        with nogil:
            rc = pz_msg_send(m, sock, flags)
        if rc >= 0:
            return 0
        err = pz_errno()
        if err == EINTR:
            PyErr_CheckSignals()
            continue
        pz_msg_close(m)
        _raise_errno(err)


cdef inline int envelope_frame(Multipart *mp, int kind, pz_msg_t **frame) noexcept nogil:
    """Where the envelope of an inbound message is: [env] (IN_PLAIN) or
    [topic, env] (IN_TOPIC) give 0, the same with BATCH_MARK before a batch
    give 1 (*frame is the batch), [PAYLOAD_MARK, env, payload] (IN_PLAIN, a
    large payload sent without a copy) gives 2 (*frame is the envelope, the
    payload is the frame after it); any other frame count gives -1."""
    cdef int first = 1 if kind == IN_TOPIC else 0
    if kind == IN_PLAIN and mp.total == 3 and is_payload_mark(&mp.f[0]):
        frame[0] = &mp.f[1]
        return 2
    if mp.total == first + 2 and is_mark(&mp.f[first]):
        frame[0] = &mp.f[first + 1]
        return 1
    if mp.total != first + 1:
        return -1
    frame[0] = &mp.f[first]
    return 0


cdef inline int poll_item(pz_pollitem_t *items, int n, void *sock, int fd,
                          short events) noexcept nogil:
    """Set items[n] (a zmq socket, or a plain fd when sock is NULL); n + 1."""
    items[n].socket = sock
    items[n].fd = fd
    items[n].events = events
    items[n].revents = 0
    return n + 1



cdef int env_to_msg(pz_env *env, pz_msg_t *out) noexcept nogil:
    """Encode env into a new zmq message (one copy of each field)."""
    cdef size_t n = pz_encoded_size(env)
    if pz_msg_init_size(out, n) != 0:
        return -1
    pz_encode(env, <char *>pz_msg_data(out))
    return 0


cdef class Waiter:
    """Sends that wait for room on a full queue (PUB with XPUB_NODROP, PUSH
    at its high-water mark) while watching a control socket, so that a
    slow peer applies back-pressure but never makes stop() hang."""
    cdef void *control
    cdef bint stopped

    cdef int send(self, pz_msg_t *m, void *sock, int flags) except -1:
        """Send m (ownership passes to libzmq on success; on a stop the
        message is closed).  Returns 0 when sent, 1 when stop was asked."""
        cdef int rc, err
        cdef pz_pollitem_t items[2]
        while True:
            with nogil:
                rc = pz_msg_send(m, sock, flags | PZ_DONTWAIT)
            if rc >= 0:
                return 0
            err = pz_errno()
            if err == EINTR:
                PyErr_CheckSignals()
                continue
            if err != EAGAIN:
                pz_msg_close(m)
                _check_rc(-1)
            items[0].socket = sock
            items[0].events = PZ_POLLOUT
            items[0].revents = 0
            items[1].socket = self.control
            items[1].events = PZ_POLLIN
            items[1].revents = 0
            with nogil:
                rc = pz_poll(items, 2 if self.control != NULL else 1, 100)
            if rc < 0 and _check_rc(rc) == -2:
                continue
            if self.control != NULL and items[1].revents & PZ_POLLIN:
                pz_msg_close(m)
                self.stopped = True
                return 1


cdef int drain(void *sock) except -1:
    """Read and discard what is waiting on sock (subscription messages on a
    server's XPUB: reading them is also what makes libzmq attach new
    subscribers and send them the welcome message)."""
    cdef pz_msg_t m
    cdef int rc
    pz_msg_init(&m)
    try:
        while True:
            with nogil:
                rc = pz_msg_recv(&m, sock, PZ_DONTWAIT)
            if rc < 0:
                if pz_errno() == EAGAIN:
                    return 0
                _check_rc(rc)
    finally:
        pz_msg_close(&m)


cdef int send_topic(Waiter waiter, void *sock, const char *tp, size_t tn, pz_msg_t *m,
                    const char *mark) except -1:
    """Publish [topic, (BATCH_MARK,) m], waiting for room for the topic frame
    (the rest of a multipart message always follows).  1 when stopped."""
    cdef pz_msg_t t
    if pz_msg_init_size(&t, tn) != 0:
        pz_msg_close(m)
        raise MemoryError()
    memcpy(pz_msg_data(&t), tp, tn)
    if waiter.send(&t, sock, PZ_SNDMORE):
        pz_msg_close(m)
        return 1
    if mark != NULL:
        _check_rc(pz_send(sock, mark, 11, PZ_SNDMORE))
    return send_owned(sock, m, 0)


cdef extern from "unistd.h" nogil:
    ssize_t read(int fd, void *buf, size_t count)


cdef int on_wakeup(int fd) except -1:
    """A signal arrived (signal.set_wakeup_fd wrote to fd): empty the fd and
    run Python's signal handlers now.  Without this, a handler waits for the
    loop's next message, since the core blocks in zmq_poll, not in Python."""
    cdef char buf[64]
    while read(fd, buf, 64) > 0:
        pass
    PyErr_CheckSignals()
    return 0
