# The calls of one client in flight at once, each with a call id of its
# own, so that replies coming back in any order are filed under the right
# call: the loop behind pylm.futures.Executor (driven by its one I/O thread).
# Built from the pieces of client.pyx: ReplyReader.try_next, the batch
# sends and lent payloads of JobStream.

cdef enum:
    GROUP_BITS = 16         # call id of a group's call i: (key << GROUP_BITS) + i

GROUP_CALLS_MAX = 1 << GROUP_BITS
cdef unsigned long long _GROUP_MASK = (1ULL << GROUP_BITS) - 1


def check_payloads(list payloads):
    """Raise TypeError for the first item that is not bytes-like (at C
    speed, in the caller's thread, before the payloads are handed on)."""
    for payload in payloads:
        if type(payload) is not bytes:
            check_payload(payload)


cdef class CallGroup:
    """Calls of one function sent together and answered one by one:
    ``payloads[i]`` goes as call ``(key << GROUP_BITS) + i``, and its reply
    lands in ``results[i]``: bytes, or a str (the remote error's wire text)
    for an error reply; None while it has not come.  `owner` is the
    caller's (pylm.futures: the group's Future); `remaining` counts the
    replies still to come, `failed` the error replies."""
    cdef:
        readonly bytes function, cache
        readonly list payloads
        public list results
        public object owner
        public double deadline          # the caller's (monotonic seconds)
        readonly unsigned long long key
        readonly long long remaining, failed
        Py_ssize_t sent                 # calls of the group sent (or batched)
        bint forgotten

    def __init__(self, bytes function, list payloads, owner=None, bytes cache=b""):
        if len(payloads) > GROUP_CALLS_MAX:
            raise ValueError("a group holds at most %d calls" % GROUP_CALLS_MAX)
        self.function = function
        self.cache = cache
        self.payloads = payloads
        self.owner = owner
        self.results = [None] * len(payloads)
        self.remaining = len(payloads)
        self.deadline = 0.0


cdef class CallTable:
    """Sends groups of calls on a PUSH and files the replies read by a
    ReplyReader under their group.  At most `window` calls are in flight (as
    in JobStream); groups wait in order for room.  Never blocks but in
    wait(); not thread-safe: one thread drives it.

    Call ids: each group gets a key (counting up from a random start) and its
    calls the ids ``(key << GROUP_BITS) + i``, so a reply finds its group
    with one shift and one dict look-up.  A reply of a group that is not
    (or no longer) in the table is dropped and counted in `stale`."""
    cdef:
        void *push
        object _push
        ReplyReader reader
        bytes pipeline, client
        bint batch
        size_t batch_bytes
        long long window
        readonly long long inflight     # calls sent whose reply has not come
        dict groups                 # key -> CallGroup whose replies are due
        object sending              # deque of groups with calls not sent
        long long unsent            # calls of the groups in `sending` not sent
        pz_batch out                # batch mode: calls not sent yet
        unsigned long long next_key
        readonly long long stale

    def __init__(self, push, ReplyReader reader, bytes pipeline, bytes client, *,
                 long long window=1000, bint batch=False, size_t batch_bytes=BATCH_BYTES,
                 unsigned long long first_key=1):
        from collections import deque
        self._push = push
        self.push = sock_handle(push)
        self.reader = reader
        reader.pipeline = pipeline
        reader.call = 0                 # any call id: filed here by group
        self.pipeline = pipeline
        self.client = client
        self.batch = batch
        self.batch_bytes = max(<size_t>1, min(batch_bytes, <size_t>BATCH_BYTES))
        self.window = max(1, window)
        self.inflight = self.unsent = self.stale = 0
        self.groups = {}
        self.sending = deque()
        self.next_key = first_key & ((1ULL << (64 - GROUP_BITS)) - 1)
        if self.next_key == 0:
            self.next_key = 1

    def __dealloc__(self):
        free(self.out.buf)

    @property
    def busy(self):
        """Groups in the table (replies due, or calls not sent)."""
        return len(self.groups)

    def groups_left(self):
        """The groups in the table, as a list."""
        return list(self.groups.values())

    def room(self):
        """Calls that may be added before the window is full."""
        return self.window - self.inflight - self.unsent - self.out.count

    def add(self, CallGroup group):
        """Take `group` (sent by the next pump()).  An empty group is done
        at once: True is returned and it is not kept."""
        if group.remaining == 0:
            return True
        group.key = self.next_key
        self.next_key += 1
        if self.next_key >> (64 - GROUP_BITS):
            self.next_key = 1
        group.sent = 0
        self.groups[group.key] = group
        self.sending.append(group)
        self.unsent += len(group.payloads)
        return False

    def forget(self, CallGroup group):
        """Drop `group`: its calls not sent are not sent, its late replies
        are dropped.  False when it was not in the table (done already)."""
        if self.groups.pop(group.key, None) is None:
            return False
        group.forgotten = True
        # answered: len - remaining; sent and not answered leave the window
        self.inflight -= group.sent - (len(group.payloads) - group.remaining)
        self.unsent -= len(group.payloads) - group.sent
        return True

    cdef int _send_batch(self) except -1:
        """Send the calls batched so far: 0 when sent (or none), 1 when the
        PUSH queue is full (they stay batched)."""
        cdef OutFrame out[2]
        cdef int calls = self.out.count
        if calls == 0:
            return 0
        out[0] = copy_frame(<char *>_BATCH_MARK, MARK_LEN)
        out[1] = batch_frame(&self.out)
        if send_frames(self.push, out, 2, PZ_DONTWAIT, None, NULL):
            return 1
        self.inflight += calls
        return 0

    def pump(self):
        """Send calls while the window has room and the PUSH takes them.
        True when the PUSH queue is full with calls left to send (wait()
        for it to be writable)."""
        cdef pz_env env
        cdef pz_msg_t m
        cdef Py_buffer buf
        cdef CallGroup g
        cdef Py_ssize_t n
        if self.batch:
            if self._send_batch():
                return True
            # refill in whole batches, as JobStream does
            if self.inflight and self.window - self.inflight < min(MAX_SEND, self.window // 2):
                return False
        while self.sending and self.inflight + self.out.count < self.window:
            g = <CallGroup>self.sending[0]
            n = len(g.payloads)
            if g.forgotten or g.sent >= n:
                self.sending.popleft()
                continue
            payload = g.payloads[g.sent]
            PyObject_GetBuffer(payload, &buf, PyBUF_SIMPLE)
            try:
                _fill_call(&env, self.pipeline, self.client, g.function, g.cache,
                           <const char *>buf.buf, <size_t>buf.len,
                           PZ_FLAG_BATCH if self.batch else 0,
                           (g.key << GROUP_BITS) + <unsigned long long>g.sent)
                if self.batch and buf.len >= LEND_MIN:
                    # large: lent to libzmq in a frame of its own, no copy
                    if self._send_batch() or send_lent(self.push, &env, payload, PZ_DONTWAIT):
                        return True
                    self.inflight += 1
                elif self.batch:
                    if pz_batch_add_env(&self.out, &env) != 0:
                        raise MemoryError()
                else:
                    if env_to_msg(&env, &m) != 0:
                        raise MemoryError()
                    if send_alone(self.push, &m, PZ_DONTWAIT, None):
                        return True
                    self.inflight += 1
            finally:
                PyBuffer_Release(&buf)
            g.sent += 1
            self.unsent -= 1
            if self.batch and (self.out.count >= MAX_SEND or self.out.len >= self.batch_bytes):
                if self._send_batch():
                    return True
        if self.batch:
            return self._send_batch() == 1
        return False

    def receive(self, list done):
        """File every reply already received (no wait); each group whose
        last reply came is appended to `done` and leaves the table.
        Returns the number of replies filed."""
        cdef pz_env env
        cdef CallGroup g
        cdef unsigned long long i
        cdef long long filed = 0
        while self.reader.try_next(&env):
            g = self.groups.get(env.call >> GROUP_BITS)
            i = env.call & _GROUP_MASK
            if g is None or i >= <unsigned long long>len(g.results) or g.results[i] is not None:
                self.stale += 1         # forgotten or timed out, or a duplicate
                continue
            if env.f[PZ_F_ERROR].n:
                g.results[i] = PyUnicode_DecodeUTF8(env.f[PZ_F_ERROR].p,
                                                    <Py_ssize_t>env.f[PZ_F_ERROR].n, "replace")
                g.failed += 1
            else:
                g.results[i] = PyBytes_FromStringAndSize(env.f[PZ_F_PAYLOAD].p,
                                                         <Py_ssize_t>env.f[PZ_F_PAYLOAD].n)
            self.inflight -= 1
            filed += 1
            g.remaining -= 1
            if g.remaining == 0:
                del self.groups[g.key]
                done.append(g)
        return filed

    def wait(self, int fd, long timeout_ms, bint writable):
        """Block (without the GIL) until a reply is there, `fd` is readable
        or, with `writable`, the PUSH takes a message; at most `timeout_ms`
        milliseconds (-1: no limit).  Returns a mask: 1 replies, 2 PUSH
        writable, 4 fd readable (0: the time passed or a signal came)."""
        cdef pz_pollitem_t items[3]
        cdef int rc, n = 2
        items[0].socket = self.reader.sub
        items[0].fd = 0
        items[0].events = PZ_POLLIN
        items[1].socket = NULL
        items[1].fd = fd
        items[1].events = PZ_POLLIN
        if writable:
            items[2].socket = self.push
            items[2].fd = 0
            items[2].events = PZ_POLLOUT
            n = 3
        for rc in range(3):
            items[rc].revents = 0
        with nogil:
            rc = pz_poll(items, n, timeout_ms)
        if rc < 0:
            if pz_errno() == EINTR:
                return 0
            _check_rc(rc)
        return ((1 if items[0].revents else 0) | (4 if items[1].revents else 0)
                | (2 if n == 3 and items[2].revents else 0))
