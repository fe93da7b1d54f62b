# The Master's broker loop: clients -> workers -> clients, in C with the GIL
# released around every blocking call.  Python runs only for the hooks a
# subclass overrides (scatter, gather, handle_stream) and for logging of
# dropped input.  Shape from zguide's lbbroker/mdbroker: poll the workers
# always, take client messages only when a worker can take them.

from libc.stdlib cimport malloc, realloc, free

cdef enum:
    MAX_SEND = 256              # envelopes in one batch to a worker
    MAX_LOST = 3                # workers a message may take down: then poison
    DRAIN_MS = 2000             # on stop, how long in-flight results are awaited

cdef bytes _HB_SUFFIX = HB_SUFFIX     # see loop.pyx
cdef bytes _W_RESET = W_RESET         # see loop.pyx


cdef struct Fifo:
    # envelopes waiting for a worker, each preceded by its length (the
    # batch format, so k of them go to a worker with one memcpy)
    pz_batch b
    size_t head                 # offset of the first waiting envelope
    long count


cdef inline void fifo_compact(Fifo *f) noexcept nogil:
    """Reuse the space of envelopes already taken: when they are more than
    what is left, move the rest to the front (each byte moves at most once
    for every byte taken, so pushes stay O(1) amortized and the buffer stays
    about twice what is queued)."""
    if f.head == 0:
        return
    if f.head == f.b.len:
        f.head = f.b.len = 0
    elif f.head * 2 > f.b.len:
        memmove(f.b.buf, f.b.buf + f.head, f.b.len - f.head)
        f.b.len -= f.head
        f.head = 0


cdef int fifo_push(Fifo *f, const char *p, size_t n) except -1:
    fifo_compact(f)
    if pz_batch_add_raw(&f.b, p, n) != 0:
        raise MemoryError()
    f.count += 1
    return 0


cdef struct Sent:
    # one batch sent to a worker: a reference to the message sent (libzmq
    # shares the data, nothing is copied) and how much of it is finished
    pz_msg_t msg
    size_t off                  # bytes of the batch finished
    long left                   # envelopes not finished


cdef struct Fly:
    # what a worker holds, in the order sent (a worker finishes in order)
    Sent *sent                  # ring of batches (malloc'd)
    int head, n, cap
    long count                  # envelopes in flight in all of them


cdef struct WorkerSlot:
    char ident[256]
    int ident_n
    int limit                   # messages it wants in flight (its credit)
    long long last_seen         # monotonic ms of its last frame
    Fly fly                     # messages sent to it and not finished


cdef int fly_add(Fly *f, pz_msg_t *m, long k) except -1:
    """Remember batch m (k envelopes) as sent: a shared reference, no copy."""
    cdef Sent *grown
    cdef int i
    if f.n == f.cap:
        grown = <Sent *>malloc((2 * f.cap + 4) * sizeof(Sent))
        if grown == NULL:
            raise MemoryError()
        for i in range(f.n):
            grown[i] = f.sent[(f.head + i) % f.cap]
        free(f.sent)
        f.sent = grown
        f.head = 0
        f.cap = 2 * f.cap + 4
    i = (f.head + f.n) % f.cap
    pz_msg_init(&f.sent[i].msg)
    pz_msg_copy(&f.sent[i].msg, m)
    f.sent[i].off = 0
    f.sent[i].left = k
    f.n += 1
    f.count += k
    return 0


cdef void fly_pop(Fly *f, long k) noexcept nogil:
    """The first k envelopes in flight are finished."""
    cdef Sent *s
    cdef const char *p
    cdef const char *start
    cdef pz_slice one
    while k > 0 and f.n > 0:
        s = &f.sent[f.head]
        start = p = msg_ptr(&s.msg) + s.off
        while k > 0 and s.left > 0 and pz_batch_next(
                &p, msg_ptr(&s.msg) + pz_msg_size(&s.msg), &one) == 1:
            k -= 1
            s.left -= 1
            f.count -= 1
        s.off += <size_t>(p - start)
        if s.left <= 0 or s.off >= pz_msg_size(&s.msg):
            f.count -= s.left if s.left > 0 else 0
            pz_msg_close(&s.msg)
            f.head = (f.head + 1) % f.cap
            f.n -= 1


cdef void fly_free(Fly *f) noexcept nogil:
    while f.n > 0:
        pz_msg_close(&f.sent[f.head].msg)
        f.head = (f.head + 1) % f.cap
        f.n -= 1
    free(f.sent)
    f.sent = NULL
    f.count = f.cap = 0


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
    :param wakeup_fd: readable when a signal arrived (see Executor), or -1
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
        Fifo queue                  # envelopes waiting for a worker
        Fifo retry                  # envelopes of lost workers: sent one per batch
        pz_batch cbatch             # results for one client, sent as one frame
        bytes cbatch_topic
        long long worker_timeout_ms
        int wakeup_fd               # readable when a signal arrived, or -1
        set reset_sent              # workers told to start over, not READY yet
    cdef public long long received, sent, bad, to_legacy, to_workers
    cdef public long long workers_lost, requeued, poisoned, late

    def __init__(self, inbound, int in_kind, pub, wpush, wpull, router, control,
                 name, *, bint pipelined=False, scatter=None, gather=None,
                 stream_hook=None, bad_hook=None, long long worker_timeout_ms=3000,
                 int wakeup_fd=-1):
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
        self.wakeup_fd = wakeup_fd
        self.waiter = Waiter()
        self.waiter.control = self.control
        self.received = self.sent = self.bad = self.to_legacy = self.to_workers = 0
        self.workers_lost = self.requeued = self.poisoned = self.late = 0
        self.reset_sent = set()

    def __cinit__(self):
        self.cap_workers = 16
        self.workers = <WorkerSlot *>malloc(self.cap_workers * sizeof(WorkerSlot))
        if self.workers == NULL:
            raise MemoryError()

    def __dealloc__(self):
        cdef int i
        free(self.queue.b.buf)
        free(self.retry.b.buf)
        free(self.cbatch.buf)
        if self.workers != NULL:
            for i in range(self.n_workers):
                fly_free(&self.workers[i].fly)
        free(self.workers)

    @property
    def workers_connected(self):
        """How many of our workers are registered now."""
        return self.n_workers

    @property
    def queued(self):
        """Messages waiting for a worker."""
        return self.queue.count + self.retry.count

    @property
    def in_flight(self):
        """Messages on our workers, not finished yet."""
        return sum(self.workers[i].fly.count for i in range(self.n_workers))

    def run(self):
        """Broker until a stop request arrives; then, for up to DRAIN_MS,
        take no new calls but deliver the results of those in flight."""
        cdef pz_pollitem_t items[7]
        cdef int n, rc, i_in, i_push, i_wake
        cdef long long drain_until = -1
        cdef Multipart mp
        mp_init(&mp)
        try:
            while True:
                if drain_until >= 0 and (now_ms() > drain_until or (
                        self.in_flight == 0 and self.queued == 0)):
                    return
                n = poll_item(items, 0, self.control, 0, PZ_POLLIN)
                n = poll_item(items, n, self.router, 0, PZ_POLLIN)
                n = poll_item(items, n, self.wpull, 0, PZ_POLLIN)
                n = poll_item(items, n, self.pub, 0, PZ_POLLIN)    # subscriptions, welcomes
                i_in = i_push = i_wake = -1
                if self.queue.count == 0 and self.retry.count == 0 and drain_until < 0:
                    i_in = n
                    n = poll_item(items, n, self.inbound, 0, PZ_POLLIN)
                else:
                    i_push = n
                    n = poll_item(items, n, self.wpush, 0, PZ_POLLOUT)
                if self.wakeup_fd >= 0:
                    i_wake = n
                    n = poll_item(items, n, NULL, self.wakeup_fd, PZ_POLLIN)
                with nogil:
                    rc = pz_poll(items, n, 250 if self.n_workers or drain_until >= 0 else 1000)
                if rc < 0:
                    _check_rc(rc)
                    continue
                if i_wake >= 0 and items[i_wake].revents & PZ_POLLIN:
                    on_wakeup(self.wakeup_fd)
                if items[0].revents & PZ_POLLIN:
                    drain(self.control)
                    if drain_until >= 0:
                        return              # a second stop: now
                    drain_until = now_ms() + DRAIN_MS
                if items[3].revents & PZ_POLLIN:
                    drain(self.pub)
                if items[1].revents & PZ_POLLIN:
                    if self._drain_router(&mp):
                        return
                if items[2].revents & PZ_POLLIN:
                    if self._drain_legacy(&mp):
                        return
                self._expire_workers()
                if self.queue.count or self.retry.count:
                    self._dispatch(i_push >= 0 and items[i_push].revents & PZ_POLLOUT)
                elif drain_until < 0 and i_in >= 0 and items[i_in].revents & PZ_POLLIN:
                    if self._drain_inbound(&mp):
                        return
        finally:
            mp_close(&mp)

    # -- workers ---------------------------------------------------------

    cdef int _find_worker(self, const char *ident, size_t n) noexcept nogil:
        cdef int i
        for i in range(self.n_workers):
            if <size_t>self.workers[i].ident_n == n and memcmp(
                    self.workers[i].ident, ident, n) == 0:
                return i
        return -1

    cdef int _add_worker(self, const char *ident, size_t n, int credit) except -1:
        cdef WorkerSlot *grown
        cdef WorkerSlot *w
        if n > 255:
            return self._drop("a worker identity longer than 255 bytes")
        if self.n_workers == self.cap_workers:
            grown = <WorkerSlot *>realloc(self.workers,
                                          2 * self.cap_workers * sizeof(WorkerSlot))
            if grown == NULL:
                raise MemoryError()
            self.workers = grown
            self.cap_workers *= 2
        w = &self.workers[self.n_workers]
        memset(w, 0, sizeof(WorkerSlot))
        memcpy(w.ident, ident, n)
        w.ident_n = <int>n
        w.limit = credit
        w.last_seen = now_ms()
        self.n_workers += 1
        return self.n_workers - 1

    cdef int _lose_worker(self, int i) except -1:
        """Forget worker i (dead, frozen or gone): the messages it held are
        sent again, one per batch (so that a worker that dies again was
        running exactly the first message it held).  That first message
        counts one more loss; a message lost with MAX_LOST workers is
        poison, and its client gets a WorkerLost error instead.  Results that the worker sends later are
        dropped (late), so every call is answered once."""
        cdef Fly fly = self.workers[i].fly
        cdef Sent *sent
        cdef const char *p
        cdef const char *end
        cdef pz_slice one
        cdef pz_env env
        cdef long left
        cdef int j
        cdef bint first = True
        self.n_workers -= 1
        if i != self.n_workers:
            self.workers[i] = self.workers[self.n_workers]
        self.workers_lost += 1
        try:
            for j in range(fly.n):
                sent = &fly.sent[(fly.head + j) % fly.cap]
                p = msg_ptr(&sent.msg) + sent.off
                end = msg_ptr(&sent.msg) + pz_msg_size(&sent.msg)
                left = sent.left
                while left > 0 and pz_batch_next(&p, end, &one) == 1:
                    left -= 1
                    if pz_parse(one.p, one.n, &env) != PZ_OK:
                        continue
                    if first:
                        env.lost += 1
                        first = False
                    if env.lost >= MAX_LOST:
                        self.poisoned += 1
                        if self._poison(&env):
                            return 1
                        continue
                    self.requeued += 1
                    fifo_compact(&self.retry)
                    if pz_batch_add_env(&self.retry.b, &env) != 0:
                        raise MemoryError()
                    self.retry.count += 1
        finally:
            fly_free(&fly)
        return 0

    cdef int _reset_worker(self, const char *ident, size_t n) except -1:
        """Send [RESET] to a worker we do not know (given up, or never
        met), at most once per READY."""
        key = PyBytes_FromStringAndSize(ident, <Py_ssize_t>n)
        if key in self.reset_sent:
            return 0
        if len(self.reset_sent) > 100000:
            self.reset_sent.clear()
        self.reset_sent.add(key)
        # (a ROUTER accepts the rest of a message once its first frame went)
        if pz_send(self.router, ident, n, PZ_SNDMORE | PZ_DONTWAIT) >= 0:
            pz_send(self.router, <char *>_W_RESET, len(_W_RESET), PZ_SNDMORE)
            pz_send(self.router, b"", 0, 0)
        return 0

    cdef int _poison(self, pz_env *env) except -1:
        """Answer a poison message's client with a WorkerLost error."""
        return self._poison_text(env, (
            '{"type": "WorkerLost", "message": "the message was in flight on %d '
            'workers that died; it is not sent again", "traceback": ""}'
            % env.lost).encode())

    cdef int _poison_text(self, pz_env *env, bytes text) except -1:
        """Answer env's client (its own topic) with an error reply."""
        env.f[PZ_F_PAYLOAD].n = 0
        env.f[PZ_F_ERROR].p = <char *>text
        env.f[PZ_F_ERROR].n = len(text)
        env.lost = 0
        return self._publish_env(env, env.f[PZ_F_CLIENT].p, env.f[PZ_F_CLIENT].n)

    cdef int _expire_workers(self) except -1:
        cdef long long now = now_ms()
        cdef int i = 0
        while i < self.n_workers:
            if now - self.workers[i].last_seen > self.worker_timeout_ms:
                if self._lose_worker(i):
                    return 1
            else:
                i += 1
        return 0

    cdef int _drain_router(self, Multipart *mp) except -1:
        """Frames from our workers (protocol in loop.pyx; [B] is a worker
        leaving, whose messages are handed back at once).  Heartbeats may
        come from a worker's second socket, whose id ends in HB_SUFFIX."""
        cdef int j, rc, w
        cdef char kind
        cdef long long value
        cdef const char *p
        cdef const char *end
        cdef const char *ident
        cdef size_t ident_n
        cdef pz_slice one
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
            ident = msg_ptr(&mp.f[0])
            ident_n = pz_msg_size(&mp.f[0])
            if kind == 72 and mp.total == 2:            # H
                if ident_n > 3 and memcmp(ident + ident_n - 3, <char *>_HB_SUFFIX, 3) == 0:
                    ident_n -= 3
                w = self._find_worker(ident, ident_n)
                if w >= 0:
                    self.workers[w].last_seen = now_ms()
                else:
                    # alive again after we gave it up (frozen, paused, cut
                    # off): it starts over and gets work again
                    self._reset_worker(ident, ident_n)
                continue
            w = self._find_worker(ident, ident_n)
            if kind == 66 and mp.total == 2:            # B
                if w >= 0 and self._lose_worker(w):
                    return 1
                continue
            if (kind != 82 and kind != 68 and kind != 67) or mp.n < 3 or \
                    (kind == 68) != (mp.total == 4):
                self._drop("a malformed message from a worker")
                continue
            value = _small_int(&mp.f[2])
            if value < 0:
                self._drop("a worker message with a bad count")
                continue
            if kind == 82:                              # R
                value = max(1, min(value, 100000))
                if w < 0:
                    self.reset_sent.discard(PyBytes_FromStringAndSize(ident, <Py_ssize_t>ident_n))
                    self._add_worker(ident, ident_n, <int>value)
                else:
                    self.workers[w].limit = <int>value
                    self.workers[w].last_seen = now_ms()
                continue
            if kind == 67:                              # C
                if w >= 0:
                    self.workers[w].limit = <int>max(1, min(value, 100000))
                    self.workers[w].last_seen = now_ms()
                else:
                    self._reset_worker(ident, ident_n)
                continue
            if w < 0:
                # results of a worker given up for dead: its messages went to
                # others, so these are dropped.  It is told to start over: it
                # gets RESET after everything sent to it before, and answers
                # with READY, after which its results count again.
                self.late += value
                self._reset_worker(ident, ident_n)
                continue
            self.workers[w].last_seen = now_ms()
            fly_pop(&self.workers[w].fly, value)
            p = msg_ptr(&mp.f[3])
            end = p + pz_msg_size(&mp.f[3])
            while True:
                rc = pz_batch_next(&p, end, &one)
                if rc == 0:
                    break
                if rc < 0:
                    self._drop("a malformed batch from a worker")
                    break
                if self._deliver(one.p, one.n, NULL):
                    return 1
            if self._flush():
                return 1
        return 0

    cdef int _drain_legacy(self, Multipart *mp) except -1:
        cdef int j, rc
        for j in range(BATCH):
            with nogil:
                rc = mp_recv(mp, self.wpull, PZ_DONTWAIT)
            if rc < 0:
                if pz_errno() == EAGAIN:
                    return self._flush()
                _check_rc(rc)
                continue
            if mp.total != 1:
                self._drop("a worker result has %d frames, not 1" % mp.total)
                continue
            if self._deliver(msg_ptr(&mp.f[0]), pz_msg_size(&mp.f[0]), &mp.f[0]):
                return 1
        return self._flush()

    # -- inbound -----------------------------------------------------------

    cdef int _drain_inbound(self, Multipart *mp) except -1:
        cdef int j, rc
        cdef pz_msg_t *frame
        cdef int batch
        cdef const char *p
        cdef const char *end
        cdef pz_slice one
        for j in range(BATCH):
            with nogil:
                rc = mp_recv(mp, self.inbound, PZ_DONTWAIT)
            if rc < 0:
                if pz_errno() == EAGAIN:
                    break
                _check_rc(rc)
                continue
            batch = envelope_frame(mp, self.in_kind, &frame)
            if batch < 0:
                self._drop("an inbound message of %d frames" % mp.total)
                continue
            p = msg_ptr(frame)
            end = p + pz_msg_size(frame)
            if batch == 2:
                if self._accept(p, <size_t>(end - p), &mp.f[2]):
                    return 1
            elif not batch:
                if self._accept(p, <size_t>(end - p), NULL):
                    return 1
            else:
                while True:
                    rc = pz_batch_next(&p, end, &one)
                    if rc == 0:
                        break
                    if rc < 0:
                        self._drop("a malformed batch")
                        break
                    if self._accept(one.p, one.n, NULL):
                        return 1
            self._dispatch(False)
            if self.queue.count or self.retry.count:
                break           # workers are full: stop reading clients
        return self._flush()

    cdef int _accept(self, const char *p, size_t n, pz_msg_t *payload) except -1:
        """One envelope from a client (its payload in frame `payload` when
        not NULL): validate, answer pings, scatter, queue.  1 when stopped."""
        cdef pz_env env
        cdef int rc
        with nogil:
            rc = pz_parse(p, n, &env)
        if rc != PZ_OK:
            return self._drop(_DECODE_REASONS.get(rc, "malformed envelope"))
        if payload != NULL:
            take_payload(&env, payload)
        self.received += 1
        if is_ping(&env):
            # pings follow the default route of results (see loop.pyx)
            if not self.pipelined:
                return self._publish_env(&env, env.f[PZ_F_CLIENT].p, env.f[PZ_F_CLIENT].n)
            if self.stream_hook is None:
                return self._publish_env(&env, <char *>self.name, len(self.name))
            return 0
        if env.f[PZ_F_ERROR].n:
            # an error of an earlier stage (a Hub's upstream) travels on
            if self.pipelined and self.stream_hook is None:
                return self._publish_env(&env, <char *>self.name, len(self.name))
            return self._publish_env(&env, env.f[PZ_F_CLIENT].p, env.f[PZ_F_CLIENT].n)
        if self.scatter is None:
            if payload == NULL:
                return fifo_push(&self.queue, p, n)
            fifo_compact(&self.queue)
            if pz_batch_add_env(&self.queue.b, &env) != 0:
                raise MemoryError()
            self.queue.count += 1
            return 0
        cdef PalmMessage msg = PalmMessage.__new__(PalmMessage)
        msg.from_env(&env, None)
        try:
            outs = [(<PalmMessage?>out).SerializeToString() for out in self.scatter(msg)]
        except Exception as exc:
            self._drop("scatter raised %s: %s" % (type(exc).__name__, exc))
            return self._poison_text(&env, error_json(exc))
        for data in outs:
            fifo_push(&self.queue, <char *>data, len(data))
        return 0

    cdef int _dispatch(self, bint legacy_ready) except -1:
        """Send queued envelopes: batches of up to MAX_SEND to the worker with
        the fewest in flight that has credit left, else one by one to pylm
        0.14 workers while their PUSH has room."""
        cdef int i, best, rc, k, room = 0
        cdef const char *p
        cdef const char *end
        cdef const char *start
        cdef pz_slice one
        cdef pz_msg_t m
        cdef Fifo *src
        cdef int most
        while self.queue.count or self.retry.count:
            # messages of lost workers first, each alone in its batch
            src = &self.retry if self.retry.count else &self.queue
            most = 1 if self.retry.count else MAX_SEND
            best = -1
            for i in range(self.n_workers):
                # least loaded first: the fewest messages in flight, among
                # the workers with room left in their credit; on a tie, the
                # one asking for more (a fast worker asks for more credit)
                k = self.workers[i].limit - <int>self.workers[i].fly.count
                if k > 0 and (best < 0
                              or self.workers[i].fly.count < self.workers[best].fly.count
                              or (self.workers[i].fly.count == self.workers[best].fly.count
                                  and k > room)):
                    best = i
                    room = k
            start = p = src.b.buf + src.head
            end = src.b.buf + src.b.len
            if best >= 0:
                k = 0
                while k < room and k < most and (k == 0 or p - start < BATCH_BYTES) \
                        and pz_batch_next(&p, end, &one) == 1:
                    k += 1
                if pz_msg_init_size(&m, <size_t>(p - start)) != 0:
                    raise MemoryError()
                memcpy(pz_msg_data(&m), start, <size_t>(p - start))
                rc = pz_send(self.router, self.workers[best].ident,
                             self.workers[best].ident_n, PZ_SNDMORE)
                if rc < 0:
                    # EHOSTUNREACH (ROUTER_MANDATORY): the worker is gone
                    pz_msg_close(&m)
                    if self._lose_worker(best):
                        return 1
                    continue
                fly_add(&self.workers[best].fly, &m, k)
                send_owned(self.router, &m, 0)
                self.to_workers += k
            elif legacy_ready:
                k = 1
                pz_batch_next(&p, end, &one)
                if pz_msg_init_size(&m, one.n) != 0:
                    raise MemoryError()
                memcpy(pz_msg_data(&m), one.p, one.n)
                with nogil:
                    rc = pz_msg_send(&m, self.wpush, PZ_DONTWAIT)
                if rc < 0:
                    pz_msg_close(&m)
                    if pz_errno() == EAGAIN:
                        return 0
                    _check_rc(-1)
                self.to_legacy += 1
            else:
                return 0
            src.head += <size_t>(p - start)
            src.count -= k
        self.queue.head = self.queue.b.len = 0
        self.retry.head = self.retry.b.len = 0
        return 0

    # -- outbound ----------------------------------------------------------

    cdef int _deliver(self, const char *p, size_t n, pz_msg_t *frame) except -1:
        """A result from a worker: gather, handle_stream, publish.  `frame`
        is the zmq message holding exactly p[0:n], when there is one."""
        cdef pz_env env
        cdef int rc
        cdef PalmMessage msg
        with nogil:
            rc = pz_parse(p, n, &env)
        if rc != PZ_OK:
            return self._drop("a worker result: " + _DECODE_REASONS.get(rc, "malformed envelope"))
        if env.f[PZ_F_ERROR].n:
            # errors take the default route and also go to the client's
            # topic here (see loop.pyx _emit)
            if self._publish_env(&env, env.f[PZ_F_CLIENT].p, env.f[PZ_F_CLIENT].n):
                return 1
            if self.pipelined and self.stream_hook is None:
                return self._publish_env(&env, <char *>self.name, len(self.name))
            return 0
        if self.gather is None and self.stream_hook is None:
            if not self.pipelined:
                if env.flags & PZ_FLAG_BATCH:
                    return self._batch(&env, p, n)
                return self._publish_raw(p, n, frame, env.f[PZ_F_CLIENT].p, env.f[PZ_F_CLIENT].n)
            env.stage += 1
            return self._publish_env(&env, <char *>self.name, len(self.name))
        msg = PalmMessage.__new__(PalmMessage)
        msg.from_env(&env, None)
        try:
            routed = []
            for out in (self.gather(msg) if self.gather is not None else (msg,)):
                if out is None:
                    continue
                if not isinstance(out, PalmMessage):
                    raise TypeError("gather yielded %s, not PalmMessage" % type(out).__name__)
                if self.stream_hook is not None:
                    res = self.stream_hook(out)
                    if res is None:
                        continue
                    topic, out = res
                    if out is None:
                        continue
                    if not isinstance(out, PalmMessage):
                        raise TypeError("handle_stream returned %s, not (topic, PalmMessage)"
                                        % type(out).__name__)
                elif self.pipelined:
                    (<PalmMessage>out).stage += 1
                    topic = self.name
                else:
                    topic = (<PalmMessage>out)._client
                routed.append((topic, out))
        except Exception as exc:
            # a failing hook is the caller's error, not the Master's end
            self._drop("gather/handle_stream raised %s: %s" % (type(exc).__name__, exc))
            return self._poison_text(&env, error_json(exc))
        for topic, out in routed:
            if self.publish_message(topic, out):
                return 1
        return 0

    cdef int _batch(self, pz_env *env, const char *p, size_t n) except -1:
        """Add an encoded result to the batch of its client."""
        cdef size_t tn = env.f[PZ_F_CLIENT].n
        if self.cbatch.count and (tn != <size_t>len(self.cbatch_topic) or memcmp(
                env.f[PZ_F_CLIENT].p, <char *>self.cbatch_topic, tn) != 0):
            if self._flush():
                return 1
        if self.cbatch.count == 0:
            self.cbatch_topic = PyBytes_FromStringAndSize(env.f[PZ_F_CLIENT].p, <Py_ssize_t>tn)
        if pz_batch_add_raw(&self.cbatch, p, n) != 0:
            raise MemoryError()
        self.sent += 1
        if self.cbatch.len >= BATCH_BYTES:
            return self._flush()
        return 0

    cdef int _flush(self) except -1:
        cdef pz_msg_t m
        if self.cbatch.count == 0:
            return 0
        batch_to_msg(&self.cbatch, &m)
        return send_topic(self.waiter, self.pub, <char *>self.cbatch_topic,
                          len(self.cbatch_topic), &m, <char *>_BATCH_MARK)

    cdef int publish_message(self, object topic, PalmMessage msg) except -1:
        cdef pz_env env
        cdef Py_buffer buf
        cdef int held = msg.to_env(&env, &buf)
        cdef bytes btopic = topic.encode() if isinstance(topic, str) else bytes(topic)
        try:
            return self._publish_env(&env, <char *>btopic, len(btopic))
        finally:
            if held:
                PyBuffer_Release(&buf)

    cdef int _publish_env(self, pz_env *env, const char *tp, size_t tn) except -1:
        cdef pz_msg_t m
        if self._flush():
            return 1
        if env_to_msg(env, &m) != 0:
            raise MemoryError()
        self.sent += 1
        return send_topic(self.waiter, self.pub, tp, tn, &m, NULL)

    cdef int _publish_raw(self, const char *p, size_t n, pz_msg_t *frame,
                          const char *tp, size_t tn) except -1:
        """Publish an encoded envelope: `frame` shared as it is (no copy)
        when given, else a copy of p[0:n]."""
        cdef pz_msg_t m
        if self._flush():
            return 1
        if frame != NULL:
            pz_msg_init(&m)
            pz_msg_copy(&m, frame)
        else:
            if pz_msg_init_size(&m, n) != 0:
                raise MemoryError()
            memcpy(pz_msg_data(&m), p, n)
        self.sent += 1
        return send_topic(self.waiter, self.pub, tp, tn, &m, NULL)

    cdef int _drop(self, str reason) except -1:
        self.bad += 1
        if self.bad_hook is not None:
            self.bad_hook(reason)
        return 0


cdef bytes error_json(exc):
    """The error field for an exception raised by a hook (the format of
    pylm._dispatch.error_text)."""
    import json, traceback
    return json.dumps({"type": type(exc).__name__, "message": str(exc),
                       "traceback": "".join(traceback.format_exception(
                           type(exc), exc, exc.__traceback__))}).encode()


cdef long long _small_int(pz_msg_t *m) noexcept nogil:
    """The decimal number in a frame (at most 9 digits), or -1."""
    cdef size_t i, n = pz_msg_size(m)
    cdef const char *p = msg_ptr(m)
    cdef long long v = 0
    if n == 0 or n > 9:
        return -1
    cdef char c
    for i in range(n):
        c = p[i]
        if c < 48 or c > 57:
            return -1
        v = v * 10 + (c - 48)
    return v
