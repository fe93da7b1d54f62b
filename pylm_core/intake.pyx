# The Master's intake: the inbound part that reads client calls (PULL) or a
# Hub's upstream (SUB), validates them, answers pings and hands each
# envelope to its target (the worker pool).  Python runs only for an
# overridden scatter.


cdef class Intake(Part):
    """The inbound part of a Master or Hub.

    :param inbound: pyzmq socket of client messages (PULL) or, for a Hub,
        the subscription (SUB)
    :param in_kind: IN_PLAIN or IN_TOPIC
    :param replies: the Publisher that answers pings and errors
    :param scatter: the subclass's override, or None
    :param bad_hook: ``callable(reason)`` for dropped input

    Its target (a WorkerPool) gets the envelopes.
    """
    cdef:
        void *inbound
        int in_kind
        object _socket
        Publisher replies
        object scatter
        Router runner               # the Router running this part
    cdef public long long received, pings

    def __init__(self, inbound, int in_kind, Publisher replies, *, scatter=None, bad_hook=None):
        if in_kind not in (IN_PLAIN, IN_TOPIC):
            raise ValueError("bad inbound kind %r" % (in_kind,))
        self._socket = inbound
        self.inbound = sock_handle(inbound)
        self.in_kind = in_kind
        self.replies = replies
        self.scatter = scatter
        self.bad_hook = bad_hook
        self.received = self.bad = self.pings = 0

    def counters(self):
        return {"received": self.received - self.pings, "bad": self.bad}

    cdef int attach(self, Router runner) except -1:
        if not isinstance(self.target, WorkerPool):
            raise TypeError("an Intake's target is a WorkerPool")
        self.runner = runner
        runner.watch(self.inbound, -1, PZ_POLLIN, self, 0, True)
        return 0

    cdef int on_ready(self, int slot, short revents) except -1:
        cdef Multipart mp
        cdef int j, rc
        cdef pz_msg_t *frame
        cdef int batch
        cdef const char *p
        cdef const char *end
        cdef pz_slice one
        cdef Part pool = <Part>self.target
        mp_init(&mp)
        try:
            for j in range(BATCH):
                with nogil:
                    rc = mp_recv(&mp, self.inbound, PZ_DONTWAIT)
                if rc < 0:
                    if pz_errno() == EAGAIN:
                        break
                    _check_rc(rc)
                    continue
                batch = envelope_frame(&mp, self.in_kind, &frame)
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
                    while self._next_in_batch(&p, end, &one, "a malformed batch"):
                        if self._accept(one.p, one.n, NULL):
                            return 1
                if pool.flush():
                    return 1
                if self.runner.backlogged_for(self):
                    break           # workers are full: read no more for now
        finally:
            mp_close(&mp)
        return self.replies.flush()

    cdef int _accept(self, const char *p, size_t n, pz_msg_t *payload) except -1:
        """One envelope from a client (its payload in frame `payload` when
        not NULL): validate, answer pings, scatter, queue.  1 when stopped."""
        cdef pz_env env
        cdef int rc
        cdef PalmMessage msg
        rc = pz_parse(p, n, &env)         # GIL kept: tens of ns (see wire.h)
        if rc != PZ_OK:
            return self._drop(_DECODE_REASONS.get(rc, "malformed envelope"))
        if payload != NULL:
            take_payload(&env, payload)
        self.received += 1
        if is_ping(&env):
            self.pings += 1
            # pings follow the default route of results (see executor.pyx)
            return self.replies.ping(&env)
        if env.f[PZ_F_ERROR].n:
            return self.replies.pass_error(&env)
        if self.scatter is None:
            if payload == NULL:
                return (<Part>self.target).take(p, n, NULL)
            return (<WorkerPool>self.target).take_env(&env)
        msg = PalmMessage.__new__(PalmMessage)
        msg.from_env(&env, None)
        try:
            outs = [(<PalmMessage?>out).SerializeToString() for out in self.scatter(msg)]
        except Exception as exc:
            self._drop("scatter raised %s: %s" % (type(exc).__name__, exc))
            return self.replies.reply_error(&env, self.replies.error_field(exc))
        for data in outs:
            (<Part>self.target).take(<char *>data, len(data), NULL)
        return 0
