# The single execution loop of pylm: receive -> decode -> find the method ->
# call -> encode -> send.  It is the one part of a Server, Pipeline, Sink,
# Worker or MuxWorker, run by the Router (router.pyx) like the Master's
# parts; the server classes only configure it (pylm/servers.py).

cdef enum:
    OUT_TOPIC = 1           # PUB: topic frame + envelope
    OUT_PLAIN = 2           # PUSH: envelope (a pylm 0.14 Master's worker link)
    OUT_WORKER = 3          # DEALER to our Master: kind frame + envelope
    MAX_IN = 16
    BATCH = 256             # messages taken from one socket per poll
    BATCH_BYTES = 262144    # a batch is sent once it holds this much
    CREDIT_START = 16       # a worker's first credit, before it has timings
    CREDIT_WORK_NS = 20000000   # a worker asks for about 20 ms of work

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

# Frames of our worker protocol (worker DEALER <-> Master ROUTER):
#   master -> worker: [batch]
#   worker -> master: [R, credit] ready (at start and after RESET), with how
#   many requests it wants in flight; [C, credit] a new credit; [D,
#   completed, batch] results, with the number of requests finished; [H] heartbeat; [B] leaving (the Master hands what it
#   sent here and was not finished to other workers).
#   master -> worker: [RESET, ""] when the Master had given the worker up
#   (its messages went to others): the worker says READY again, and the
#   Master counts its results from then on (everything sent before RESET is
#   ahead of it in the worker's queue, so no stale result is counted).
# A worker sets its credit to about CREDIT_WORK_NS of work at its measured
# speed: a fast worker asks for big batches, a slow one for a few messages,
# so a slow worker never sits on a backlog that others could run.
cdef bytes W_READY = b"R"
cdef bytes W_CREDIT = b"C"
cdef bytes W_DONE = b"D"
cdef bytes W_BEAT = b"H"
cdef bytes W_BYE = b"B"
HB_SUFFIX = b"!hb"      # routing id suffix of a worker's heartbeat socket
W_RESET = b"\x00pylm-reset"
cdef bytes _W_RESET = W_RESET   # read as char *: a module global could be rebound


cdef inline bint is_ping(pz_env *env) noexcept nogil:
    return (env.f[PZ_F_FUNCTION].n == 0 and env.f[PZ_F_CACHE].n >= 10
            and memcmp(env.f[PZ_F_CACHE].p, b"\x00pylm-ping", 10) == 0)


cdef inline str slice_str(pz_slice s):
    return PyUnicode_DecodeUTF8(s.p, <Py_ssize_t>s.n, "replace")


cdef class Executor(Part):
    """The execution part, configured by the server classes.

    :param inbound: list of (pyzmq socket, IN_PLAIN or IN_TOPIC)
    :param out: pyzmq socket replies go to (PUB, PUSH or the worker DEALER)
    :param out_kind: OUT_TOPIC, OUT_PLAIN or OUT_WORKER
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
        much time without a frame to the Master
    :param batch_bytes: in worker mode, the most bytes of results sent in
        one frame (half the Master's maximum message size, at most 256 KiB)
    :param credit: in worker mode, the most messages the Master may have
        in flight here; the worker asks for fewer when its calls are slow
    """
    cdef:
        void *ins[16]               # inbound sockets (libzmq handles)
        int kinds[16]               # IN_* of each inbound socket
        int n_in
        void *out                   # outbound socket
        int out_kind
        Router loop                 # the Router running this part
        long long checked           # last look for a stop request (ns)
        long long last_sent         # last frame to the Master (ms)
        object _sockets             # the pyzmq sockets behind the handles
        bytes name
        dict methods
        bint pipelined, mux
        object stream_hook, error_hook, bad_hook
        long heartbeat_ms
        size_t batch_bytes          # a batch is sent once it holds this much
        int credit                  # most messages the Master may send ahead
        int credit_now              # what we last asked the Master for
        double ns_per_call          # moving average of a call's duration
        Waiter waiter
        bytes last_entry            # the last `server.method` resolved ...
        object last_fn              # ... and its callable
        pz_batch wbatch             # worker mode: results for the Master
        pz_batch cbatch             # replies to one client, sent as one frame
        bytes cbatch_topic          # ... that client's topic
    cdef public long long limit, processed, bad, failed

    def __init__(self, inbound, out, int out_kind, name, dict methods,
                 *, bint pipelined=False, stream_hook=None, error_hook=None,
                 bad_hook=None, bint mux=False, long long limit=2**62,
                 long heartbeat_ms=1000, int credit=64,
                 size_t batch_bytes=BATCH_BYTES):
        if not 0 < len(inbound) <= MAX_IN:
            raise ValueError("between 1 and %d inbound sockets" % MAX_IN)
        self._sockets = (list(inbound), out)
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
        self.batch_bytes = max(<size_t>1, min(batch_bytes, <size_t>BATCH_BYTES))
        self.credit = max(1, credit)
        self.credit_now = min(self.credit, CREDIT_START)
        self.ns_per_call = 0
        self.processed = self.bad = self.failed = 0

    def __dealloc__(self):
        free(self.wbatch.buf)
        free(self.cbatch.buf)

    def counters(self):
        return {"processed": self.processed, "bad": self.bad, "failed": self.failed}

    # -- the part ----------------------------------------------------------

    cdef int attach(self, Router router) except -1:
        cdef int i
        self.loop = router
        self.waiter = router.waiter
        for i in range(self.n_in):
            router.watch(self.ins[i], -1, PZ_POLLIN, self, i, True)
        if self.out_kind == OUT_TOPIC:
            # the XPUB too: subscriptions (and welcomes) are handled there.
            # Only a socket not watched already: ZMQ_EVENTS on a second
            # item of the same socket would consume the wake-up of the
            # first and leave the poll blocked until its timeout.
            router.watch(self.out, -1, PZ_POLLIN, self, MAX_IN, False)
        if self.out_kind == OUT_WORKER:
            router.tick(self, self.heartbeat_ms)
        return 0

    cdef int begin(self) except -1:
        self.checked = now_ns()
        if self.limit <= 0:
            return 1
        return self._send_control(W_READY, b"%d" % self.credit_now)

    cdef int finish(self) except -1:
        if self.out_kind == OUT_WORKER:
            pz_send(self.out, <char *>W_BYE, 1, PZ_DONTWAIT)
        return 0

    cdef int on_tick(self, long long now) except -1:
        if now - self.last_sent >= self.heartbeat_ms:
            self._send_control(W_BEAT, None)
        return 0

    cdef int on_ready(self, int slot, short revents) except -1:
        """Serve what waits on inbound socket `slot`.  1 when the limit is
        reached or a stop was asked."""
        cdef Multipart mp
        cdef int j, rc
        cdef long long now
        if slot == MAX_IN:
            return drain(self.out)
        mp_init(&mp)
        try:
            for j in range(BATCH):
                with nogil:
                    rc = mp_recv(&mp, self.ins[slot], PZ_DONTWAIT)
                if rc < 0:
                    if pz_errno() == EAGAIN:
                        return 0
                    _check_rc(rc)
                    continue
                if self._handle(&mp, self.kinds[slot]) or self.processed >= self.limit:
                    return 1
                # a busy inbound never runs dry: look for stop() (or a
                # signal) between messages too, at most every 10 ms (a poll
                # per message would cost a third of a stage)
                now = now_ns()
                if now - self.checked > 10000000:
                    self.checked = now
                    if self.loop.stop_asked():
                        return 1
        finally:
            mp_close(&mp)
        return 0

    cdef int _send_control(self, bytes kind, bytes arg) except -1:
        if self.out_kind != OUT_WORKER:
            return 0
        self.last_sent = now_ms()
        if arg is None:
            _check_rc(pz_send(self.out, <char *>kind, 1, 0))
        else:
            _check_rc(pz_send(self.out, <char *>kind, 1, PZ_SNDMORE))
            _check_rc(pz_send(self.out, <char *>arg, len(arg), 0))
        return 0

    cdef int _handle(self, Multipart *mp, int kind) except -1:
        """One inbound message: an envelope, or a batch of them (from our
        Master in worker mode, or [BATCH_MARK, batch] from our clients).
        Returns 1 when a stop was requested."""
        cdef pz_msg_t *frame
        cdef const char *p
        cdef const char *end
        cdef pz_slice one
        cdef int rc, n
        cdef int batch
        if self.out_kind == OUT_WORKER:
            # our Master sends [batch], or [RESET, ""]
            if mp.total == 2 and pz_msg_size(&mp.f[0]) == <size_t>len(_W_RESET) and memcmp(
                    msg_ptr(&mp.f[0]), <char *>_W_RESET, len(_W_RESET)) == 0:
                self._send_control(W_READY, b"%d" % self.credit_now)
                return 0
            batch = 1 if mp.total == 1 else -1
            frame = &mp.f[0]
        else:
            batch = envelope_frame(mp, kind, &frame)
        if batch < 0:
            return self._drop("an inbound message of %d frames" % mp.total)
        p = msg_ptr(frame)
        end = p + pz_msg_size(frame)
        cdef long long t0 = now_ns()
        cdef long long done0 = self.processed
        if batch == 2:
            rc = self._one(p, <size_t>(end - p), &mp.f[2])
        elif not batch:
            rc = self._one(p, <size_t>(end - p), NULL)
        else:
            rc = 0
            while rc == 0:
                n = pz_batch_next(&p, end, &one)
                if n == 0:
                    break
                if n < 0:
                    self._drop("a malformed batch")
                    break
                rc = self._one(one.p, one.n, NULL)
        if rc == 0:
            rc = self._flush()
        if self.out_kind == OUT_WORKER and self.processed > done0 and rc == 0:
            self._adapt_credit(now_ns() - t0, self.processed - done0)
        return rc

    cdef int _adapt_credit(self, long long ns, long long calls) except -1:
        """Ask the Master for about CREDIT_WORK_NS of work at the speed
        measured (moving average), when that differs by 2x from the last ask."""
        cdef double per = <double>ns / calls
        cdef long long want
        self.ns_per_call = per if self.ns_per_call == 0 else 0.7 * self.ns_per_call + 0.3 * per
        want = <long long>(CREDIT_WORK_NS / max(self.ns_per_call, 1.0))
        want = max(1, min(want, self.credit))
        if want * 2 <= self.credit_now or want >= self.credit_now * 2 or \
                (want == self.credit and self.credit_now != self.credit):
            self.credit_now = <int>want
            self._send_control(W_CREDIT, b"%d" % want)
        return 0

    cdef int _one(self, const char *p, size_t n, pz_msg_t *pframe) except -1:
        """Serve one envelope (its payload in frame `pframe` when not NULL).
        1 when a stop was requested."""
        cdef pz_env env
        cdef pz_slice entry
        cdef int rc
        cdef const char *dot
        with nogil:
            rc = pz_parse(p, n, &env)
        if rc != PZ_OK:
            self._drop(_DECODE_REASONS.get(rc, "malformed envelope"))
            return self._complete()
        if pframe != NULL:
            take_payload(&env, pframe)
        if is_ping(&env):
            return self._emit(&env, None, None, True)
        if env.f[PZ_F_ERROR].n:
            # an error of an earlier stage travels on to the client
            return self._emit(&env, None, None, True) or self._complete()
        self.processed += 1
        if not pz_function_at(&env.f[PZ_F_FUNCTION], env.stage, &entry):
            return self._fail(&env, BAD_FUNCTION, "stage %d is past the end of function %r"
                              % (env.stage, slice_str(env.f[PZ_F_FUNCTION])))
        dot = <const char *>memchr(entry.p, b'.', entry.n)
        if dot == NULL:
            return self._fail(&env, BAD_FUNCTION, "function %r is not 'server.method'"
                              % slice_str(entry))
        if self.name is not None and (
                <size_t>(dot - entry.p) != <size_t>len(self.name)
                or memcmp(entry.p, <char *>self.name, dot - entry.p) != 0):
            return self._fail(&env, BAD_FUNCTION, "%r names another server; this is %r"
                              % (slice_str(entry), self.name.decode()))
        fn = self._lookup(dot + 1, entry.n - <size_t>(dot + 1 - entry.p))
        if fn is None:
            return self._fail(&env, NO_METHOD, "no method %r on this server"
                              % slice_str(entry))
        payload = PyBytes_FromStringAndSize(env.f[PZ_F_PAYLOAD].p,
                                            <Py_ssize_t>env.f[PZ_F_PAYLOAD].n)
        try:
            result = fn(payload)
            if self.mux:
                for value in result:
                    if value is not None and self._emit(&env, value, None, False):
                        return 1
                return self._complete()
        except Exception as exc:
            self.failed += 1
            text = self._error_of(slice_str(entry), exc)
            rc = self._emit(&env, None, text, False)
            return rc or self._complete()
        rc = self._emit(&env, result, None, False)
        return rc or self._complete()

    cdef inline int _complete(self) except -1:
        """A request is finished: in worker mode it returns a credit."""
        self.wbatch.completed += 1
        return 0

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

    cdef int _fail(self, pz_env *env, str code, str message) except -1:
        """Answer a call that names no method of ours with a LookupError
        carrying `code` (pylm_core.errors: readers decide by the code)."""
        self.failed += 1
        if self.bad_hook is not None:
            self.bad_hook("LookupError: " + message)
        return (self._emit(env, None, RemoteError("LookupError", message, "", code).to_wire(),
                           False)
                or self._complete())

    cdef str _error_of(self, str entry, exc):
        """The error field for `exc`, raised by `entry` (a method, or a
        hook): through error_hook, which logs it, when there is one."""
        if self.error_hook is not None:
            return self.error_hook(entry, exc)
        return error_text(exc)

    cdef int _emit(self, pz_env *env, object result, str error, bint as_is) except -1:
        """Send the reply to `env`: its payload replaced by `result`, or an
        error reply (empty payload, `error` set); `as_is` passes env on
        unchanged (pings, and errors of earlier stages).  Pings, errors and
        results take the default route: to the client, or along the stream
        (topic = name) when pipelined, where the last stage hands them to the
        client; an error raised here also goes to the client's topic here.
        Past a custom handle_stream, whose topics we cannot know, pings stop
        and errors go straight to the client's topic.  1 when stopped."""
        cdef pz_env o = env[0]
        cdef Py_buffer buf
        cdef bint held = False
        cdef bint to_client = not self.pipelined
        cdef bytes etext
        cdef PalmMessage msg
        cdef object topic = None
        if error is not None:
            etext = error.encode("utf-8", "replace")
            o.f[PZ_F_PAYLOAD].n = 0
            o.f[PZ_F_ERROR].p = <char *>etext
            o.f[PZ_F_ERROR].n = len(etext)
            if self.pipelined and self.stream_hook is None:
                # both to a client subscribed here and along the stream to
                # one subscribed at the last stage: each client sees one
                return self._out(&o, True, None) or self._out(&o, False, None)
            to_client = True
        elif as_is:
            if self.pipelined and self.stream_hook is not None:
                if not o.f[PZ_F_ERROR].n:
                    return 0
                to_client = True
        else:
            if result is None:
                return 0
            if type(result) is bytes:
                o.f[PZ_F_PAYLOAD].p = PyBytes_AS_STRING(result)
                o.f[PZ_F_PAYLOAD].n = <size_t>PyBytes_GET_SIZE(result)
            else:
                try:
                    check_payload(result)
                except TypeError as exc:
                    self.failed += 1
                    text = self._error_of("", exc)
                    return self._emit(env, None, text, False)
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
                try:
                    res = self.stream_hook(msg)
                    if res is not None:
                        topic, msg = res
                        if msg is not None and not isinstance(msg, PalmMessage):
                            raise TypeError("handle_stream returned %s, not "
                                            "(topic, PalmMessage)" % type(msg).__name__)
                except Exception as exc:
                    self.failed += 1
                    text = self._error_of("handle_stream", exc)
                    return self._emit(env, None, text, False)
                if res is None:
                    return 0
                if msg is None:
                    return 0
                if held:
                    PyBuffer_Release(&buf)
                    held = False
                held = msg.to_env(&o, &buf)
                topic = topic.encode() if isinstance(topic, str) else bytes(topic)
            return self._out(&o, to_client, topic)
        finally:
            if held:
                PyBuffer_Release(&buf)

    cdef int _out(self, pz_env *o, bint to_client, object topic) except -1:
        """Queue or send one reply.  Worker mode: into the batch for the
        Master.  Replies to a client that takes batches (flags) on the
        default route: into that client's batch.  Anything else: alone,
        after the batch so far (order is kept).  1 when stopped."""
        cdef pz_msg_t m
        cdef const char *tp
        cdef size_t tn
        if self.out_kind == OUT_WORKER:
            if pz_batch_add_env(&self.wbatch, o) != 0:
                raise MemoryError()
            if self.wbatch.len >= self.batch_bytes:
                return self._flush()
            return 0
        if self.out_kind == OUT_TOPIC:
            if topic is None and to_client and o.flags & PZ_FLAG_BATCH:
                tn = o.f[PZ_F_CLIENT].n
                if for_other_client(&self.cbatch, self.cbatch_topic, o.f[PZ_F_CLIENT].p, tn):
                    if self._flush():
                        return 1
                if self.cbatch.count == 0:
                    self.cbatch_topic = PyBytes_FromStringAndSize(o.f[PZ_F_CLIENT].p, <Py_ssize_t>tn)
                if pz_batch_add_env(&self.cbatch, o) != 0:
                    raise MemoryError()
                if self.cbatch.len >= BATCH_BYTES:
                    return self._flush()
                return 0
            if self.cbatch.count and self._flush():
                return 1
            if topic is not None:
                tp = <char *>topic
                tn = len(topic)
            elif to_client:
                tp = o.f[PZ_F_CLIENT].p
                tn = o.f[PZ_F_CLIENT].n
            else:
                tp = <char *>self.name
                tn = len(self.name)
            if env_to_msg(o, &m) != 0:
                raise MemoryError()
            return send_topic(self.waiter, self.out, tp, tn, &m, NULL)
        if env_to_msg(o, &m) != 0:
            raise MemoryError()
        return self.waiter.send(&m, self.out, 0)

    cdef int _flush(self) except -1:
        """Send what the batches hold.  1 when stopped."""
        cdef pz_msg_t m
        cdef bytes done
        if self.out_kind == OUT_WORKER:
            if self.wbatch.completed == 0 and self.wbatch.count == 0:
                return 0
            done = b"%d" % self.wbatch.completed
            self.last_sent = now_ms()
            batch_to_msg(&self.wbatch, &m)
            _check_rc(pz_send(self.out, <char *>W_DONE, 1, PZ_SNDMORE))
            _check_rc(pz_send(self.out, <char *>done, len(done), PZ_SNDMORE))
            return send_owned(self.out, &m, 0)
        if self.cbatch.count == 0:
            return 0
        batch_to_msg(&self.cbatch, &m)
        return send_topic(self.waiter, self.out, <char *>self.cbatch_topic,
                          len(self.cbatch_topic), &m, <char *>_BATCH_MARK)
