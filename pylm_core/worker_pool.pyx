# The Master's worker pool: the outbound part of a Master or Hub that hands
# queued envelopes to workers and their results to its target (the
# publisher).  In C, with the GIL released around every blocking call.
# Shape from zguide's lbbroker/mdbroker: the workers are always polled, and
# while envelopes wait for a worker the Router stops reading the intake
# (Router.backlog).  Reliability: every batch in flight is remembered by
# reference until its worker reports it finished, so a lost worker's
# messages are sent again (MAX_LOST losses make a message poison).

cdef enum:
    EXPIRE_EVERY_MS = 250       # how often silent workers are looked for
    HANDOFF_BYTES = 65536       # a dispatch taking all the queue, this much
    HANDOFF_AVERAGE = 16384     # or more in envelopes of this size on average,
                                # sends the queue's buffer itself (no copy)
    W_ROUTER = 0                # the pool's watches: our workers' ROUTER,
    W_LEGACY_IN = 1             # pylm 0.14 workers' results (PULL),
    W_LEGACY_OUT = 2            # pylm 0.14 workers' queue (PUSH)

#: On stop, how long a Master waits for the results of messages in flight.
DRAIN_MS = 2000

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
    long long done              # messages it finished
    Fly fly                     # messages sent to it and not finished


cdef struct WorkerView:
    # what WorkerPool.details() copies of a WorkerSlot
    char ident[256]
    int ident_n
    int limit
    long in_flight
    long long done, last_seen


cdef Sent *fly_next(Fly *f) except NULL:
    """The slot of the next batch sent (fly_add makes it count), its msg
    to be set to a reference to the batch (shared, no copy)."""
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
    return &f.sent[(f.head + f.n) % f.cap]


cdef inline void fly_add(Fly *f, long k) noexcept nogil:
    """The batch in fly_next's slot (k envelopes) was sent."""
    cdef Sent *s = &f.sent[(f.head + f.n) % f.cap]
    s.off = 0
    s.left = k
    f.n += 1
    f.count += k


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


cdef class WorkerPool(Part):
    """The outbound part of a Master that sends envelopes to workers.

    :param router: ROUTER our workers connect to (credit-based dispatch,
        ROUTER_MANDATORY set)
    :param wpush: PUSH bound at worker_push_address (pylm 0.14 workers)
    :param wpull: PULL bound at worker_pull_address (pylm 0.14 workers)
    :param bad_hook: ``callable(reason)`` for dropped input
    :param worker_timeout_ms: a worker silent this long is given up

    Its target (a Publisher) gets the results, and poison replies.
    """
    cdef:
        void *router
        void *wpush
        void *wpull
        object _sockets
        Router runner               # the Router running this part
        int w_push                  # the watch of wpush (POLLOUT while queued)
        bint full                   # told the Router our backlog is full
        WorkerSlot *workers         # our workers (malloc'd, n_workers used)
        int n_workers, cap_workers
        Fifo queue                  # envelopes waiting for a worker
        Fifo retry                  # envelopes of lost workers: sent one per batch
        long long worker_timeout_ms
        set reset_sent              # workers told to start over, not READY yet
    cdef public long long to_legacy, to_workers
    cdef public long long workers_lost, requeued, poisoned, late

    def __init__(self, router, wpush, wpull, *, bad_hook=None,
                 long long worker_timeout_ms=3000):
        self._sockets = (router, wpush, wpull)
        self.router = sock_handle(router)
        self.wpush = sock_handle(wpush)
        self.wpull = sock_handle(wpull)
        self.bad_hook = bad_hook
        self.worker_timeout_ms = worker_timeout_ms
        self.bad = self.to_legacy = self.to_workers = 0
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

    def counters(self):
        return {"bad": self.bad, "to_legacy": self.to_legacy, "to_workers": self.to_workers,
                "workers_lost": self.workers_lost, "requeued": self.requeued,
                "poisoned": self.poisoned, "late": self.late}

    def details(self):
        """``{"workers": [...], "queued": n}``: each of our workers (its
        id, credit, in_flight, done, last_seen_s) and the messages waiting.

        Called from another thread (the cache service) while the loop runs:
        the table is copied first, with the GIL held and no Python call in
        between, so the loop (which changes it only with the GIL held, never
        inside its nogil calls) cannot resize it under the copy; the Python
        objects are made from the copy afterwards."""
        cdef int i, n = self.n_workers
        cdef long long now = now_ms()
        cdef long queued = self.queue.count + self.retry.count
        cdef WorkerView *view = <WorkerView *>malloc((n + 1) * sizeof(WorkerView))
        if view == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                memcpy(view[i].ident, self.workers[i].ident, self.workers[i].ident_n)
                view[i].ident_n = self.workers[i].ident_n
                view[i].limit = self.workers[i].limit
                view[i].in_flight = self.workers[i].fly.count
                view[i].done = self.workers[i].done
                view[i].last_seen = self.workers[i].last_seen
            workers = [{"id": PyBytes_FromStringAndSize(view[i].ident, view[i].ident_n)
                        .decode(errors="replace"),
                        "credit": view[i].limit, "in_flight": view[i].in_flight,
                        "done": view[i].done,
                        "last_seen_s": max(0, now - view[i].last_seen) / 1000.0}
                       for i in range(n)]
        finally:
            free(view)
        return {"workers": workers, "queued": queued}

    # -- the part ----------------------------------------------------------

    cdef int attach(self, Router runner) except -1:
        if not isinstance(self.target, Publisher):
            raise TypeError("a WorkerPool's target is the Publisher of its results")
        self.runner = runner
        runner.watch(self.router, -1, PZ_POLLIN, self, W_ROUTER, False)
        runner.watch(self.wpull, -1, PZ_POLLIN, self, W_LEGACY_IN, False)
        self.w_push = runner.watch(self.wpush, -1, 0, self, W_LEGACY_OUT, False)
        runner.tick(self, EXPIRE_EVERY_MS)
        return 0

    cpdef bint _idle(self):
        cdef int i
        if self.queue.count or self.retry.count:
            return False
        for i in range(self.n_workers):
            if self.workers[i].fly.count:
                return False
        return True

    cdef int on_ready(self, int slot, short revents) except -1:
        cdef Multipart mp
        if slot == W_LEGACY_OUT:
            return self.flush_to(True)
        mp_init(&mp)
        try:
            if slot == W_ROUTER:
                if self._drain_router(&mp):
                    return 1
            elif self._drain_legacy(&mp):
                return 1
        finally:
            mp_close(&mp)
        return self.flush_to(False)

    cdef int on_tick(self, long long now) except -1:
        if self._expire_workers(now):
            return 1
        if self.queue.count or self.retry.count:
            return self.flush_to(False)
        return 0

    cdef int take(self, const char *p, size_t n, pz_msg_t *frame) except -1:
        """Queue one encoded envelope for a worker (sent at flush())."""
        return fifo_push(&self.queue, p, n)

    cdef int take_env(self, pz_env *env) except -1:
        """Queue one envelope for a worker, encoding it."""
        fifo_compact(&self.queue)
        if pz_batch_add_env(&self.queue.b, env) != 0:
            raise MemoryError()
        self.queue.count += 1
        return 0

    cdef int flush(self) except -1:
        return self.flush_to(False)

    cdef int flush_to(self, bint legacy_ready) except -1:
        """Send what is queued as workers have room; while some is left,
        the Router reads no new input for us and PUSH room is watched."""
        cdef int rc = 0
        cdef bint waiting
        if self.queue.count or self.retry.count:
            rc = self._dispatch(legacy_ready)
        waiting = self.queue.count != 0 or self.retry.count != 0
        if waiting != self.full:
            self.full = waiting
            self.runner.set_events(self.w_push, PZ_POLLOUT if waiting else 0)
            self.runner.backlog(self, waiting)
        return rc

    cdef Publisher out(self):
        return <Publisher>self.target

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
        met), at most once per READY.  The key is remembered only once the
        RESET went: when there is no room (EAGAIN) or the peer is gone
        (EHOSTUNREACH) nothing was sent, and its next heartbeat tries again."""
        key = PyBytes_FromStringAndSize(ident, <Py_ssize_t>n)
        if key in self.reset_sent:
            return 0
        if len(self.reset_sent) > 100000:
            self.reset_sent.clear()
        cdef OutFrame out[3]
        out[0] = copy_frame(ident, n)
        out[1] = copy_frame(<char *>_W_RESET, len(_W_RESET))
        out[2] = copy_frame(b"", 0)
        if send_frames(self.router, out, 3, PZ_DONTWAIT, None, NULL) == 0:
            self.reset_sent.add(key)
        return 0

    cdef int _poison(self, pz_env *env) except -1:
        """Answer a poison message's client with a WorkerLost error."""
        return self.out().reply_error(env, RemoteError(
            "WorkerLost", "the message was in flight on %d workers that died; it is "
            "not sent again" % env.lost, "", WORKER_LOST).to_wire().encode())

    cdef int _expire_workers(self, long long now) except -1:
        cdef int i = 0
        while i < self.n_workers:
            if now - self.workers[i].last_seen > self.worker_timeout_ms:
                if self._lose_worker(i):
                    return 1
            else:
                i += 1
        return 0

    cdef int _drain_router(self, Multipart *mp) except -1:
        """Read what our workers sent and hand each message to _from_worker.
        1 when stopped."""
        cdef int j, rc
        for j in range(BATCH):
            with nogil:
                rc = mp_recv(mp, self.router, PZ_DONTWAIT)
            if rc < 0:
                if pz_errno() == EAGAIN:
                    return 0
                _check_rc(rc)
                continue
            if self._from_worker(mp):
                return 1
        return 0

    cdef int _from_worker(self, Multipart *mp) except -1:
        """One message [routing id, kind, ...] of the worker protocol
        (consts.pxi), checked and handed to _worker_<kind>.  1 when
        stopped."""
        cdef char kind
        cdef long long value
        cdef const char *ident
        cdef size_t ident_n
        cdef int w
        if mp.n < 2 or pz_msg_size(&mp.f[1]) != 1:
            return self._drop("a worker message without a kind frame")
        kind = msg_ptr(&mp.f[1])[0]
        ident = msg_ptr(&mp.f[0])
        ident_n = pz_msg_size(&mp.f[0])
        if kind == W_BEAT and mp.total == 2:
            return self._worker_beat(ident, ident_n)
        w = self._find_worker(ident, ident_n)
        if kind == W_BYE and mp.total == 2:
            # leaving: what it held is handed to the others at once
            return self._lose_worker(w) if w >= 0 else 0
        if (kind != W_READY and kind != W_DONE and kind != W_CREDIT) or mp.n < 3 or \
                (kind == W_DONE) != (mp.total == 4):
            return self._drop("a malformed message from a worker")
        value = _small_int(&mp.f[2])
        if value < 0:
            return self._drop("a worker message with a bad count")
        if kind == W_READY:
            return self._worker_ready(w, ident, ident_n, value)
        if kind == W_CREDIT:
            return self._worker_credit(w, ident, ident_n, value)
        return self._worker_done(w, ident, ident_n, value, &mp.f[3])

    cdef int _worker_beat(self, const char *ident, size_t ident_n) except -1:
        """[H], from the worker's heartbeat socket (its id ends in
        HB_SUFFIX)."""
        cdef int w
        if ident_n > <size_t>len(_HB_SUFFIX) and memcmp(ident + ident_n - len(_HB_SUFFIX),
                                                     <char *>_HB_SUFFIX, len(_HB_SUFFIX)) == 0:
            ident_n -= len(_HB_SUFFIX)
        w = self._find_worker(ident, ident_n)
        if w >= 0:
            self.workers[w].last_seen = now_ms()
        else:
            # alive again after we gave it up (frozen, paused, cut off): it
            # starts over and gets work again
            self._reset_worker(ident, ident_n)
        return 0

    cdef int _worker_ready(self, int w, const char *ident, size_t ident_n,
                           long long credit) except -1:
        """[R, credit]: a worker (new, or starting over) takes work."""
        credit = max(1, min(credit, MAX_CREDIT))
        if w < 0:
            self.reset_sent.discard(PyBytes_FromStringAndSize(ident, <Py_ssize_t>ident_n))
            self._add_worker(ident, ident_n, <int>credit)
        else:
            self.workers[w].limit = <int>credit
            self.workers[w].last_seen = now_ms()
        return 0

    cdef int _worker_credit(self, int w, const char *ident, size_t ident_n,
                            long long credit) except -1:
        """[C, credit]: the worker wants another number of messages in
        flight."""
        if w < 0:
            return self._reset_worker(ident, ident_n)
        self.workers[w].limit = <int>max(1, min(credit, MAX_CREDIT))
        self.workers[w].last_seen = now_ms()
        return 0

    cdef int _worker_done(self, int w, const char *ident, size_t ident_n,
                          long long completed, pz_msg_t *results) except -1:
        """[D, completed, results]: `completed` requests finished, their
        results (a batch) for the publisher.  1 when stopped."""
        cdef const char *p
        cdef const char *end
        cdef pz_slice one
        cdef int rc
        if w < 0:
            # results of a worker given up for dead: its messages went to
            # others, so these are dropped.  It is told to start over: it
            # gets RESET after everything sent to it before, and answers
            # with READY, after which its results count again.
            self.late += completed
            return self._reset_worker(ident, ident_n)
        self.workers[w].last_seen = now_ms()
        self.workers[w].done += completed
        fly_pop(&self.workers[w].fly, completed)
        rc = self.out().forward(results)
        if rc != 2:
            return rc
        p = msg_ptr(results)
        end = p + pz_msg_size(results)
        while self._next_in_batch(&p, end, &one, "a malformed batch from a worker"):
            if self._deliver(one.p, one.n, NULL):
                return 1
        return self.out().flush()

    cdef int _drain_legacy(self, Multipart *mp) except -1:
        cdef int j, rc
        for j in range(BATCH):
            with nogil:
                rc = mp_recv(mp, self.wpull, PZ_DONTWAIT)
            if rc < 0:
                if pz_errno() == EAGAIN:
                    return self.out().flush()
                _check_rc(rc)
                continue
            if mp.total != 1:
                self._drop("a worker result has %d frames, not 1" % mp.total)
                continue
            if self._deliver(msg_ptr(&mp.f[0]), pz_msg_size(&mp.f[0]), &mp.f[0]):
                return 1
        return self.out().flush()

    cdef int _dispatch(self, bint legacy_ready) except -1:
        """Send queued envelopes: batches of up to MAX_SEND to the least
        loaded worker with credit left, else one by one to pylm 0.14
        workers while their PUSH has room.  1 when stopped."""
        cdef int best, room, idle
        cdef long share
        cdef Fifo *src
        while self.queue.count or self.retry.count:
            # messages of lost workers first, each alone in its batch
            src = &self.retry if self.retry.count else &self.queue
            best = self._least_loaded(&room, &idle)
            if best >= 0:
                # a batch is up to MAX_SEND (large batches: fewer wake-ups
                # in every process), but what is queued is shared among the
                # idle workers, so that a burst of calls does not go to
                # one of them while the others have nothing to do
                share = 1 if src == &self.retry else MAX_SEND
                if idle > 1:
                    share = min(share, (src.count + idle - 1) // idle)
                if self._send_to_worker(best, src, <int>min(room, share)):
                    return 1
            elif not legacy_ready or self._send_to_legacy(src):
                return 0
        self.queue.head = self.queue.b.len = 0
        self.retry.head = self.retry.b.len = 0
        return 0

    cdef int _least_loaded(self, int *room, int *idle) noexcept nogil:
        """The worker with the fewest messages in flight among those with
        room left in their credit and fewer than MAX_BATCHES_IN_FLIGHT
        batches, on a tie the one asking for more (a fast worker asks for
        more credit); -1 when none.  *room: its room; *idle: how many
        workers have nothing in flight."""
        cdef int i, k, best = -1
        room[0] = 0
        idle[0] = 0
        for i in range(self.n_workers):
            k = self.workers[i].limit - <int>self.workers[i].fly.count
            if k > 0 and self.workers[i].fly.n < MAX_BATCHES_IN_FLIGHT:
                if self.workers[i].fly.count == 0:
                    idle[0] += 1
                if (best < 0 or self.workers[i].fly.count < self.workers[best].fly.count
                        or (self.workers[i].fly.count == self.workers[best].fly.count
                            and k > room[0])):
                    best = i
                    room[0] = k
        return best

    cdef int _send_to_worker(self, int w, Fifo *src, int most) except -1:
        """Send worker w one batch: up to `most` envelopes from the head of
        src (no more than BATCH_BYTES past the first), remembered in its
        Fly until it reports them finished.  1 when stopped."""
        cdef const char *start = src.b.buf + src.head
        cdef const char *p = start
        cdef const char *end = src.b.buf + src.b.len
        cdef pz_slice one
        cdef int k = 0
        cdef bint handoff
        cdef OutFrame out[2]
        cdef Sent *slot
        while k < most and (k == 0 or p - start < BATCH_BYTES) \
                and pz_batch_next(&p, end, &one) == 1:
            k += 1
        # big envelopes, all of the queue: its buffer becomes the message
        # (libzmq frees it), the queue starts anew
        handoff = start == src.b.buf and p == end and p - start >= HANDOFF_BYTES \
            and p - start >= HANDOFF_AVERAGE * k
        out[0] = copy_frame(self.workers[w].ident, self.workers[w].ident_n)
        out[1] = batch_frame(&src.b) if handoff else copy_frame(start, <size_t>(p - start))
        slot = fly_next(&self.workers[w].fly)
        # blocking, yet it never waits: _least_loaded keeps what is in
        # flight below the ROUTER's high-water mark
        if send_frames(self.router, out, 2, 0, None, &slot.msg):
            # EHOSTUNREACH (ROUTER_MANDATORY): the worker is gone
            return self._lose_worker(w)
        fly_add(&self.workers[w].fly, k)
        src.head = 0 if handoff else src.head + <size_t>(p - start)
        src.count -= k
        self.to_workers += k
        return 0

    cdef int _send_to_legacy(self, Fifo *src) except -1:
        """Send the envelope at the head of src to a pylm 0.14 worker (our
        PUSH).  1 when the PUSH has no room (the Router watches it for room
        while envelopes wait)."""
        cdef const char *start = src.b.buf + src.head
        cdef const char *p = start
        cdef pz_slice one
        cdef pz_msg_t m
        if pz_batch_next(&p, src.b.buf + src.b.len, &one) != 1:
            raise RuntimeError("WorkerPool: the queue holds fewer envelopes than its count")
        if pz_msg_init_size(&m, one.n) != 0:
            raise MemoryError()
        memcpy(pz_msg_data(&m), one.p, one.n)
        if send_alone(self.wpush, &m, PZ_DONTWAIT, None):
            return 1
        src.head += <size_t>(p - start)
        src.count -= 1
        self.to_legacy += 1
        return 0

    cdef inline int _deliver(self, const char *p, size_t n, pz_msg_t *frame) except -1:
        """A result from a worker, for the publisher (which drops it when it
        is no envelope).  `frame` is the zmq message holding exactly p[0:n],
        when there is one."""
        return self.out().take(p, n, frame)



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
