# The live subscriptions of a server's XPUB, and the replies held for a
# topic nobody subscribes to yet.  A pylm 0.14 client opens a new SUB for
# each call and sends the call at once, so its reply can be ready before its
# subscription reaches us: a PUB would lose it.  The XPUB tells us every
# subscription and unsubscription (XPUB_VERBOSE, XPUB_VERBOSER: one per
# subscriber, also when a subscriber's connection ends), so a reply whose
# topic matches none is kept here, bounded in count and time, and published
# when a matching subscription arrives.
#
# Stage links: a stage of ours (Server or Master pipelined, Pipeline, Sink,
# Hub) subscribes to the topic of the stage before it, `previous`, as pylm
# 0.14 does, and also to STAGE_MARK + `previous` (consts.pxi), which pylm
# 0.14 never does.  Counting both here tells a publisher whether every
# subscriber of a topic is ours: then it publishes batches [STAGE_MARK +
# topic, BATCH_MARK, batch], else single envelopes [topic, envelope] as
# pylm 0.14 does.  A message goes on exactly one of the two topics, and a
# subscriber of ours takes both from one queue, so it gets every message
# once and in order whatever the switches between them; a pylm 0.14
# subscriber is counted from the moment its subscription is read, and gets
# single envelopes from then on.


HOLD_REPLIES = 10000            # the default bound on replies held ...
HOLD_SECONDS = 5.0              # ... and on how long each is held


cdef enum:
    HOLD_TICK_MS = 20           # how often held replies are looked at (expiry, grace)
    LEGACY_GRACE_MS = 100       # see Subscriptions, "pylm 0.14 clients"


HOLD_TICK_MS_ = HOLD_TICK_MS


cdef struct HeldReply:
    long long since         # monotonic ns when it was held
    long long due           # ... past which it is dropped
    long long grace         # a pylm 0.14 client's: when it may go to a
                            # subscriber older than itself, else 0
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
    to one of our clients, subscribed before it called, costs one
    comparison with the last topic that matched.

    pylm 0.14 clients: each call opens a new SUB, and the SUB of the call
    before may still count as a subscriber here (its end is on its way)
    while the new one's subscription is not here yet; a reply published
    then is lost.  So a reply to a pylm 0.14 client (legacy_reply) goes
    out only to a subscription newer than the last reply to its topic;
    else it is held until one arrives, or for LEGACY_GRACE_MS while its
    topic stays subscribed: a subscriber that takes several replies (a
    pylm 0.14 job, a pipeline's next stage) gets the rest at once from
    then on (its topic is "steady" until it subscribes again).

    :param max_held: the most replies held (0: none; a reply nobody
        subscribes to is published, and lost, as by a PUB); past it the
        oldest is dropped
    :param hold_seconds: how long a reply is held before it is dropped

    A part in Python (PubService) sends itself: it gives each subscription
    message to note(), asks offer() whether a reply goes now, calls
    on_timer() every HOLD_TICK_MS, and sends what released() returns.
    """
    cdef:
        void *sock
        Waiter waiter
        dict counts                 # subscribed prefix -> subscribers
        dict sub_at                 # subscribed prefix -> its last subscribe (ns)
        size_t *lens                # the prefixes' distinct lengths, ascending
        int n_lens
        bytes last                  # the last topic that matched, or None
        dict pub_at                 # pylm 0.14 topic -> its last reply (ns)
        set steady                  # pylm 0.14 topics whose subscriber takes many
        dict waiting                # pylm 0.14 topic -> its replies held
        list out                    # released, for a part in Python to send
        HeldReply **items           # items[first:first + count] held, oldest first
        size_t first, count, cap
        size_t max_held
        long long hold_ns
        long long changes           # subscriptions changed (stage_topic's cache)
        bytes stage_for             # the topic stage_topic last answered for ...
        object stage_answer         # ... its answer ...
        long long stage_at          # ... and `changes` then
    cdef readonly long long held_dropped, held_sent

    def __init__(self, size_t max_held=HOLD_REPLIES, double hold_seconds=HOLD_SECONDS):
        if hold_seconds < 0:
            raise ValueError("hold_seconds must not be negative")
        self.max_held = max_held
        self.hold_ns = <long long>(hold_seconds * 1e9)
        self.counts = {}
        self.sub_at = {}
        self.pub_at = {}
        self.steady = set()
        self.waiting = {}
        self.out = []
        self.stage_at = -1

    def __dealloc__(self):
        cdef size_t i
        for i in range(self.first, self.first + self.count):
            pz_msg_close(&self.items[i].msg)
            free(self.items[i])
        free(self.items)
        free(self.lens)

    cdef void bind(self, void *sock, Waiter waiter) noexcept:
        self.sock = sock
        self.waiter = waiter

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

    cdef long long newest(self, bytes topic) except -1:
        """When `topic` was last subscribed to (ns; 0: it is not)."""
        cdef int i
        cdef long long at = 0
        for i in range(self.n_lens):
            if self.lens[i] > <size_t>len(topic):
                break
            at = max(at, <long long>self.sub_at.get(topic[:self.lens[i]], 0))
        return at

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

    cdef object stage_topic(self, const char *tp, size_t tn):
        """STAGE_MARK + topic tp[0:tn] when every subscriber of the topic
        is a stage of ours (see "Stage links" above), else None.  Ours
        subscribe to both; one of pylm 0.14 to the topic only.  So: as many
        subscriptions to the marked topic as to prefixes of the topic, and
        no other prefix of the marked topic (a subscriber of every topic,
        "", would get the batches).  A SUB sends its plain subscription
        before the marked one (byte order), so a subscriber of ours half
        counted (its plain subscription read, the other not yet) counts as
        one of pylm 0.14; its two unsubscriptions, when it leaves, are
        queued together by libzmq and read in one read().  Cached until
        the subscriptions change."""
        cdef Py_ssize_t plain = 0
        cdef Py_ssize_t marked
        cdef bytes topic
        if self.stage_at == self.changes and self.stage_for is not None and \
                <size_t>PyBytes_GET_SIZE(self.stage_for) == tn and \
                memcmp(PyBytes_AS_STRING(self.stage_for), tp, tn) == 0:
            return self.stage_answer
        topic = PyBytes_FromStringAndSize(tp, <Py_ssize_t>tn)
        marked_topic = _STAGE_MARK + topic
        marked = self.counts.get(marked_topic, 0)
        answer = None
        if marked > 0:
            for prefix, c in self.counts.items():
                if topic.startswith(prefix):
                    plain += c
                elif marked_topic.startswith(prefix) and prefix != marked_topic:
                    plain = -1
                    break
            if plain == marked:
                answer = marked_topic
        self.stage_for = topic
        self.stage_answer = answer
        self.stage_at = self.changes
        return answer

    cdef object ping_topic(self, const char *tp, size_t tn):
        """Where a client's ping goes along a stream to topic tp[0:tn]:
        STAGE_MARK + topic, which only stages of ours read (held, like a
        reply, until one subscribes), or None (dropped) when something
        else subscribes to a prefix of it.  A pylm 0.14 stage would take
        a ping for a call and die of its empty `function`."""
        cdef bytes marked_topic = _STAGE_MARK + PyBytes_FromStringAndSize(tp, <Py_ssize_t>tn)
        for prefix in self.counts:
            if marked_topic.startswith(prefix) and prefix != marked_topic:
                return None
        return marked_topic

    cdef int _subscribed(self, bytes prefix, bint on, long long now) except -1:
        """A subscribe (on) or unsubscribe of `prefix` by one subscriber."""
        cdef long c = self.counts.get(prefix, 0) + (1 if on else -1)
        self.changes += 1
        if on:
            self.sub_at[prefix] = now
            self.steady.discard(prefix)
        if c > 0:
            self.counts[prefix] = c
        else:
            self.counts.pop(prefix, None)
            self.sub_at.pop(prefix, None)
            self.pub_at.pop(prefix, None)
            self.steady.discard(prefix)
            self.last = None            # it may have matched through prefix
        if (c == 1 and on) or c <= 0:
            self._lengths()
        return 0

    cdef int read(self) except -1:
        """Read the subscription messages waiting on the XPUB (reading them
        is also what makes libzmq apply new and ended subscribers, and send
        the new ones the welcome message) and publish the held replies
        they release.  1 when a stop was asked."""
        cdef pz_msg_t m
        cdef int rc
        cdef const char *p
        cdef size_t n
        cdef bint added = False
        cdef long long now = now_ns()
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
                self._subscribed(PyBytes_FromStringAndSize(p + 1, <Py_ssize_t>(n - 1)),
                                 p[0] == 1, now)
                added = added or p[0] == 1
        finally:
            pz_msg_close(&m)
        if added and self.count:
            return self.release(now)
        return 0

    # -- held replies -------------------------------------------------------

    cdef int publish(self, const char *tp, size_t tn, pz_msg_t *m, const char *mark,
                     bint legacy=False) except -1:
        """Publish [topic, (mark,) m] (send_topic), or hold it (see the
        class).  m is libzmq's, held or closed after.  1 when stopped.
        `legacy`: a reply to a pylm 0.14 client; the XPUB is read first,
        so that what libzmq knows of its SUBs is known here."""
        cdef long long now
        if self.max_held == 0:
            return send_topic(self.waiter, self.sock, tp, tn, m, mark)
        if legacy and self.read():
            pz_msg_close(m)
            return 1
        now = now_ns()
        if self._goes(tp, tn, legacy, now):
            return send_topic(self.waiter, self.sock, tp, tn, m, mark)
        return self._hold(tp, tn, m, mark, now, legacy)

    cdef bint _goes(self, const char *tp, size_t tn, bint legacy, long long now) except -1:
        """May a reply to topic tp[0:tn] be published now (see the class)?
        Noted for a pylm 0.14 client's (pub_at, or waiting when held)."""
        cdef bytes topic
        if not legacy:
            # no such reply held matches a subscription (they are published
            # as their subscription arrives): a match overtakes none
            return self.matches(tp, tn)
        topic = PyBytes_FromStringAndSize(tp, <Py_ssize_t>tn)
        if self.matches(tp, tn) and not self.waiting.get(topic) and (
                topic in self.steady or self.newest(topic) > self.pub_at.get(topic, 0)):
            self.pub_at[topic] = now
            return True
        self.waiting[topic] = self.waiting.get(topic, 0) + 1
        return False

    cdef int _hold(self, const char *tp, size_t tn, pz_msg_t *m, const char *mark,
                   long long now, bint legacy) except -1:
        """Keep [topic, (mark,) m]; m is held or closed after.  0."""
        cdef HeldReply *h
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
        h.since = now
        h.due = now + self.hold_ns
        h.grace = now + LEGACY_GRACE_MS * 1000000 if legacy else 0
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

    cdef int _gone(self, HeldReply *h) except -1:
        """h leaves the held replies (published or dropped)."""
        cdef bytes topic
        cdef long left
        if h.grace:
            topic = PyBytes_FromStringAndSize(h.topic, <Py_ssize_t>h.tn)
            left = self.waiting.get(topic, 1) - 1
            if left > 0:
                self.waiting[topic] = left
            else:
                self.waiting.pop(topic, None)
        return 0

    cdef int _drop_oldest(self) except -1:
        cdef HeldReply *h = self.items[self.first]
        self.first += 1
        self.count -= 1
        self.held_dropped += 1
        if self.count == 0:
            self.first = 0
        try:
            self._gone(h)
        finally:
            pz_msg_close(&h.msg)
            free(h)
        return 0

    cdef int expire(self, long long now) except -1:
        """Drop the held replies whose time is up."""
        while self.count and self.items[self.first].due <= now:
            self._drop_oldest()
        return 0

    cdef int tick(self, long long now) except -1:
        """Expire, and publish pylm 0.14 replies whose grace is over.  1
        when stopped."""
        self.expire(now)
        if self.waiting:
            return self.release(now)
        return 0

    cdef bint _releases(self, HeldReply *h, long long now) except -1:
        """May h be published now?  Then for a pylm 0.14 client's reply,
        note it (pub_at, steady)."""
        cdef bytes topic
        if not self.matches(h.topic, h.tn):
            return False
        if not h.grace:
            return True
        topic = PyBytes_FromStringAndSize(h.topic, <Py_ssize_t>h.tn)
        if topic not in self.steady and self.newest(topic) <= max(
                h.since, <long long>self.pub_at.get(topic, 0)):
            if now < h.grace:
                return False
            self.steady.add(topic)      # no new subscriber: the one there takes many
        self.pub_at[topic] = now
        return True

    cdef int release(self, long long now) except -1:
        """Publish, oldest first, the held replies that may go now (the
        rest stay, in order).  1 when stopped."""
        cdef size_t i, w
        cdef size_t end
        cdef HeldReply *h
        cdef int rc = 0
        self.expire(now)
        end = self.first + self.count
        w = self.first
        i = self.first
        try:
            while i < end:
                h = self.items[i]
                i += 1
                if rc == 0 and self._releases(h, now):
                    # the message is libzmq's, or closed, after this
                    try:
                        self._gone(h)
                        if self.sock == NULL:
                            self.out.append((
                                PyBytes_FromStringAndSize(h.topic, <Py_ssize_t>h.tn),
                                PyBytes_FromStringAndSize(msg_ptr(&h.msg),
                                                          <Py_ssize_t>pz_msg_size(&h.msg))))
                            pz_msg_close(&h.msg)
                        else:
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

    # -- for a part in Python (PubService), which sends itself --------------

    def note(self, bytes frame):
        """A message read from the XPUB: a subscription message is taken
        into account (the rest is ignored)."""
        cdef long long now = now_ns()
        if len(frame) == 0 or frame[0] > 1:
            return
        self._subscribed(frame[1:], frame[0] == 1, now)
        if frame[0] == 1 and self.count:
            self.release(now)

    def offer(self, bytes topic, bytes data, bint legacy=False):
        """True: publish [topic, data] now.  False: it is held (released()
        gives it when it may go), or dropped past the bounds."""
        cdef pz_msg_t m
        cdef long long now = now_ns()
        if self.max_held == 0 or self._goes(<char *>topic, len(topic), legacy, now):
            return True
        if pz_msg_init_size(&m, len(data)) != 0:
            raise MemoryError()
        memcpy(pz_msg_data(&m), <char *>data, len(data))
        self._hold(<char *>topic, len(topic), &m, NULL, now, legacy)
        return False

    def on_timer(self):
        """Expire, and release the pylm 0.14 replies whose grace is over."""
        self.tick(now_ns())

    def released(self):
        """[(topic, data)] to publish now, oldest first (taken)."""
        out, self.out = self.out, []
        return out


def is_legacy_reply(data):
    """Is the encoded envelope `data` a reply to a pylm 0.14 client
    (legacy_reply)?  False when it does not parse."""
    cdef pz_env env
    cdef bytes b = bytes(data)
    if pz_parse(<char *>b, len(b), &env) != PZ_OK:
        return False
    return legacy_reply(&env)
