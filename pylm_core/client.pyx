# The client's side of the wire: encode-and-send of a call, receive of
# replies filtered to the call, and JobStream, the windowed job loop.

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


cdef int _send_call(void *sock, pz_env *env, _Deadline dl) except -1:
    """Encode env and send it on a PUSH socket, waiting at most until the
    deadline for a peer with room.  Raises TimeoutError."""
    cdef pz_msg_t m
    cdef pz_pollitem_t item
    cdef int rc, err
    cdef long left
    if env_to_msg(env, &m) != 0:
        _check_rc(-1)
    try:
        while True:
            with nogil:
                rc = pz_msg_send(&m, sock, PZ_DONTWAIT)
            if rc >= 0:
                return 0
            err = pz_errno()
            if err == EINTR:
                PyErr_CheckSignals()
                continue
            if err != EAGAIN:
                _check_rc(-1)
            left = dl.left()
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
    except BaseException:
        pz_msg_close(&m)
        raise


cdef int _fill_call(pz_env *env, bytes pipeline, bytes client, bytes function,
                    bytes cache, const char *p, size_t n) except -1:
    cdef int i
    for i in range(PZ_NSLICE):
        env.f[i].n = 0
    env.stage = 0
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


def send_call(push, bytes pipeline, bytes client, bytes function, bytes cache,
              payload, timeout=None):
    """Send one call envelope on `push` (pyzmq PUSH socket).  The payload
    (any bytes-like object) is copied once, straight into the message."""
    cdef pz_env env
    cdef Py_buffer buf
    check_payload(payload)
    PyObject_GetBuffer(payload, &buf, PyBUF_SIMPLE)
    try:
        _fill_call(&env, pipeline, client, function, cache,
                   <const char *>buf.buf, <size_t>buf.len)
        _send_call(sock_handle(push), &env, _Deadline(timeout))
    finally:
        PyBuffer_Release(&buf)


cdef class ReplyReader:
    """Receives [topic, envelope] replies on a SUB socket, keeping only
    those whose `pipeline` is the current call's (late replies of a call
    that timed out are dropped, not handed to the next call)."""
    cdef:
        void *sub
        object _sock
        Multipart mp
        public bytes pipeline       # None: accept every reply
        public long long stale, bad

    def __cinit__(self):
        mp_init(&self.mp)

    def __init__(self, sub):
        self._sock = sub
        self.sub = sock_handle(sub)
        self.pipeline = None
        self.stale = self.bad = 0

    def __dealloc__(self):
        mp_close(&self.mp)

    cdef int _wait(self, _Deadline dl) except -1:
        """Receive the next reply of this call into self.mp; returns 0, or
        raises TimeoutError.  env is left parsed in the returned frame."""
        cdef pz_pollitem_t item
        cdef int rc
        cdef long left
        while True:
            with nogil:
                rc = mp_recv(&self.mp, self.sub, PZ_DONTWAIT)
            if rc == 0:
                return 0
            if pz_errno() != EAGAIN:
                _check_rc(-1)
                continue
            left = dl.left()
            if left == 0:
                raise TimeoutError("no reply in time")
            item.socket = self.sub
            item.events = PZ_POLLIN
            item.revents = 0
            with nogil:
                rc = pz_poll(&item, 1, left)
            if rc < 0:
                _check_rc(rc)

    cdef int next_env(self, pz_env *env, _Deadline dl) except -1:
        """Wait for the next reply of this call and parse it into env
        (slices into self.mp's envelope frame)."""
        cdef int rc
        cdef size_t pn
        while True:
            self._wait(dl)
            if self.mp.total != 2:
                self.bad += self.mp.total != 1   # one frame: a welcome
                continue
            with nogil:
                rc = pz_parse(msg_ptr(&self.mp.f[1]), pz_msg_size(&self.mp.f[1]), env)
            if rc != PZ_OK:
                self.bad += 1
                continue
            if self.pipeline is not None:
                pn = len(self.pipeline)
                if env.f[PZ_F_PIPELINE].n != pn or memcmp(
                        env.f[PZ_F_PIPELINE].p, <char *>self.pipeline, pn) != 0:
                    self.stale += 1
                    continue
            return 0

    def recv(self, timeout=None):
        """The next reply of this call as (payload, error): payload bytes
        (a Frame view when 64 KiB or more), error the remote error text or
        None.  Raises TimeoutError."""
        cdef pz_env env
        self.next_env(&env, _Deadline(timeout))
        return self._result(&env)

    cdef object _result(self, pz_env *env):
        cdef Frame f
        error = None
        if env.f[PZ_F_ERROR].n:
            error = PyUnicode_DecodeUTF8(env.f[PZ_F_ERROR].p,
                                         <Py_ssize_t>env.f[PZ_F_ERROR].n, "replace")
        return (PyBytes_FromStringAndSize(env.f[PZ_F_PAYLOAD].p,
                                          <Py_ssize_t>env.f[PZ_F_PAYLOAD].n), error)

    def recv_raw(self, timeout=None):
        """The next [topic, envelope] message, unfiltered, as a PalmMessage
        (handshakes and tests)."""
        cdef PalmMessage msg = PalmMessage.__new__(PalmMessage)
        cdef _Deadline dl = _Deadline(timeout)
        self._wait(dl)
        while self.mp.total == 1:       # a welcome
            self._wait(dl)
        if self.mp.total != 2:
            raise DecodeError("a reply of %d frames, not 2" % self.mp.total)
        msg.ParseFromString(Frame_from(&self.mp.f[1]))
        return msg


cdef class JobStream:
    """The iterator behind Client.job: sends payloads from a generator and
    yields reply payloads, keeping at most `window` calls in flight, so that
    an endless generator works and neither side's queues grow without
    bound.  Raises TimeoutError when no reply comes for `timeout` seconds,
    and calls `on_error(text)` (which raises) for error replies."""
    cdef:
        void *push
        object _push
        ReplyReader reader
        object it
        bytes pipeline, client, function, cache
        long long window, inflight, expected, received
        bint gen_done
        object pending              # a payload the PUSH queue had no room for
        object timeout, on_error

    def __init__(self, push, ReplyReader reader, generator, bytes pipeline,
                 bytes client, bytes function, bytes cache, long long messages,
                 *, long long window=1000, timeout=None, on_error=None):
        self._push = push
        self.push = sock_handle(push)
        self.reader = reader
        self.it = iter(generator)
        self.pipeline = pipeline
        self.client = client
        self.function = function
        self.cache = cache
        self.window = window
        self.expected = messages
        self.inflight = self.received = 0
        self.gen_done = False
        self.pending = None
        self.timeout = timeout
        self.on_error = on_error

    def __iter__(self):
        return self

    cdef int _fill(self) except -1:
        """Send while the window has room; never blocks."""
        cdef pz_env env
        cdef pz_msg_t m
        cdef Py_buffer buf
        cdef int rc
        while not self.gen_done and self.inflight < self.window:
            if self.pending is not None:
                payload = self.pending
                self.pending = None
            else:
                try:
                    payload = next(self.it)
                except StopIteration:
                    self.gen_done = True
                    return 0
                check_payload(payload)
            PyObject_GetBuffer(payload, &buf, PyBUF_SIMPLE)
            try:
                _fill_call(&env, self.pipeline, self.client, self.function,
                           self.cache, <const char *>buf.buf, <size_t>buf.len)
                if env_to_msg(&env, &m) != 0:
                    _check_rc(-1)
            finally:
                PyBuffer_Release(&buf)
            with nogil:
                rc = pz_msg_send(&m, self.push, PZ_DONTWAIT)
            if rc < 0:
                pz_msg_close(&m)
                if pz_errno() == EAGAIN:
                    self.pending = payload
                    return 0
                _check_rc(-1)
            self.inflight += 1
        return 0

    def __next__(self):
        cdef pz_env env
        cdef pz_pollitem_t items[2]
        cdef _Deadline dl = _Deadline(self.timeout)
        cdef int rc
        cdef long left
        while True:
            if self.received >= self.expected:
                raise StopIteration
            self._fill()
            if self.gen_done and self.inflight <= 0 and self.pending is None:
                raise StopIteration
            # a reply already queued?
            with nogil:
                rc = mp_recv(&self.reader.mp, self.reader.sub, PZ_DONTWAIT)
            if rc < 0:
                if pz_errno() != EAGAIN:
                    _check_rc(-1)
                    continue
                left = dl.left()
                if left == 0:
                    raise TimeoutError("no reply for %s s (%d of the job's replies "
                                       "received)" % (self.timeout, self.received))
                items[0].socket = self.reader.sub
                items[0].events = PZ_POLLIN
                items[0].revents = 0
                items[1].socket = self.push
                items[1].events = PZ_POLLOUT
                items[1].revents = 0
                with nogil:
                    rc = pz_poll(items, 2 if self.pending is not None else 1, left)
                if rc < 0:
                    _check_rc(rc)
                continue
            if self.reader.mp.total != 2:
                self.reader.bad += self.reader.mp.total != 1   # one frame: a welcome
                continue
            with nogil:
                rc = pz_parse(msg_ptr(&self.reader.mp.f[1]),
                              pz_msg_size(&self.reader.mp.f[1]), &env)
            if rc != PZ_OK:
                self.reader.bad += 1
                continue
            if env.f[PZ_F_PIPELINE].n != <size_t>len(self.pipeline) or memcmp(
                    env.f[PZ_F_PIPELINE].p, <char *>self.pipeline, len(self.pipeline)) != 0:
                self.reader.stale += 1
                continue
            self.received += 1
            if self.inflight > 0:
                self.inflight -= 1
            payload, error = self.reader._result(&env)
            if error is not None and self.on_error is not None:
                self.on_error(error)
            return payload
