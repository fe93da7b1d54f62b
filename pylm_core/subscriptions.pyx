# The live subscriptions of a server's XPUB, and the replies held for a
# topic nobody subscribes to yet.  A pylm 0.14 client opens a new SUB for
# each call and sends the call at once, so its reply can be ready before its
# subscription reaches us: a PUB would lose it.  The XPUB tells us every
# subscription (libzmq passes on a topic's first subscribe and its last
# unsubscribe, also when a subscriber's connection ends), so a reply whose
# topic matches none is kept here, bounded in count and time, and published
# when a matching subscription arrives.


HOLD_REPLIES = 10000            # the default bound on replies held ...
HOLD_SECONDS = 5.0              # ... and on how long each is held


cdef enum:
    HOLD_EXPIRE_MS = 100        # how often held replies are looked at for expiry


cdef struct HeldReply:
    long long due           # monotonic ns past which it is dropped
    pz_msg_t msg            # the reply (frames [topic, (BATCH_MARK,) msg])
    bint mark
    size_t tn
    char topic[1]           # tn bytes (allocated with the struct)


cdef inline bint legacy_reply(pz_env *env) noexcept nogil:
    """Is env a reply to a pylm 0.14 client?  Ours number their calls
    (field `call`) or take batches."""
    return env.call == 0 and not env.flags & PZ_FLAG_BATCH


cdef class Subscriptions:
    """What subscribes to one XPUB, and the replies held for it.

    A topic matches as in ZeroMQ: when a subscribed prefix is a prefix of
    it (the empty prefix matches every topic).  The common case, a reply
    to a client subscribed before it called, costs one comparison with the
    last topic that matched.

    :param max_held: the most replies held (0: none; a reply nobody
        subscribes to is published, and lost, as by a PUB); past it the
        oldest is dropped
    :param hold_seconds: how long a reply is held before it is dropped
    """
    cdef:
        void *sock
        Waiter waiter
        dict counts                 # subscribed prefix -> subscriptions
        size_t *lens                # the prefixes' distinct lengths, ascending
        int n_lens
        bytes last                  # the last topic that matched, or None
        HeldReply **items           # items[first:first + count] held, oldest first
        size_t first, count, cap
        size_t max_held
        long long hold_ns
    cdef readonly long long held_dropped, held_sent

    def __init__(self, size_t max_held=HOLD_REPLIES, double hold_seconds=HOLD_SECONDS):
        if hold_seconds < 0:
            raise ValueError("hold_seconds must not be negative")
        self.max_held = max_held
        self.hold_ns = <long long>(hold_seconds * 1e9)
        self.counts = {}

    def __dealloc__(self):
        self._clear()
        free(self.items)
        free(self.lens)

    cdef void bind(self, void *sock, Waiter waiter) noexcept:
        self.sock = sock
        self.waiter = waiter

    cdef void _clear(self) noexcept:
        cdef size_t i
        for i in range(self.first, self.first + self.count):
            pz_msg_close(&self.items[i].msg)
            free(self.items[i])
        self.first = self.count = 0

    cdef bint holds(self) noexcept:
        """Are replies held (else published as by a PUB)?"""
        return self.max_held != 0

    def counters(self):
        return {"held": <long long>self.count, "held_dropped": self.held_dropped}

    # -- subscriptions ------------------------------------------------------

    cdef bint matches(self, const char *tp, size_t tn) except -1:
        """Does a subscription match topic tp[0:tn]?"""
        cdef int i
        cdef size_t n
        if self.last is not None and <size_t>PyBytes_GET_SIZE(self.last) == tn and \
                memcmp(PyBytes_AS_STRING(self.last), tp, tn) == 0:
            return True
        for i in range(self.n_lens):
            n = self.lens[i]
            if n > tn:
                break
            if PyBytes_FromStringAndSize(tp, <Py_ssize_t>n) in self.counts:
                self.last = PyBytes_FromStringAndSize(tp, <Py_ssize_t>tn)
                return True
        return False

    cdef int _lengths(self) except -1:
        """Rebuild `lens` from `counts`."""
        cdef list lens = sorted({len(k) for k in self.counts})
        cdef size_t *grown = <size_t *>realloc(self.lens, (len(lens) + 1) * sizeof(size_t))
        cdef int i
        if grown == NULL:
            raise MemoryError()
        self.lens = grown
        for i in range(len(lens)):
            self.lens[i] = lens[i]
        self.n_lens = len(lens)
        return 0

    cdef int _subscribed(self, bytes prefix, bint on) except -1:
        """A subscribe (on) or unsubscribe of `prefix`."""
        cdef long c = self.counts.get(prefix, 0) + (1 if on else -1)
        if c > 0:
            self.counts[prefix] = c
        else:
            self.counts.pop(prefix, None)
            self.last = None            # it may have matched through prefix
        if (c == 1 and on) or c <= 0:
            self._lengths()
        return 0

    cdef int read(self) except -1:
        """Read the subscription messages waiting on the XPUB (reading them
        is also what makes libzmq attach new subscribers and send them the
        welcome message) and publish the held replies they match.  1 when
        a stop was asked."""
        cdef pz_msg_t m
        cdef int rc
        cdef const char *p
        cdef size_t n
        cdef bint added = False
        pz_msg_init(&m)
        try:
            while True:
                with nogil:
                    rc = pz_msg_recv(&m, self.sock, PZ_DONTWAIT)
                if rc < 0:
                    if pz_errno() == EAGAIN:
                        break
                    _check_rc(rc)
                    continue
                p = msg_ptr(&m)
                n = pz_msg_size(&m)
                if n == 0 or p[0] > 1:
                    continue            # not a subscription message
                self._subscribed(PyBytes_FromStringAndSize(p + 1, <Py_ssize_t>(n - 1)), p[0] == 1)
                added = added or p[0] == 1
        finally:
            pz_msg_close(&m)
        if added and self.count:
            return self.release()
        return 0

    # -- held replies -------------------------------------------------------

    cdef int publish(self, const char *tp, size_t tn, pz_msg_t *m, const char *mark,
                     bint legacy=False) except -1:
        """Publish [topic, (mark,) m] (send_topic), or hold it when no
        subscription matches its topic.  m is libzmq's, held or closed
        after.  1 when stopped.

        `legacy`: a reply to a pylm 0.14 client (see legacy_reply), whose
        previous SUB, closed, may still count as a subscriber here while
        the new one's subscription is on its way; the XPUB is read first
        (its receive makes libzmq apply what it was told of closed and new
        subscribers), so that such a reply is held rather than lost.  Our
        clients keep one SUB: their replies skip this."""
        cdef HeldReply *h
        cdef long long now
        if legacy and self.max_held != 0 and self.read():
            pz_msg_close(m)
            return 1
        # no held reply matches a subscription (read() publishes them as
        # their subscription arrives), so a match here overtakes none
        if self.max_held == 0 or self.matches(tp, tn):
            return send_topic(self.waiter, self.sock, tp, tn, m, mark)
        now = now_ns()
        self.expire(now)
        if self.count >= self.max_held:
            self._drop_oldest()
        if self.first + self.count == self.cap and self._room() != 0:
            pz_msg_close(m)
            raise MemoryError()
        h = <HeldReply *>malloc(sizeof(HeldReply) + tn)
        if h == NULL:
            pz_msg_close(m)
            raise MemoryError()
        h.due = now + self.hold_ns
        h.mark = mark != NULL
        h.tn = tn
        memcpy(h.topic, tp, tn)
        pz_msg_init(&h.msg)
        pz_msg_copy(&h.msg, m)
        pz_msg_close(m)
        self.items[self.first + self.count] = h
        self.count += 1
        return 0

    cdef int _room(self) except -1:
        """Room for one more at the end of items: 0, -1 out of memory."""
        cdef size_t cap
        cdef HeldReply **grown
        if self.first > 0:
            memmove(self.items, self.items + self.first, self.count * sizeof(HeldReply *))
            self.first = 0
            return 0
        cap = 2 * self.cap + 16
        grown = <HeldReply **>realloc(self.items, cap * sizeof(HeldReply *))
        if grown == NULL:
            return -1
        self.items = grown
        self.cap = cap
        return 0

    cdef void _drop_oldest(self) noexcept:
        cdef HeldReply *h = self.items[self.first]
        pz_msg_close(&h.msg)
        free(h)
        self.first += 1
        self.count -= 1
        self.held_dropped += 1
        if self.count == 0:
            self.first = 0

    cdef int expire(self, long long now) except -1:
        """Drop the held replies whose time is up."""
        while self.count and self.items[self.first].due <= now:
            self._drop_oldest()
        return 0

    cdef int release(self) except -1:
        """Publish, oldest first, the held replies a subscription matches
        now (the rest stay, in order).  1 when stopped."""
        cdef size_t i, w
        cdef size_t end = self.first + self.count
        cdef HeldReply *h
        cdef int rc = 0
        self.expire(now_ns())
        end = self.first + self.count
        w = self.first
        i = self.first
        try:
            while i < end:
                h = self.items[i]
                i += 1
                if rc == 0 and self.matches(h.topic, h.tn):
                    # the message is libzmq's, or closed, after this
                    try:
                        rc = send_topic(self.waiter, self.sock, h.topic, h.tn, &h.msg,
                                        <char *>_BATCH_MARK if h.mark else NULL)
                        if rc == 0:
                            self.held_sent += 1
                    finally:
                        free(h)
                else:
                    self.items[w] = h
                    w += 1
        finally:
            # what was not looked at stays, after what was kept
            while i < end:
                self.items[w] = self.items[i]
                w += 1
                i += 1
            self.count = w - self.first
            if self.count == 0:
                self.first = 0
        return rc
