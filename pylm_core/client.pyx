# The client's side of the wire: encode-and-send of a call, receive of
# replies filtered to the call, and JobStream, the windowed job loop.

cdef extern from "hold.h" nogil:
    ctypedef struct pz_hold:
        pz_hold *next
        Py_buffer view
    void pz_hold_free_cb(void *data, void *hint) noexcept
    pz_hold *pz_take_released()
    uint64_t pz_payloads_lent, pz_payloads_released

cdef enum:
    LEND_MIN = 65536        # payloads this big are lent to libzmq, not copied
    RESEND_FIRST_MS = 1000  # after a new publisher's welcome, resend again when
                            # no reply came for this long (then twice as long)
    WINDOW_BYTES = 16777216 # payload bytes a job keeps in flight at most (16 MiB)

cdef bytes _WELCOME = WELCOME

#: Payloads this big are lent to libzmq and travel in a frame of their own,
#: never in a batch (send_call; pylm.aio sends them alone too).
LEND_MIN_ = LEND_MIN
#: Payload bytes Client.job keeps in flight at most, by default (JobStream).
WINDOW_BYTES_ = WINDOW_BYTES


def release_sent():
    """Release the payload buffers libzmq has finished sending."""
    global pz_payloads_released
    cdef pz_hold *h
    cdef pz_hold *nxt
    with nogil:
        h = pz_take_released()
    while h != NULL:
        nxt = h.next
        PyBuffer_Release(&h.view)
        free(h)
        h = nxt
        pz_payloads_released += 1           # with the GIL, as lend_payload


def resource_counts():
    """Counts of what the core has handed to libzmq in this process:
    ``batches_given``/``batches_freed`` (batch buffers, freed by libzmq's
    I/O thread) and ``payloads_lent``/``payloads_released`` (Python
    buffers lent without a copy, released by release_sent()).  Each pair
    meets again once every message holding them is gone; the tests check
    that nothing the core sends is leaked."""
    release_sent()
    return {"batches_given": pz_batches_given,
            "batches_freed": pz_batches_freed_now(),
            "payloads_lent": pz_payloads_lent,
            "payloads_released": pz_payloads_released}


cdef int lend_payload(pz_msg_t *m, object payload) except -1:
    """A zmq message pointing at payload's buffer (no copy), which stays
    held until libzmq is done with it (see hold.h)."""
    cdef pz_hold *h = <pz_hold *>malloc(sizeof(pz_hold))
    if h == NULL:
        raise MemoryError()
    try:
        PyObject_GetBuffer(payload, &h.view, PyBUF_SIMPLE)
    except BaseException:
        free(h)
        raise
    global pz_payloads_lent
    if pz_msg_init_data(m, h.view.buf, <size_t>h.view.len, pz_hold_free_cb, h) != 0:
        PyBuffer_Release(&h.view)
        free(h)
        raise MemoryError()
    pz_payloads_lent += 1
    return 0


cdef int send_lent(void *sock, pz_env *env, object payload, int flags) except -1:
    """Send [PAYLOAD_MARK, env without payload, payload lent] (our servers
    only).  0 when sent; with DONTWAIT in flags, 1 when the queue is full
    (nothing sent)."""
    cdef pz_msg_t head, body
    cdef OutFrame out[3]
    cdef size_t pn = env.f[PZ_F_PAYLOAD].n
    cdef int rc
    release_sent()
    env.f[PZ_F_PAYLOAD].n = 0
    rc = env_to_msg(env, &head)
    env.f[PZ_F_PAYLOAD].n = pn
    if rc != 0:
        raise MemoryError()
    try:
        lend_payload(&body, payload)
    except BaseException:
        pz_msg_close(&head)
        raise
    out[0] = copy_frame(<char *>_PAYLOAD_MARK, MARK_LEN)
    out[1] = msg_frame(&head)
    out[2] = msg_frame(&body)
    if send_frames(sock, out, 3, flags, None, NULL):
        pz_msg_close(&head)
        pz_msg_close(&body)     # the payload is released at the next send
        return 1
    return 0

cdef class _Deadline:
    """Milliseconds left of an optional timeout (None: wait forever)."""
    cdef long long end
    cdef bint forever

    def __init__(self, timeout):
        self.forever = timeout is None
        if not self.forever:
            if timeout < 0:
                raise ValueError("timeout must be >= 0 or None")
            self.end = now_ms() + <long long>(timeout * 1000)

    cdef long left(self) noexcept:
        if self.forever:
            return -1
        cdef long long d = self.end - now_ms()
        return <long>d if d > 0 else 0

    cdef void restart(self, timeout) noexcept:
        if not self.forever:
            self.end = now_ms() + <long long>(timeout * 1000)


cdef int _wait_writable(void *sock, _Deadline dl) except -1:
    """Wait until sock can take a message, or raise TimeoutError."""
    cdef pz_pollitem_t item
    cdef long left = dl.left()
    cdef int rc
    if left == 0:
        raise TimeoutError("no server took the message in time "
                           "(is it running at the push address?)")
    item.socket = sock
    item.events = PZ_POLLOUT
    item.revents = 0
    with nogil:
        rc = pz_poll(&item, 1, left if left > 0 else 1000)
    if rc < 0:
        _check_rc(rc)
    return 0


cdef int _send_call(void *sock, pz_env *env, _Deadline dl) except -1:
    """Encode env and send it on a PUSH socket, waiting at most until the
    deadline for a peer with room.  Raises TimeoutError."""
    cdef pz_msg_t m
    cdef OutFrame out
    if env_to_msg(env, &m) != 0:
        raise MemoryError()
    out = msg_frame(&m)
    while send_frames(sock, &out, 1, PZ_DONTWAIT, None, NULL):
        try:
            _wait_writable(sock, dl)
        except BaseException:
            pz_msg_close(&m)
            raise
    return 0


cdef int _fill_call(pz_env *env, bytes pipeline, bytes client, bytes function,
                    bytes cache, const char *p, size_t n, uint64_t flags,
                    uint64_t call) except -1:
    cdef int i
    for i in range(PZ_NSLICE):
        env.f[i].n = 0
    env.stage = 0
    env.flags = flags
    env.call = call
    env.lost = 0
    env.f[PZ_F_PIPELINE].p = <char *>pipeline
    env.f[PZ_F_PIPELINE].n = len(pipeline)
    env.f[PZ_F_CLIENT].p = <char *>client
    env.f[PZ_F_CLIENT].n = len(client)
    env.f[PZ_F_FUNCTION].p = <char *>function
    env.f[PZ_F_FUNCTION].n = len(function)
    env.f[PZ_F_CACHE].p = <char *>cache
    env.f[PZ_F_CACHE].n = len(cache)
    env.f[PZ_F_PAYLOAD].p = p
    env.f[PZ_F_PAYLOAD].n = n
    return 0


cdef size_t _payload_size(payload) except? 0:
    """The size in bytes of a bytes-like payload other than bytes."""
    cdef Py_buffer buf
    PyObject_GetBuffer(payload, &buf, PyBUF_SIMPLE)
    cdef size_t n = <size_t>buf.len
    PyBuffer_Release(&buf)
    return n


def send_call(push, bytes pipeline, bytes client, bytes function, bytes cache,
              payload, timeout=None, bint batch_replies=False, uint64_t call=0):
    """Send one call envelope on `push` (pyzmq PUSH socket).  The payload
    (any bytes-like object) is copied once, straight into the message.
    `batch_replies` tells a pylm server that this client reads batches;
    `call` is the call's id (field 17), echoed in its replies."""
    _send_one(sock_handle(push), pipeline, client, function, cache, payload,
              _Deadline(timeout), batch_replies, call)


cdef int _send_one(void *sock, bytes pipeline, bytes client, bytes function, bytes cache,
                   payload, _Deadline dl, bint batch_replies, uint64_t call) except -1:
    """send_call on a libzmq socket, waiting for room until `dl`."""
    cdef pz_env env
    cdef Py_buffer buf
    check_payload(payload)
    PyObject_GetBuffer(payload, &buf, PyBUF_SIMPLE)
    try:
        _fill_call(&env, pipeline, client, function, cache,
                   <const char *>buf.buf, <size_t>buf.len,
                   PZ_FLAG_BATCH if batch_replies else 0, call)
        if batch_replies and buf.len >= LEND_MIN:
            # a pylm server: the payload goes in a frame of its own, lent
            while send_lent(sock, &env, payload, PZ_DONTWAIT):
                _wait_writable(sock, dl)
        else:
            _send_call(sock, &env, dl)
    finally:
        PyBuffer_Release(&buf)
    return 0


cdef class ReplyReader:
    """Receives replies on a SUB socket: [topic, envelope], or [topic,
    BATCH_MARK, batch] from pylm servers, keeping only those whose
    `pipeline` is the current call's (late replies of a call that timed out
    are dropped, not handed to the next call).  `welcomes` counts the
    XPUB welcomes read here: one after the client's handshake means its SUB
    reconnected to a publisher (a restarted server, a healed link)."""
    cdef:
        void *sub
        object _sock
        Multipart mp
        const char *bp             # cursor in the batch being read ...
        const char *bend           # ... and its end; bp == bend: none
        public bytes pipeline       # None: accept every reply
        public unsigned long long call  # 0: any call id
        public long long stale, bad, welcomes
        int rcvtimeo                # the SUB's RCVTIMEO as last set here

    def __cinit__(self):
        mp_init(&self.mp)
        self.rcvtimeo = -1          # libzmq's default

    def __init__(self, sub):
        self._sock = sub
        self.sub = sock_handle(sub)
        self.pipeline = None
        self.call = 0
        self.stale = self.bad = self.welcomes = 0

    def __dealloc__(self):
        mp_close(&self.mp)

    cdef int _accept(self, pz_env *env) noexcept:
        """Is env a reply of the current call (pipeline and call id)?"""
        cdef size_t pn
        if self.call and env.call != self.call:
            self.stale += 1
            return 0
        if self.pipeline is None:
            return 1
        pn = len(self.pipeline)
        if env.f[PZ_F_PIPELINE].n != pn or memcmp(
                env.f[PZ_F_PIPELINE].p, <char *>self.pipeline, pn) != 0:
            self.stale += 1
            return 0
        return 1

    cdef int try_next(self, pz_env *env) except -1:
        """The next reply of this call into env, without waiting: 1, or 0
        when none is there yet.  env's slices stay valid until the next call."""
        return self._next(env, False)

    cdef int try_batched(self, pz_env *env) except -1:
        """The next reply of this call left in the batch being read: 1, or
        0 (nothing received; a call just sent has no reply yet, and a
        receive that finds none costs a poll(2) of the socket's mailbox)."""
        cdef int rc
        cdef pz_slice one
        while self.bp < self.bend:
            rc = pz_batch_next(&self.bp, self.bend, &one)
            if rc != 1 or pz_parse(one.p, one.n, env) != PZ_OK:
                self.bad += 1
                self.bp = self.bend
                return 0
            if self._accept(env):
                return 1
        return 0

    cdef int _next(self, pz_env *env, bint blocking) except -1:
        """try_next, or with `blocking` one receive that waits up to the
        SUB's RCVTIMEO (_set_rcvtimeo): 1, or 0 when that message was not a
        reply of this call (a welcome, a stale reply), the wait timed out or
        a signal came, so that the caller looks at its deadline and the
        welcomes again."""
        cdef int rc
        cdef int flags = 0 if blocking else PZ_DONTWAIT
        while True:
            if self.try_batched(env):
                return 1
            with nogil:
                rc = mp_recv(&self.mp, self.sub, flags)
            if rc < 0:
                if pz_errno() == EAGAIN:
                    return 0
                _check_rc(-1)
                if blocking:
                    return 0
                continue
            if blocking:
                flags = PZ_DONTWAIT   # one wait per call; what follows is read as try_next
            if self.mp.total == 3 and is_mark(&self.mp.f[1]):
                self.bp = msg_ptr(&self.mp.f[2])
                self.bend = self.bp + pz_msg_size(&self.mp.f[2])
                continue
            if self.mp.total != 2:
                if self.mp.total != 1:
                    self.bad += 1
                elif pz_msg_size(&self.mp.f[0]) == <size_t>len(_WELCOME) and memcmp(
                        msg_ptr(&self.mp.f[0]), <char *>_WELCOME, len(_WELCOME)) == 0:
                    self.welcomes += 1      # one frame: a welcome, counted
                    if blocking:
                        return 0
                continue
            rc = pz_parse(msg_ptr(&self.mp.f[1]), pz_msg_size(&self.mp.f[1]), env)
            if rc != PZ_OK:
                self.bad += 1
                continue
            if self._accept(env):
                return 1

    cdef int next_env(self, pz_env *env, _Deadline dl, long long welcomes=-1) except -1:
        """Wait for the next reply of this call: 1; raises TimeoutError.
        With `welcomes` >= 0, returns 0 as soon as more welcomes than that
        were read.

        The wait is a blocking receive with RCVTIMEO, not zmq_poll and then
        a receive: libzmq's poll checks the socket before and after it
        sleeps, each check a poll(2) of the socket's mailbox, where a
        blocking receive sleeps once and takes the message (issue 15: five
        syscalls fewer per eval, as REQ/REP does).  Each receive waits at
        most SIGNAL_SLICE_MS, so that a signal is handled even when it came
        before the receive began."""
        cdef long left
        if self.try_batched(env):
            return 1
        while True:
            if welcomes >= 0 and self.welcomes > welcomes:
                return 0
            left = dl.left()
            if left == 0:
                raise TimeoutError("no reply in time")
            # a signal that came while no system call was under way (between
            # the send and this wait) interrupts nothing: its handler runs
            # here, at the latest one slice later
            PyErr_CheckSignals()
            self._set_rcvtimeo(left if 0 < left < SIGNAL_SLICE_MS else SIGNAL_SLICE_MS)
            if self._next(env, True):
                return 1

    cdef int _set_rcvtimeo(self, long ms) except -1:
        """The SUB's RCVTIMEO, set only when it changes (ms, -1: forever)."""
        cdef int value = <int>ms if ms <= 2147483647 else 2147483647
        if value != self.rcvtimeo:
            if pz_setsockopt(self.sub, PZ_RCVTIMEO, &value, sizeof(int)) != 0:
                _check_rc(-1)
            self.rcvtimeo = value
        return 0

    def recv(self, timeout=None):
        """The next reply of this call as (payload, error): payload bytes,
        error the remote error text or None.  Raises TimeoutError."""
        cdef pz_env env
        self.next_env(&env, _Deadline(timeout))
        return self._result(&env)

    def round_trip(self, push, bytes pipeline, bytes client, bytes function, bytes cache,
                   payload, timeout, bint batch_replies, uint64_t call, long long welcomes):
        """One call, as Client.eval makes it: send_call(...) on `push`, then
        this reader takes the call (`pipeline`, `call`) and returns
        recv_until_welcome(timeout, welcomes), or recv(timeout) when
        `welcomes` < 0, except that no reply within the timeout returns
        False (a TimeoutError of the send is raised: no server took the
        call).  Each wait has the whole timeout.  In one core call, because
        the Python steps between them cost an eval a tenth of its round
        trip (issue 15)."""
        cdef pz_env env
        cdef _Deadline dl = _Deadline(timeout)
        _send_one(sock_handle(push), pipeline, client, function, cache, payload, dl,
                  batch_replies, call)
        self.pipeline = pipeline
        self.call = call
        dl.restart(timeout)
        try:
            if not self.next_env(&env, dl, welcomes):
                return None
        except TimeoutError:
            return False
        return self._result(&env)

    def recv_until_welcome(self, timeout, long long welcomes):
        """As recv(), but None as soon as more than `welcomes` welcomes were
        read (a new publisher: the caller may send its call again)."""
        cdef pz_env env
        if not self.next_env(&env, _Deadline(timeout), welcomes):
            return None
        return self._result(&env)

    cdef object _result(self, pz_env *env):
        error = None
        if env.f[PZ_F_ERROR].n:
            error = PyUnicode_DecodeUTF8(env.f[PZ_F_ERROR].p,
                                         <Py_ssize_t>env.f[PZ_F_ERROR].n, "replace")
        return (PyBytes_FromStringAndSize(env.f[PZ_F_PAYLOAD].p,
                                          <Py_ssize_t>env.f[PZ_F_PAYLOAD].n), error)

    def recv_message(self, timeout=None):
        """The next reply (filtered as above) as a PalmMessage."""
        cdef pz_env env
        cdef PalmMessage msg = PalmMessage.__new__(PalmMessage)
        self.next_env(&env, _Deadline(timeout))
        msg.from_env(&env, None)
        return msg

    def dispatch(self, dict pending, type stream, Py_ssize_t most):
        """Read up to `most` replies that are already there, without
        waiting, and hand each to the receiver of its call id in `pending`:
        a receiver of type `stream` (a deque) gets the payload appended,
        or (payload, error) for an error reply; any other receiver (an
        asyncio Future) is removed from `pending` and returned.  A reply
        whose call id is not in `pending` is dropped (counted in `stale`).
        Returns (replies read, [streams that got one], [(receiver,
        payload, error)]).  Fewer than `most` read means the socket had no
        more (EAGAIN): an event loop watching its ZMQ_FD may then sleep
        until the descriptor fires again.  Set `call` to 0 (every call id
        passes) and `pipeline` to the client's before using it."""
        cdef pz_env env
        cdef Py_ssize_t n = 0
        cdef list touched = [], answered = []
        cdef list queued = None         # replies for `last`, handed over in one extend()
        cdef object last = None
        while n < most and self.try_next(&env):
            n += 1
            receiver = pending.get(env.call)
            if receiver is None:
                self.stale += 1
                continue
            if type(receiver) is stream:
                if receiver is not last:
                    if last is not None:
                        last.extend(queued)
                    queued = []
                    touched.append(receiver)
                    last = receiver
                if env.f[PZ_F_ERROR].n:
                    queued.append(self._result(&env))
                else:       # the usual reply: its payload, no tuple made
                    queued.append(PyBytes_FromStringAndSize(
                        env.f[PZ_F_PAYLOAD].p, <Py_ssize_t>env.f[PZ_F_PAYLOAD].n))
            else:
                del pending[env.call]
                payload, error = self._result(&env)
                answered.append((receiver, payload, error))
        if last is not None:
            last.extend(queued)
        return n, touched, answered


cdef bytes _call_prefix(bytes pipeline, bytes client, bytes function, bytes cache):
    """Fields 1, 2, 4, 5 of every call of (function, cache), encoded once:
    pz_batch_add_call writes a call from them, its payload and call id."""
    cdef pz_env penv
    _fill_call(&penv, pipeline, client, function, cache, NULL, 0, 0, 0)
    prefix = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>pz_encoded_size(&penv))
    pz_encode(&penv, PyBytes_AS_STRING(prefix))
    return prefix


cdef class JobStream:
    """The iterator behind Client.job: sends payloads from a generator and
    yields reply payloads, keeping at most `window` calls in flight, so that
    an endless generator works and neither side's queues grow without
    bound.  With a pylm server (`batch`), calls go in batches of up to
    MAX_SEND envelopes.  It ends after `messages` replies, or, with
    `until_answered`, once the generator is done and every call sent got
    one reply.  A batch frame holds at most `batch_bytes` (plus one call):
    half the server's maximum message size keeps it under that limit.

    `window_bytes` bounds the payload bytes in flight too: the window of
    calls shrinks to `window_bytes` // the largest payload taken so far
    (at least 1), so that a job of 1 MiB payloads keeps 16 of them in flight
    at the default, not 2,000 (2 GB in the queues of client, Master and
    workers).  A payload larger than any before, taken when the smaller
    window is already full, is held until replies make room.

    Raises TimeoutError when no reply comes for
    `timeout` seconds; for an error reply it returns what `on_error(text)`
    returns (or raises what it raises), unless that is `skip` (not None):
    then it goes on to the next reply.

    With `resend`, each call gets an id of its own (`call`, `call` + 1, ...)
    and its payload is kept until its reply comes: when the SUB reads a
    publisher's welcome again (the server restarted, or a link came back)
    every call without a reply is sent again, and again after
    RESEND_FIRST_MS, twice that, ... while no reply comes; a second reply
    of a call is dropped (counted in `duplicates`).  Once a welcome came,
    the calls left are sent again whenever no reply came for that long (a
    reply the new publisher sent before our subscription reached it is
    lost).  One reply per call:
    not for a server that answers a call with several (a scatter)."""
    cdef:
        void *push
        object _push
        ReplyReader reader
        object it
        bytes pipeline, client, function, cache
        bytes prefix                # fields 1, 2, 4, 5 of every call, encoded
        long long window, inflight, expected, received
        long long call_window       # `window`; the byte bound lowers self.window
        size_t window_bytes, max_len    # ... to window_bytes // max_len
        object held                 # taken from the generator, waiting for room
        uint64_t call
        bint gen_done, batch, until_answered
        object pending              # a payload the PUSH queue had no room for
        pz_batch out                # batch mode: calls not sent yet
        long long out_pending       # ... how many
        size_t batch_bytes          # a batch is sent once it holds this much
        object timeout, on_error
        object skip                 # what on_error returns for a reply not yielded
        # resend mode: call i of the job (id `first` + i) keeps its payload
        # in slots[i & mask] (its id in ids[i & mask]) until its reply comes
        bint resend
        uint64_t first
        list slots
        uint64_t *ids
        uint64_t mask
        long long unanswered
        list resend_q               # (call id, payload) to send again
        uint64_t pending_call       # the call id of `pending`
        long long seen_welcomes
        long long resend_at         # now_ms() of the next resend; 0: none due
        long long resend_every
        readonly long long duplicates, resent

    def __init__(self, push, ReplyReader reader, generator, bytes pipeline,
                 bytes client, bytes function, bytes cache, long long messages,
                 *, long long window=1000, bint batch=False, timeout=None, on_error=None,
                 uint64_t call=0, bint until_answered=False,
                 size_t batch_bytes=BATCH_BYTES, bint resend=False, skip=None,
                 size_t window_bytes=WINDOW_BYTES):
        self._push = push
        self.push = sock_handle(push)
        self.reader = reader
        reader.pipeline = pipeline
        reader.call = 0 if resend else call
        self.call = call
        self.until_answered = until_answered
        self.it = iter(generator)
        self.pipeline = pipeline
        self.client = client
        self.function = function
        self.cache = cache
        self.prefix = _call_prefix(pipeline, client, function, cache)
        self.window = self.call_window = max(1, window)
        self.window_bytes = max(<size_t>1, window_bytes)
        self.max_len = 0
        self.held = None
        self.expected = messages
        self.inflight = self.received = 0
        self.gen_done = False
        self.batch = batch
        self.pending = None
        self.out_pending = 0
        self.batch_bytes = max(<size_t>1, min(batch_bytes, <size_t>BATCH_BYTES))
        self.timeout = timeout
        self.on_error = on_error
        self.skip = skip
        self.resend = resend
        self.first = call
        self.unanswered = 0
        if resend:
            # 4 windows of slots: a call slower than 3 windows of later ones
            # holds new calls back until it is answered (rarely)
            self.mask = 1
            while self.mask < <uint64_t>(4 * self.window):
                self.mask <<= 1
            self.ids = <uint64_t *>calloc(self.mask, sizeof(uint64_t))
            if self.ids == NULL:
                raise MemoryError()
            self.slots = [None] * <Py_ssize_t>self.mask
            self.mask -= 1
        self.resend_q = []
        self.seen_welcomes = reader.welcomes
        self.resend_at = 0
        self.duplicates = self.resent = 0

    def __dealloc__(self):
        free(self.out.buf)
        free(self.ids)

    def __iter__(self):
        return self

    cdef int _send_batch(self) except -1:
        """Send the calls batched so far; 0 when sent (or none), 1 when the
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

    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef object _answered(self, uint64_t call):
        """The payload of call `call` when it had no reply yet (it has now),
        else None (a second reply, or not of this job)."""
        cdef uint64_t i = (call - self.first) & self.mask
        if call - self.first >= self.call - self.first or self.ids[i] != call:
            return None
        payload = self.slots[i]
        if payload is not None:
            self.slots[i] = None
            self.unanswered -= 1
        return payload

    cdef bint _full_for(self, size_t size):
        """A payload of `size` bytes, larger than any before, was taken:
        shrink the window to the byte bound; is it full now (not counting
        this payload)?"""
        self.max_len = size
        self.window = max(1, min(self.call_window, <long long>(self.window_bytes // size)))
        return (self.unanswered if self.resend else self.inflight + self.out.count) \
            >= self.window

    cdef bint _room(self):
        """May another call be taken (a new one from the generator, or one
        to send again)?"""
        if self.pending is not None or self.resend_q:
            return True
        if self.gen_done and self.held is None:
            return False
        if self.resend:
            return self.unanswered < self.window and \
                self.slots[(self.call - self.first) & self.mask] is None
        return self.inflight + self.out.count < self.window

    cdef int _fill(self) except -1:
        """Send while the window has room; never blocks."""
        cdef pz_env env
        cdef pz_msg_t m
        cdef Py_buffer buf
        cdef int rc
        cdef uint64_t call = self.call
        cdef bint fresh
        cdef size_t size
        if self.resend:
            # what is sent again is not counted twice
            self.inflight = self.unanswered - self.out.count
        if self.batch:
            if self._send_batch():
                return 0
            # refill in whole batches: wait until a batch worth of room is
            # free (or nothing is in flight), so calls and replies travel
            # in batches rather than one by one
            if not self.resend_q and self.pending is None and self.inflight and \
                    self.window - self.inflight < min(MAX_SEND, self.window // 2):
                return 0
        while self._room():
            fresh = False
            if self.pending is not None:
                payload = self.pending
                call = self.pending_call
                self.pending = None
            elif self.resend_q:
                call, payload = self.resend_q.pop()
            elif self.held is not None:
                payload = self.held
                self.held = None
                fresh = True
            else:
                try:
                    payload = next(self.it)
                except StopIteration:
                    self.gen_done = True
                    break
                if type(payload) is not bytes:
                    check_payload(payload)
                fresh = True
            if fresh:
                size = <size_t>PyBytes_GET_SIZE(payload) if type(payload) is bytes \
                    else _payload_size(payload)
                if size > self.max_len and self._full_for(size):
                    self.held = payload     # the smaller window is full
                    break
                if self.resend:
                    call = self.call
                    self.call += 1
                    self.ids[(call - self.first) & self.mask] = call
                    self.slots[(call - self.first) & self.mask] = payload
                    self.unanswered += 1
            if self.batch and type(payload) is bytes and PyBytes_GET_SIZE(payload) < LEND_MIN:
                # the usual call: the prefix, then this payload and call id
                if pz_batch_add_call(&self.out, PyBytes_AS_STRING(self.prefix),
                                     <size_t>PyBytes_GET_SIZE(self.prefix),
                                     PyBytes_AS_STRING(payload),
                                     <size_t>PyBytes_GET_SIZE(payload),
                                     PZ_FLAG_BATCH, call) != 0:
                    raise MemoryError()
                if self.out.count >= MAX_SEND or self.out.len >= self.batch_bytes:
                    if self._send_batch():
                        return 0
                continue
            PyObject_GetBuffer(payload, &buf, PyBUF_SIMPLE)
            try:
                _fill_call(&env, self.pipeline, self.client, self.function,
                           self.cache, <const char *>buf.buf, <size_t>buf.len,
                           PZ_FLAG_BATCH if self.batch else 0, call)
                if self.batch and buf.len >= LEND_MIN:
                    # large: lent to libzmq in a frame of its own, no copy
                    if self._send_batch() or send_lent(self.push, &env, payload, PZ_DONTWAIT):
                        self.pending = payload
                        self.pending_call = call
                        return 0
                    self.inflight += 1
                    continue
                if self.batch:
                    if pz_batch_add_env(&self.out, &env) != 0:
                        raise MemoryError()
                elif env_to_msg(&env, &m) != 0:
                    raise MemoryError()
            finally:
                PyBuffer_Release(&buf)
            if self.batch:
                if self.out.count >= MAX_SEND or self.out.len >= self.batch_bytes:
                    if self._send_batch():
                        return 0
                continue
            if send_alone(self.push, &m, PZ_DONTWAIT, None):
                self.pending = payload
                self.pending_call = call
                return 0
            self.inflight += 1
        if self.batch:
            self._send_batch()
        return 0

    cdef int _send_again(self) except -1:
        """Queue every call without a reply to be sent again (a new
        publisher welcomed us: the server restarted, or the link came back)."""
        cdef uint64_t call
        self.seen_welcomes = self.reader.welcomes
        # calls still waiting unsent (a batch or a call the PUSH had no room
        # for) have their slots like the others: they go once, from resend_q
        self.out.len = 0
        self.out.count = 0
        self.pending = None
        self.resend_q = []
        call = self.call
        while call != self.first:       # newest first: popped from the end
            call -= 1
            payload = self.slots[(call - self.first) & self.mask]
            if payload is not None and self.ids[(call - self.first) & self.mask] == call:
                self.resend_q.append((call, payload))
            if self.call - call > self.mask:
                break
        self.resent += len(self.resend_q)
        if self.resend_at == 0:
            self.resend_every = RESEND_FIRST_MS
        else:
            self.resend_every = min(self.resend_every * 2, 60000)
        self.resend_at = now_ms() + self.resend_every
        return 0

    def __next__(self):
        while True:
            value = self._next()
            if value is not self.skip or value is None:
                return value

    cdef object _next(self):
        """The next reply's payload (what on_error returns for an error)."""
        cdef pz_env env
        cdef pz_pollitem_t items[2]
        cdef _Deadline dl = None        # made at the first wait: a reply
        cdef int rc                     # already there costs no clock read
        cdef long left
        cdef long long wait
        cdef bint blocked
        while True:
            if self.received >= self.expected:
                raise StopIteration
            if self.resend and (self.reader.welcomes != self.seen_welcomes or (
                    self.resend_at and now_ms() >= self.resend_at)):
                self._send_again()
            self._fill()
            blocked = self.pending is not None or self.out.count > 0
            if self.until_answered and self.gen_done and not blocked and (
                    self.unanswered == 0 if self.resend else self.inflight <= 0):
                raise StopIteration
            if self.reader.try_next(&env):
                if not self.resend:
                    break
                payload = self._answered(env.call)
                if payload is not None:
                    if self.resend_at:          # replies flow: resend when they stop
                        self.resend_at = now_ms() + self.resend_every
                    break
                self.duplicates += 1
                continue
            if self.resend and self.reader.welcomes != self.seen_welcomes:
                continue                # read with the replies: send again first
            if dl is None:
                dl = _Deadline(self.timeout)
            left = dl.left()
            if left == 0:
                raise TimeoutError("no reply for %s s (%d of the job's replies received%s)"
                                   % (self.timeout, self.received, ", %d calls sent again"
                                      % self.resent if self.resent else ""))
            if self.resend_at:
                wait = self.resend_at - now_ms()
                if wait < 0:
                    wait = 0
                if left < 0 or wait < left:
                    left = <long>wait
            items[0].socket = self.reader.sub
            items[0].events = PZ_POLLIN
            items[0].revents = 0
            items[1].socket = self.push
            items[1].events = PZ_POLLOUT
            items[1].revents = 0
            with nogil:
                rc = pz_poll(items, 2 if blocked else 1, left)
            if rc < 0:
                _check_rc(rc)
        self.received += 1
        if self.inflight > 0:
            self.inflight -= 1
        if env.f[PZ_F_ERROR].n == 0:
            # the hot path: no (payload, error) tuple made for a result
            return PyBytes_FromStringAndSize(env.f[PZ_F_PAYLOAD].p,
                                             <Py_ssize_t>env.f[PZ_F_PAYLOAD].n)
        payload, error = self.reader._result(&env)
        if self.on_error is not None:
            return self.on_error(error)
        return payload


#: Why CallBatch.add_from stopped (or the large payload it stopped at).
STOP_MOST = 0
STOP_END = 1
STOP_FULL = 2


cdef class CallBatch:
    """Calls for a pylm server queued on one PUSH socket and sent together
    in one frame, [BATCH_MARK, batch].  Each envelope carries its own
    function and call id, so calls of many callers share a frame: the
    asyncio client queues what one turn of its event loop asks for and
    sends it at the end of that turn.  Never blocks: send() says when the
    socket had no room."""
    cdef:
        void *push
        object _push
        bytes pipeline, client
        pz_batch out
        size_t batch_bytes

    def __init__(self, push, bytes pipeline, bytes client, size_t batch_bytes=BATCH_BYTES):
        self._push = push
        self.push = sock_handle(push)
        self.pipeline = pipeline
        self.client = client
        self.batch_bytes = max(<size_t>1, min(batch_bytes, <size_t>BATCH_BYTES))

    def __dealloc__(self):
        free(self.out.buf)

    @property
    def count(self):
        """Calls queued and not sent yet."""
        return self.out.count

    def add(self, bytes function, bytes cache, payload, uint64_t call):
        """Queue one call (its payload copied into the batch); True when
        the batch is full (MAX_SEND calls or `batch_bytes`): send it before
        adding more."""
        cdef pz_env env
        cdef Py_buffer buf
        check_payload(payload)
        PyObject_GetBuffer(payload, &buf, PyBUF_SIMPLE)
        try:
            _fill_call(&env, self.pipeline, self.client, function, cache,
                       <const char *>buf.buf, <size_t>buf.len, PZ_FLAG_BATCH, call)
            if pz_batch_add_env(&self.out, &env) != 0:
                raise MemoryError()
        finally:
            PyBuffer_Release(&buf)
        return self.out.count >= MAX_SEND or self.out.len >= self.batch_bytes

    def add_from(self, bytes function, bytes cache, it, uint64_t call, long long most):
        """Queue calls for payloads taken from the iterator `it`, at most
        `most` of them, sending each batch that fills.  Returns (calls
        queued, why it stopped): STOP_MOST (`most` queued), STOP_END (`it`
        is exhausted), STOP_FULL (the socket had no room for a full batch:
        send() it before adding more) or a payload of LEND_MIN_ bytes or
        more, taken from `it` and not queued (for the caller to send
        alone)."""
        cdef pz_env env
        cdef Py_buffer buf
        cdef long long n = 0
        cdef OutFrame out[2]
        cdef bytes prefix = _call_prefix(self.pipeline, self.client, function, cache)
        while n < most:
            try:
                payload = next(it)
            except StopIteration:
                return n, STOP_END
            if type(payload) is bytes and PyBytes_GET_SIZE(payload) < LEND_MIN:
                # the usual call: the prefix, then this payload and call id
                if pz_batch_add_call(&self.out, PyBytes_AS_STRING(prefix),
                                     <size_t>PyBytes_GET_SIZE(prefix),
                                     PyBytes_AS_STRING(payload),
                                     <size_t>PyBytes_GET_SIZE(payload),
                                     PZ_FLAG_BATCH, call) != 0:
                    raise MemoryError()
            else:
                check_payload(payload)
                PyObject_GetBuffer(payload, &buf, PyBUF_SIMPLE)
                try:
                    if buf.len >= LEND_MIN:
                        return n, payload
                    _fill_call(&env, self.pipeline, self.client, function, cache,
                               <const char *>buf.buf, <size_t>buf.len, PZ_FLAG_BATCH, call)
                    if pz_batch_add_env(&self.out, &env) != 0:
                        raise MemoryError()
                finally:
                    PyBuffer_Release(&buf)
            n += 1
            if self.out.count >= MAX_SEND or self.out.len >= self.batch_bytes:
                out[0] = copy_frame(<char *>_BATCH_MARK, MARK_LEN)
                out[1] = batch_frame(&self.out)
                if send_frames(self.push, out, 2, PZ_DONTWAIT, None, NULL):
                    return n, STOP_FULL
        return n, STOP_MOST

    def send(self):
        """Send the queued calls: True when they went (or none was queued),
        False when the socket has no room now (they stay queued)."""
        cdef OutFrame out[2]
        if self.out.count == 0:
            return True
        out[0] = copy_frame(<char *>_BATCH_MARK, MARK_LEN)
        out[1] = batch_frame(&self.out)
        return not send_frames(self.push, out, 2, PZ_DONTWAIT, None, NULL)
