# The Master's broker loop: clients -> workers -> clients, in C with the GIL
# released around every blocking call.  Python runs only for the hooks a
# subclass overrides (scatter, gather, handle_stream) and for logging of
# dropped input.  Shape from zguide's lbbroker/mdbroker: poll the workers
# always, take client messages only when a worker can take them.

from libc.stdlib cimport malloc, realloc, free
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC


cdef struct WorkerSlot:
    char ident[256]
    int ident_n
    int credit                  # messages it can take now
    long long last_seen         # monotonic ms of its last frame


cdef inline long long now_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <long long>ts.tv_sec * 1000 + ts.tv_nsec // 1000000


cdef class Broker:
    """The Master (and Hub) broker.

    :param inbound: pyzmq socket of client messages (PULL) or, for a Hub,
        the subscription (SUB)
    :param in_kind: IN_PLAIN or IN_TOPIC
    :param pub: the XPUB replies are published on (XPUB_NODROP set)
    :param wpush: PUSH bound at worker_push_address (pylm 0.14 workers)
    :param wpull: PULL bound at worker_pull_address (pylm 0.14 workers)
    :param router: ROUTER our workers connect to (credit-based dispatch)
    :param control: bound PULL; any message stops the loop
    :param name: the Master's name (topic when pipelined)
    :param pipelined: publish results to topic `name` with ``stage += 1``
    :param scatter, gather, stream_hook: the subclass's overrides or None
    :param bad_hook: ``callable(reason)`` for dropped input
    :param worker_timeout_ms: a worker silent this long is forgotten
    """
    cdef:
        void *inbound
        int in_kind
        void *pub
        void *wpush
        void *wpull
        void *router
        void *control
        object _sockets
        bytes name
        bint pipelined
        object scatter, gather, stream_hook, bad_hook
        Waiter waiter
        WorkerSlot *workers         # our workers (malloc'd, n_workers used)
        int n_workers, cap_workers
        pz_msg_t *queue             # messages waiting for a worker (ring)
        int q_head, q_len, q_cap
        long long worker_timeout_ms
    cdef public long long received, sent, bad, to_legacy, to_workers

    def __init__(self, inbound, int in_kind, pub, wpush, wpull, router, control,
                 name, *, bint pipelined=False, scatter=None, gather=None,
                 stream_hook=None, bad_hook=None, long long worker_timeout_ms=3000):
        self._sockets = (inbound, pub, wpush, wpull, router, control)
        self.inbound = sock_handle(inbound)
        self.in_kind = in_kind
        self.pub = sock_handle(pub)
        self.wpush = sock_handle(wpush)
        self.wpull = sock_handle(wpull)
        self.router = sock_handle(router)
        self.control = sock_handle(control)
        self.name = name.encode() if isinstance(name, str) else bytes(name)
        self.pipelined = pipelined
        self.scatter = scatter
        self.gather = gather
        self.stream_hook = stream_hook
        self.bad_hook = bad_hook
        self.worker_timeout_ms = worker_timeout_ms
        self.waiter = Waiter()
        self.waiter.control = self.control
        self.received = self.sent = self.bad = self.to_legacy = self.to_workers = 0

    def __cinit__(self):
        self.cap_workers = 16
        self.workers = <WorkerSlot *>malloc(self.cap_workers * sizeof(WorkerSlot))
        self.q_cap = 64
        self.queue = <pz_msg_t *>malloc(self.q_cap * sizeof(pz_msg_t))
        if self.workers == NULL or self.queue == NULL:
            raise MemoryError()

    def __dealloc__(self):
        cdef int i
        if self.queue != NULL:
            for i in range(self.q_len):
                pz_msg_close(&self.queue[(self.q_head + i) % self.q_cap])
            free(self.queue)
        free(self.workers)

    @property
    def workers_connected(self):
        """How many of our workers are registered now."""
        return self.n_workers

    @property
    def queued(self):
        """Messages waiting for a worker."""
        return self.q_len

    def run(self):
        """Broker until a stop request arrives."""
        cdef pz_pollitem_t items[6]
        cdef int n, rc, i_in, i_push
        cdef Multipart mp
        mp_init(&mp)
        try:
            while True:
                items[0].socket = self.control
                items[1].socket = self.router
                items[2].socket = self.wpull
                items[3].socket = self.pub     # subscriptions, welcomes
                for n in range(4):
                    items[n].events = PZ_POLLIN
                    items[n].revents = 0
                n = 4
                i_in = i_push = -1
                if self.q_len == 0:
                    items[n].socket = self.inbound
                    items[n].events = PZ_POLLIN
                    items[n].revents = 0
                    i_in = n
                    n += 1
                else:
                    items[n].socket = self.wpush
                    items[n].events = PZ_POLLOUT
                    items[n].revents = 0
                    i_push = n
                    n += 1
                with nogil:
                    rc = pz_poll(items, n, 1000)
                if rc < 0:
                    _check_rc(rc)
                    continue
                if items[0].revents & PZ_POLLIN:
                    return
                if items[3].revents & PZ_POLLIN:
                    drain(self.pub)
                if items[1].revents & PZ_POLLIN:
                    if self._drain_router(&mp):
                        return
                if items[2].revents & PZ_POLLIN:
                    if self._drain_legacy(&mp):
                        return
                self._expire_workers()
                if self.q_len:
                    self._dispatch_queue(i_push >= 0 and items[i_push].revents & PZ_POLLOUT)
                elif i_in >= 0 and items[i_in].revents & PZ_POLLIN:
                    if self._drain_inbound(&mp):
                        return
        finally:
            mp_close(&mp)

    # -- workers ---------------------------------------------------------

    cdef int _find_worker(self, pz_msg_t *ident) noexcept nogil:
        cdef int i
        cdef size_t n = pz_msg_size(ident)
        for i in range(self.n_workers):
            if <size_t>self.workers[i].ident_n == n and memcmp(
                    self.workers[i].ident, pz_msg_data(ident), n) == 0:
                return i
        return -1

    cdef int _add_worker(self, pz_msg_t *ident, int credit) except -1:
        cdef WorkerSlot *grown
        cdef size_t n = pz_msg_size(ident)
        if n > 255:
            return self._drop("a worker identity longer than 255 bytes")
        if self.n_workers == self.cap_workers:
            grown = <WorkerSlot *>realloc(self.workers,
                                          2 * self.cap_workers * sizeof(WorkerSlot))
            if grown == NULL:
                raise MemoryError()
            self.workers = grown
            self.cap_workers *= 2
        memcpy(self.workers[self.n_workers].ident, pz_msg_data(ident), n)
        self.workers[self.n_workers].ident_n = <int>n
        self.workers[self.n_workers].credit = credit
        self.workers[self.n_workers].last_seen = now_ms()
        self.n_workers += 1
        return 0

    cdef void _remove_worker(self, int i) noexcept nogil:
        self.n_workers -= 1
        if i != self.n_workers:
            self.workers[i] = self.workers[self.n_workers]

    cdef int _expire_workers(self) except -1:
        cdef long long now = now_ms()
        cdef int i = 0
        while i < self.n_workers:
            if now - self.workers[i].last_seen > self.worker_timeout_ms:
                self._remove_worker(i)
            else:
                i += 1
        return 0

    cdef int _drain_router(self, Multipart *mp) except -1:
        """Frames from our workers: [ident, R, credit] | [ident, D(, env)] |
        [ident, P, env] | [ident, H]."""
        cdef int j, rc, w
        cdef char kind
        for j in range(BATCH):
            with nogil:
                rc = mp_recv(mp, self.router, PZ_DONTWAIT)
            if rc < 0:
                if pz_errno() == EAGAIN:
                    return 0
                _check_rc(rc)
                continue
            if mp.n < 2 or pz_msg_size(&mp.f[1]) != 1:
                self._drop("a worker message without a kind frame")
                continue
            kind = msg_ptr(&mp.f[1])[0]
            w = self._find_worker(&mp.f[0])
            if kind == b'R':
                if mp.total != 3:
                    self._drop("a worker READY without its credit")
                    continue
                try:
                    credit = int(PyBytes_FromStringAndSize(msg_ptr(&mp.f[2]),
                                                           <Py_ssize_t>pz_msg_size(&mp.f[2])))
                except ValueError:
                    self._drop("a worker READY with a bad credit")
                    continue
                if w < 0:
                    self._add_worker(&mp.f[0], max(1, min(credit, 100000)))
                else:
                    self.workers[w].credit = max(1, min(credit, 100000))
                continue
            if w < 0:
                # a worker we forgot (silent too long) or never met: it
                # must say READY again; its results are still delivered.
                pass
            else:
                self.workers[w].last_seen = now_ms()
            if kind == b'D' and w >= 0:
                self.workers[w].credit += 1
            if (kind == b'D' or kind == b'P') and mp.total == 3:
                if self._deliver(&mp.f[2]):
                    return 1
            elif kind != b'D' and kind != b'H':
                self._drop("a worker message of unknown kind %r" % chr(kind))
        return 0

    cdef int _drain_legacy(self, Multipart *mp) except -1:
        cdef int j, rc
        for j in range(BATCH):
            with nogil:
                rc = mp_recv(mp, self.wpull, PZ_DONTWAIT)
            if rc < 0:
                if pz_errno() == EAGAIN:
                    return 0
                _check_rc(rc)
                continue
            if mp.total != 1:
                self._drop("a worker result has %d frames, not 1" % mp.total)
                continue
            if self._deliver(&mp.f[0]):
                return 1
        return 0

    # -- inbound -----------------------------------------------------------

    cdef int _drain_inbound(self, Multipart *mp) except -1:
        cdef int j, rc
        cdef pz_msg_t *frame
        cdef pz_env env
        for j in range(BATCH):
            with nogil:
                rc = mp_recv(mp, self.inbound, PZ_DONTWAIT)
            if rc < 0:
                if pz_errno() == EAGAIN:
                    return 0
                _check_rc(rc)
                continue
            if self.in_kind == IN_TOPIC:
                if mp.total != 2:
                    self._drop("a subscription message has %d frames, not 2" % mp.total)
                    continue
                frame = &mp.f[1]
            else:
                if mp.total != 1:
                    self._drop("an inbound message has %d frames, not 1" % mp.total)
                    continue
                frame = &mp.f[0]
            with nogil:
                rc = pz_parse(msg_ptr(frame), pz_msg_size(frame), &env)
            if rc != PZ_OK:
                self._drop(_DECODE_REASONS.get(rc, "malformed envelope"))
                continue
            self.received += 1
            if is_ping(&env):
                # pings follow the default route of results (see loop.pyx)
                if not self.pipelined:
                    rc = self._publish(frame, &env, env.f[PZ_F_CLIENT].p, env.f[PZ_F_CLIENT].n)
                elif self.stream_hook is None:
                    rc = self._publish(frame, &env, <char *>self.name, len(self.name))
                else:
                    rc = 0
                if rc:
                    return 1
                continue
            if self.scatter is not None:
                self._scatter(frame)
            else:
                self._enqueue(frame)
            self._dispatch_queue(False)
            if self.q_len:
                return 0        # workers are full: stop reading clients
        return 0

    cdef int _scatter(self, pz_msg_t *frame) except -1:
        cdef PalmMessage msg = PalmMessage.__new__(PalmMessage)
        cdef pz_msg_t m
        msg.ParseFromString(Frame_from(frame))
        for out in self.scatter(msg):
            data = (<PalmMessage?>out).SerializeToString()
            if pz_msg_init_size(&m, len(data)) != 0:
                _check_rc(-1)
            memcpy(pz_msg_data(&m), <char *>data, len(data))
            self._enqueue(&m)
            pz_msg_close(&m)
        return 0

    cdef int _enqueue(self, pz_msg_t *frame) except -1:
        """Queue a copy of frame (zero-copy: libzmq shares the data)."""
        cdef pz_msg_t *grown
        cdef int i, slot
        if self.q_len == self.q_cap:
            grown = <pz_msg_t *>malloc(2 * self.q_cap * sizeof(pz_msg_t))
            if grown == NULL:
                raise MemoryError()
            for i in range(self.q_len):
                memcpy(&grown[i], &self.queue[(self.q_head + i) % self.q_cap], sizeof(pz_msg_t))
            free(self.queue)
            self.queue = grown
            self.q_head = 0
            self.q_cap *= 2
        slot = (self.q_head + self.q_len) % self.q_cap
        pz_msg_init(&self.queue[slot])
        pz_msg_copy(&self.queue[slot], frame)
        self.q_len += 1
        return 0

    cdef int _dispatch_queue(self, bint legacy_ready) except -1:
        """Send queued messages: to our worker with the most credit (least
        loaded), else to pylm 0.14 workers while their PUSH has room."""
        cdef int i, best, rc
        cdef pz_msg_t *m
        while self.q_len:
            m = &self.queue[self.q_head]
            best = -1
            for i in range(self.n_workers):
                if self.workers[i].credit > 0 and (
                        best < 0 or self.workers[i].credit > self.workers[best].credit):
                    best = i
            if best >= 0:
                rc = pz_send(self.router, self.workers[best].ident,
                             self.workers[best].ident_n, PZ_SNDMORE)
                if rc < 0:
                    # EHOSTUNREACH (ROUTER_MANDATORY): the worker is gone
                    self._remove_worker(best)
                    continue
                with nogil:
                    rc = pz_msg_send(m, self.router, 0)
                if rc < 0:
                    _check_rc(rc)
                self.workers[best].credit -= 1
                self.to_workers += 1
            elif legacy_ready:
                with nogil:
                    rc = pz_msg_send(m, self.wpush, PZ_DONTWAIT)
                if rc < 0:
                    if pz_errno() == EAGAIN:
                        return 0
                    _check_rc(rc)
                self.to_legacy += 1
            else:
                return 0
            pz_msg_close(m)
            self.q_head = (self.q_head + 1) % self.q_cap
            self.q_len -= 1
        return 0

    # -- outbound ----------------------------------------------------------

    cdef int _deliver(self, pz_msg_t *frame) except -1:
        """A result from a worker: gather, handle_stream, publish."""
        cdef pz_env env
        cdef int rc
        cdef PalmMessage msg
        with nogil:
            rc = pz_parse(msg_ptr(frame), pz_msg_size(frame), &env)
        if rc != PZ_OK:
            return self._drop("a worker result: " + _DECODE_REASONS.get(rc, "malformed envelope"))
        if self.gather is None and self.stream_hook is None:
            if env.f[PZ_F_ERROR].n or not self.pipelined:
                return self._publish(frame, &env, env.f[PZ_F_CLIENT].p, env.f[PZ_F_CLIENT].n)
            env.stage += 1
            return self._publish(NULL, &env, <char *>self.name, len(self.name))
        msg = PalmMessage.__new__(PalmMessage)
        msg.ParseFromString(Frame_from(frame))
        outs = self.gather(msg) if self.gather is not None else (msg,)
        for out in outs:
            if out is None:
                continue
            if (<PalmMessage?>out)._error:
                topic = (<PalmMessage>out)._client
            elif self.stream_hook is not None:
                res = self.stream_hook(out)
                if res is None:
                    continue
                topic, out = res
            elif self.pipelined:
                (<PalmMessage>out).stage += 1
                topic = self.name
            else:
                topic = (<PalmMessage>out)._client
            if self.publish_message(topic, out):
                return 1
        return 0

    cdef int publish_message(self, object topic, PalmMessage msg) except -1:
        cdef pz_env env
        cdef Py_buffer buf
        cdef int held = msg.to_env(&env, &buf)
        cdef bytes btopic = topic.encode() if isinstance(topic, str) else bytes(topic)
        try:
            return self._publish(NULL, &env, <char *>btopic, len(btopic))
        finally:
            if held:
                PyBuffer_Release(&buf)

    cdef int _publish(self, pz_msg_t *frame, pz_env *env, const char *tp, size_t tn) except -1:
        """Publish [topic, envelope]: `frame` as it is (shared, no copy) or,
        when NULL, `env` encoded.  1 when stopped while waiting for room."""
        cdef pz_msg_t t, m
        cdef int rc
        if frame != NULL:
            pz_msg_init(&m)
            pz_msg_copy(&m, frame)
        elif env_to_msg(env, &m) != 0:
            _check_rc(-1)
        if pz_msg_init_size(&t, tn) != 0:
            pz_msg_close(&m)
            _check_rc(-1)
        memcpy(pz_msg_data(&t), tp, tn)
        if self.waiter.send(&t, self.pub, PZ_SNDMORE):
            pz_msg_close(&m)
            return 1
        with nogil:
            rc = pz_msg_send(&m, self.pub, 0)
        if rc < 0:
            pz_msg_close(&m)
            _check_rc(rc)
        self.sent += 1
        return 0

    cdef int _drop(self, str reason) except -1:
        self.bad += 1
        if self.bad_hook is not None:
            self.bad_hook(reason)
        return 0


cdef Frame Frame_from(pz_msg_t *m):
    """A Frame sharing m's data (libzmq reference counting, no copy)."""
    cdef Frame f = Frame.__new__(Frame)
    pz_msg_copy(&f.msg, m)
    return f
