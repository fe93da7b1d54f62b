# The single execution loop of pylm: receive -> decode -> find the method ->
# call -> encode -> send.  Server, Pipeline, Sink, Worker and MuxWorker only
# configure it (pylm/_runtime.py); the Master's broker is in broker.pyx.

cdef enum:
    IN_PLAIN = 0            # one frame: an envelope (PULL, our DEALER)
    IN_TOPIC = 1            # two frames: topic, envelope (SUB)
    OUT_TOPIC = 1           # PUB: topic frame + envelope
    OUT_PLAIN = 2           # PUSH: envelope (a pylm 0.14 Master's worker link)
    OUT_WORKER = 3          # DEALER to our Master: kind frame + envelope
    MAX_IN = 16
    BATCH = 256             # messages taken from one socket per poll

IN_PLAIN_ = IN_PLAIN
IN_TOPIC_ = IN_TOPIC
OUT_TOPIC_ = OUT_TOPIC
OUT_PLAIN_ = OUT_PLAIN
OUT_WORKER_ = OUT_WORKER

# The handshake a client uses to know its subscription is live: an envelope
# with an empty `function` and this prefix in `cache` is published straight
# back to its `client` topic by every pylm server (never run as a call).
PING_PREFIX = b"\x00pylm-ping"
# What every pylm server's XPUB sends a new subscriber first (one frame).
WELCOME = b"\x00pylm-welcome"
cdef bytes _PING = PING_PREFIX

# Frames of our worker protocol (worker DEALER <-> Master ROUTER).
cdef bytes W_READY = b"R"        # worker -> master: [R, credit]
cdef bytes W_DONE = b"D"         # worker -> master: [D, envelope] or [D]; returns a credit
cdef bytes W_PART = b"P"         # worker -> master: [P, envelope] (MuxWorker)
cdef bytes W_BEAT = b"H"         # worker -> master: [H] heartbeat


cdef inline bint is_ping(pz_env *env) noexcept nogil:
    return (env.f[PZ_F_FUNCTION].n == 0 and env.f[PZ_F_CACHE].n >= 10
            and memcmp(env.f[PZ_F_CACHE].p, b"\x00pylm-ping", 10) == 0)


cdef inline str slice_str(pz_slice s):
    return PyUnicode_DecodeUTF8(s.p, <Py_ssize_t>s.n, "replace")


cdef class Executor:
    """The execution loop, configured by the server classes.

    :param inbound: list of (pyzmq socket, IN_PLAIN or IN_TOPIC)
    :param out: pyzmq socket replies go to (PUB, PUSH or the worker DEALER)
    :param out_kind: OUT_TOPIC, OUT_PLAIN or OUT_WORKER
    :param control: a bound PULL socket; any message on it stops the loop
    :param name: server name that `function` entries must name, or None
        (workers serve whatever their Master sends)
    :param methods: dict ``method name (bytes) -> callable(payload)``
    :param pipelined: publish to topic `name` with ``stage += 1`` instead of
        to the client
    :param stream_hook: the server's ``handle_stream`` when a subclass
        overrides it, else None (the C default above is used)
    :param error_hook: ``callable(entry, exc) -> str`` logs a failed call and
        returns the text for the envelope's error field
    :param bad_hook: ``callable(reason)`` for input that is dropped
    :param mux: methods are generators; each yielded value is one reply
    :param limit: return after this many calls (``messages=N``)
    :param heartbeat_ms: in worker mode, a heartbeat is sent after this
        much idle time
    :param credit: in worker mode, how many messages the Master may send
        ahead (least-loaded dispatch; a slow worker holds at most this many)
    """
    cdef:
        void *ins[16]               # inbound sockets (libzmq handles)
        int kinds[16]               # IN_* of each inbound socket
        int n_in
        void *out                   # outbound socket
        int out_kind
        void *control               # stop requests arrive here
        object _sockets             # the pyzmq sockets behind the handles
        bytes name
        dict methods
        bint pipelined, mux
        object stream_hook, error_hook, bad_hook
        long heartbeat_ms
        int credit                  # messages our Master may have in flight here
        Waiter waiter
        bytes last_entry            # the last `server.method` resolved ...
        object last_fn              # ... and its callable
    cdef public long long limit, processed, bad, failed

    def __init__(self, inbound, out, int out_kind, control, name, dict methods,
                 *, bint pipelined=False, stream_hook=None, error_hook=None,
                 bad_hook=None, bint mux=False, long long limit=2**62,
                 long heartbeat_ms=1000, int credit=64):
        if not 0 < len(inbound) <= MAX_IN:
            raise ValueError("between 1 and %d inbound sockets" % MAX_IN)
        self._sockets = (list(inbound), out, control)
        self.n_in = len(inbound)
        for i, (sock, kind) in enumerate(inbound):
            if kind not in (IN_PLAIN, IN_TOPIC):
                raise ValueError("bad inbound kind %r" % (kind,))
            self.ins[i] = sock_handle(sock)
            self.kinds[i] = kind
        if out_kind not in (OUT_TOPIC, OUT_PLAIN, OUT_WORKER):
            raise ValueError("bad outbound kind %r" % (out_kind,))
        self.out = sock_handle(out)
        self.out_kind = out_kind
        self.control = sock_handle(control)
        self.name = None if name is None else (
            name.encode() if isinstance(name, str) else bytes(name))
        self.methods = methods
        self.pipelined = pipelined
        self.stream_hook = stream_hook
        self.error_hook = error_hook
        self.bad_hook = bad_hook
        self.mux = mux
        self.limit = limit
        self.heartbeat_ms = heartbeat_ms
        self.credit = credit
        self.waiter = Waiter()
        self.waiter.control = self.control
        self.processed = self.bad = self.failed = 0

    def run(self):
        """Serve until `limit` calls were made or a stop request arrives."""
        cdef pz_pollitem_t items[18]
        cdef Multipart mp
        cdef int i, j, rc, err
        cdef long timeout = self.heartbeat_ms if self.out_kind == OUT_WORKER else -1
        mp_init(&mp)
        try:
            if self.out_kind == OUT_WORKER:
                self._send_control(W_READY, b"%d" % self.credit)
            while self.processed < self.limit:
                for i in range(self.n_in):
                    items[i].socket = self.ins[i]
                    items[i].events = PZ_POLLIN
                    items[i].revents = 0
                items[self.n_in].socket = self.control
                items[self.n_in].events = PZ_POLLIN
                items[self.n_in].revents = 0
                # the XPUB too: subscriptions (and welcomes) are handled there
                items[self.n_in + 1].socket = self.out
                items[self.n_in + 1].events = PZ_POLLIN if self.out_kind == OUT_TOPIC else 0
                items[self.n_in + 1].revents = 0
                with nogil:
                    rc = pz_poll(items, self.n_in + 2, timeout)
                if rc < 0:
                    _check_rc(rc)
                    continue
                if rc == 0:
                    self._send_control(W_BEAT, None)
                    continue
                if items[self.n_in].revents & PZ_POLLIN:
                    return
                if items[self.n_in + 1].revents & PZ_POLLIN:
                    drain(self.out)
                for i in range(self.n_in):
                    if not items[i].revents & PZ_POLLIN:
                        continue
                    for j in range(BATCH):
                        with nogil:
                            rc = mp_recv(&mp, self.ins[i], PZ_DONTWAIT)
                        if rc < 0:
                            err = pz_errno()
                            if err == EAGAIN:
                                break
                            _check_rc(rc)
                            continue
                        if self._handle(&mp, self.kinds[i]) or self.processed >= self.limit:
                            return
        finally:
            mp_close(&mp)

    cdef int _send_control(self, bytes kind, bytes arg) except -1:
        cdef pz_msg_t m
        if self.out_kind != OUT_WORKER:
            return 0
        if arg is None:
            _check_rc(pz_send(self.out, <char *>kind, 1, 0))
        else:
            _check_rc(pz_send(self.out, <char *>kind, 1, PZ_SNDMORE))
            _check_rc(pz_send(self.out, <char *>arg, len(arg), 0))
        return 0

    cdef int _handle(self, Multipart *mp, int kind) except -1:
        """One inbound message.  Returns 1 when a stop was requested."""
        cdef pz_env env
        cdef pz_slice entry
        cdef pz_msg_t *frame
        cdef int rc
        cdef const char *dot
        if kind == IN_TOPIC:
            if mp.total != 2:
                return self._drop("a subscription message has %d frames, not 2" % mp.total)
            frame = &mp.f[1]
        else:
            if mp.total != 1:
                return self._drop("an inbound message has %d frames, not 1" % mp.total)
            frame = &mp.f[0]
        with nogil:
            rc = pz_parse(msg_ptr(frame), pz_msg_size(frame), &env)
        if rc != PZ_OK:
            return self._drop(_DECODE_REASONS.get(rc, "malformed envelope"))
        if is_ping(&env):
            return self._emit(&env, None, None, True, W_PART)
        self.processed += 1
        if not pz_function_at(&env.f[PZ_F_FUNCTION], env.stage, &entry):
            return self._fail(&env, "LookupError: stage %d is past the end of function %r"
                              % (env.stage, slice_str(env.f[PZ_F_FUNCTION])))
        dot = <const char *>memchr(entry.p, b'.', entry.n)
        if dot == NULL:
            return self._fail(&env, "LookupError: function %r is not 'server.method'"
                              % slice_str(entry))
        if self.name is not None and (
                <size_t>(dot - entry.p) != <size_t>len(self.name)
                or memcmp(entry.p, <char *>self.name, dot - entry.p) != 0):
            return self._fail(&env, "LookupError: %r names another server; this is %r"
                              % (slice_str(entry), self.name.decode()))
        fn = self._lookup(dot + 1, entry.n - <size_t>(dot + 1 - entry.p))
        if fn is None:
            return self._fail(&env, "LookupError: no method %r on this server"
                              % slice_str(entry))
        payload = PyBytes_FromStringAndSize(env.f[PZ_F_PAYLOAD].p,
                                            <Py_ssize_t>env.f[PZ_F_PAYLOAD].n)
        try:
            result = fn(payload)
            if self.mux:
                for value in result:
                    if value is not None and self._emit(&env, value, None, False, W_PART):
                        return 1
                return self._emit(&env, None, None, False, W_DONE) if self.out_kind == OUT_WORKER else 0
        except Exception as exc:
            self.failed += 1
            text = self.error_hook(slice_str(entry), exc) if self.error_hook is not None else repr(exc)
            return self._emit(&env, None, text, False, W_DONE)
        return self._emit(&env, result, None, False, W_DONE)

    cdef object _lookup(self, const char *p, size_t n):
        if self.last_entry is not None and <size_t>len(self.last_entry) == n and \
                memcmp(<char *>self.last_entry, p, n) == 0:
            return self.last_fn
        key = PyBytes_FromStringAndSize(p, <Py_ssize_t>n)
        fn = self.methods.get(key)
        if fn is not None:
            self.last_entry = key
            self.last_fn = fn
        return fn

    cdef int _drop(self, str reason) except -1:
        self.bad += 1
        if self.bad_hook is not None:
            self.bad_hook(reason)
        return 0

    cdef int _fail(self, pz_env *env, str text) except -1:
        self.failed += 1
        if self.bad_hook is not None:
            self.bad_hook(text)
        return self._emit(env, None, text, False, W_DONE)

    cdef int _emit(self, pz_env *env, object result, str error, bint as_is,
                   bytes wkind) except -1:
        """Send the reply to `env`: its payload replaced by `result`, or an
        error reply (empty payload, `error` set) that always goes to the
        client; `as_is` passes env on unchanged (pings: to the client, or
        along the stream when pipelined; a custom handle_stream, whose
        topics we cannot know, does not see pings).  In worker
        mode a None result still returns the credit.  1 when stopped."""
        cdef pz_env o = env[0]
        cdef Py_buffer buf
        cdef bint held = False
        cdef pz_msg_t m
        cdef bint to_client = error is not None or not self.pipelined
        cdef bytes etext
        cdef PalmMessage msg
        cdef object topic = None
        if error is not None:
            etext = error.encode("utf-8", "replace")
            o.f[PZ_F_PAYLOAD].n = 0
            o.f[PZ_F_ERROR].p = <char *>etext
            o.f[PZ_F_ERROR].n = len(etext)
        elif as_is:
            if self.pipelined and self.stream_hook is not None:
                return 0
        else:
            if result is None:
                if self.out_kind == OUT_WORKER and wkind is W_DONE:
                    return self._send_control(W_DONE, None)
                return 0
            if type(result) is bytes:
                o.f[PZ_F_PAYLOAD].p = PyBytes_AS_STRING(result)
                o.f[PZ_F_PAYLOAD].n = <size_t>PyBytes_GET_SIZE(result)
            else:
                try:
                    check_payload(result)
                except TypeError as exc:
                    self.failed += 1
                    text = self.error_hook("", exc) if self.error_hook is not None else repr(exc)
                    return self._emit(env, None, text, False, wkind)
                PyObject_GetBuffer(result, &buf, PyBUF_SIMPLE)
                held = True
                o.f[PZ_F_PAYLOAD].p = <const char *>buf.buf
                o.f[PZ_F_PAYLOAD].n = <size_t>buf.len
            o.f[PZ_F_ERROR].n = 0
            if not to_client and self.stream_hook is None:
                o.stage += 1
        try:
            if self.stream_hook is not None and not as_is and error is None:
                msg = PalmMessage.__new__(PalmMessage)
                msg.from_env(&o, result)
                res = self.stream_hook(msg)
                if res is None:
                    return 0
                topic, msg = res
                if msg is None:
                    return 0
                if held:
                    PyBuffer_Release(&buf)
                    held = False
                held = msg.to_env(&o, &buf)
                topic = topic.encode() if isinstance(topic, str) else bytes(topic)
            if env_to_msg(&o, &m) != 0:
                _check_rc(-1)
        finally:
            if held:
                PyBuffer_Release(&buf)
        return self._send_reply(&m, &o, to_client, topic, wkind)

    cdef int _send_reply(self, pz_msg_t *m, pz_env *o, bint to_client, object topic,
                         bytes wkind) except -1:
        cdef pz_msg_t t
        cdef int rc
        cdef const char *tp
        cdef size_t tn
        if self.out_kind == OUT_TOPIC:
            if topic is not None:
                tp = <char *>topic
                tn = len(topic)
            elif to_client:
                tp = o.f[PZ_F_CLIENT].p
                tn = o.f[PZ_F_CLIENT].n
            else:
                tp = <char *>self.name
                tn = len(self.name)
            if pz_msg_init_size(&t, tn) != 0:
                pz_msg_close(m)
                _check_rc(-1)
            memcpy(pz_msg_data(&t), tp, tn)
            if self.waiter.send(&t, self.out, PZ_SNDMORE):
                pz_msg_close(m)
                return 1
        elif self.out_kind == OUT_WORKER:
            _check_rc(pz_send(self.out, <char *>wkind, 1, PZ_SNDMORE))
        if self.out_kind == OUT_TOPIC or self.out_kind == OUT_WORKER:
            with nogil:
                rc = pz_msg_send(m, self.out, 0)
            if rc < 0:
                pz_msg_close(m)
                _check_rc(rc)
            return 0
        return self.waiter.send(m, self.out, 0)
