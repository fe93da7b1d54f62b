# The single execution loop of pylm: receive -> decode -> find the method ->
# call -> encode -> send.  It is the one part of a Server, Pipeline, Sink,
# Worker or MuxWorker, run by the Router (router.pyx) like the Master's
# parts; the server classes only configure it (pylm/servers.py).

cdef enum:
    MAX_IN = 16             # inbound sockets of one Executor

cdef inline bint is_ping(pz_env *env) noexcept:
    return (env.f[PZ_F_FUNCTION].n == 0
            and env.f[PZ_F_CACHE].n >= <size_t>len(_PING_PREFIX)
            and memcmp(env.f[PZ_F_CACHE].p, <char *>_PING_PREFIX, len(_PING_PREFIX)) == 0)


cdef inline str slice_str(pz_slice s):
    return PyUnicode_DecodeUTF8(s.p, <Py_ssize_t>s.n, "replace")


cdef object _ndarray = None         # numpy.ndarray, once numpy is imported

cdef bint is_ndarray(object value) except -1:
    """Is value a numpy array?  Asked of results that are not bytes only,
    and without importing numpy: a process that never imported it has
    no arrays."""
    global _ndarray
    if _ndarray is None:
        numpy = sys.modules.get("numpy")
        if numpy is None:
            return False
        _ndarray = numpy.ndarray
    return isinstance(value, _ndarray)


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
    :param array_parts: ``callable(array) -> (header bytes, data)`` for a
        numpy array a method returns: the reply's payload is the header
        then the data, written into the message one after the other, so
        the array is not copied to join them (pylm/arrays.py); None: an
        array is sent as any buffer, its raw bytes
    :param mux: methods are generators; each yielded value is one reply
    :param limit: return after this many calls (``messages=N``)
    :param batch_bytes: in worker mode, the most bytes of results sent in
        one frame (half the Master's maximum message size, at most 256 KiB)
    :param credit: in worker mode, the most messages the Master may have
        in flight here; the worker asks for fewer when its calls are slow
    :param hold_replies, hold_seconds: with an XPUB out (OUT_TOPIC), a
        reply whose topic no one subscribes to yet is held, at most this
        many for at most this long (subscriptions.pyx)
    """
    cdef:
        void *ins[16]               # inbound sockets (libzmq handles)
        int in_watch[16]            # their watch numbers in the Router
        int kinds[16]               # IN_* of each inbound socket
        int n_in
        void *out                   # outbound socket
        int out_kind
        Router runner               # the Router running this part
        long long checked           # last look for a stop request (ns)
        object _sockets             # the pyzmq sockets behind the handles
        bytes name
        dict methods
        bint pipelined, mux
        object stream_hook, error_hook
        object array_parts
        pz_slice head               # written before the payload of the reply
                                    # being sent (an array's header), else empty
        size_t batch_bytes          # a batch is sent once it holds this much
        int credit                  # most messages the Master may send ahead
        int credit_now              # what we last asked the Master for
        double ns_per_call          # moving average of a call's duration
        Waiter waiter
        bytes last_entry            # the last `server.method` resolved ...
        object last_fn              # ... and its callable
        int last_index              # ... and its number in `names`
        list names                  # method names (bytes), in `methods` order
        dict index_of               # method name -> its number
        long long *calls            # per method: calls made (malloc'd) ...
        long long *errors           # ... and calls that raised
        pz_batch wbatch             # worker mode: results for the Master
        ClientBatch cbatch          # replies to clients that read batches
        Subscriptions subs          # OUT_TOPIC: who subscribes to out, held replies
    cdef public long long limit, processed, failed, sent, pings

    def __init__(self, inbound, out, int out_kind, name, dict methods,
                 *, bint pipelined=False, stream_hook=None, error_hook=None,
                 bad_hook=None, array_parts=None, bint mux=False, long long limit=2**62,
                 int credit=64,
                 size_t batch_bytes=BATCH_BYTES, size_t hold_replies=HOLD_REPLIES,
                 double hold_seconds=HOLD_SECONDS):
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
        self.names = list(methods)
        self.index_of = {name: i for i, name in enumerate(self.names)}
        self.calls = <long long *>calloc(len(self.names) + 1, sizeof(long long))
        self.errors = <long long *>calloc(len(self.names) + 1, sizeof(long long))
        if self.calls == NULL or self.errors == NULL:
            raise MemoryError()
        self.pipelined = pipelined
        self.stream_hook = stream_hook
        self.error_hook = error_hook
        self.bad_hook = bad_hook
        self.array_parts = array_parts
        self.head.n = 0
        self.mux = mux
        self.limit = limit
        self.batch_bytes = max(<size_t>1, min(batch_bytes, <size_t>BATCH_BYTES))
        self.credit = max(1, credit)
        self.credit_now = min(self.credit, CREDIT_START)
        self.ns_per_call = 0
        self.processed = self.bad = self.failed = self.sent = self.pings = 0
        self.cbatch = ClientBatch()
        if out_kind == OUT_TOPIC:
            self.subs = Subscriptions(hold_replies, hold_seconds)

    def __dealloc__(self):
        free(self.wbatch.buf)
        free(self.calls)
        free(self.errors)

    def counters(self):
        counts = {"processed": self.processed, "bad": self.bad, "failed": self.failed,
                  "sent": self.sent, "pings": self.pings}
        if self.subs is not None:
            counts.update(self.subs.counters())
        return counts

    def details(self):
        """``{"methods": {name: {"calls": n, "errors": n}}}``: calls of each
        method, and how many of them raised."""
        return {"methods": {self.names[i].decode(errors="replace"):
                            {"calls": self.calls[i], "errors": self.errors[i]}
                            for i in range(len(self.names))}}

    # -- the part ----------------------------------------------------------

    cdef int attach(self, Router runner) except -1:
        cdef int i
        self.runner = runner
        self.waiter = runner.waiter
        if self.subs is not None:
            self.subs.bind(self.out, self.waiter)
            if self.subs.holds():
                runner.tick(self, HOLD_TICK_MS)
        self.cbatch.bind(self.out, self.waiter, self.subs)
        for i in range(self.n_in):
            self.in_watch[i] = runner.watch(self.ins[i], -1, PZ_POLLIN, self, i, True)
        if self.out_kind == OUT_TOPIC:
            # the XPUB too: subscriptions (and welcomes) are handled there.
            # Only a socket not watched already: ZMQ_EVENTS on a second
            # item of the same socket would consume the wake-up of the
            # first and leave the poll blocked until its timeout.
            runner.watch(self.out, -1, PZ_POLLIN, self, MAX_IN, False)
        return 0

    cdef int begin(self) except -1:
        self.checked = now_ns()
        if self.limit <= 0:
            return 1
        return self._send_control(W_READY, self.credit_now)

    cdef int on_tick(self, long long now) except -1:
        return self.subs.tick(now_ns())

    cdef int finish(self) except -1:
        cdef char kind = W_BYE
        cdef OutFrame bye
        if self.out_kind == OUT_WORKER:
            # best effort: a Master that misses it gives the worker up at
            # its worker_timeout instead
            bye = copy_frame(&kind, 1)
            try:
                send_frames(self.out, &bye, 1, PZ_DONTWAIT, None, NULL)
            except Exception:
                pass
        return 0

    cdef int on_ready(self, int slot, short revents) except -1:
        """Serve what waits on inbound socket `slot`.  1 when the limit is
        reached or a stop was asked."""
        cdef Multipart mp
        cdef int j, rc
        cdef long long now
        if slot == MAX_IN:
            return self.subs.read()
        mp_init(&mp)
        try:
            for j in range(BATCH):
                with nogil:
                    rc = mp_recv(&mp, self.ins[slot], PZ_DONTWAIT)
                if rc < 0:
                    if pz_errno() == EAGAIN:
                        # only read here (a worker's DEALER is written too):
                        # the Router's wait need not ask it before sleeping
                        if self.ins[slot] != self.out:
                            self.runner.mark_drained(self.in_watch[slot])
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
                    if self.runner.stop_asked():
                        return 1
        finally:
            mp_close(&mp)
        return 0

    cdef int _send_control(self, char kind, long long value) except -1:
        """[kind, value] to our Master (worker protocol, consts.pxi),
        waiting for room while stoppable.  1 when stopped."""
        cdef OutFrame out[2]
        cdef bytes arg = b"%d" % value
        if self.out_kind != OUT_WORKER:
            return 0
        out[0] = copy_frame(&kind, 1)
        out[1] = copy_frame(<char *>arg, len(arg))
        return send_frames(self.out, out, 2, 0, self.waiter, NULL)

    cdef int _handle(self, Multipart *mp, int kind) except -1:
        """One inbound message: an envelope, or a batch of them (from our
        Master in worker mode, or [BATCH_MARK, batch] from our clients).
        Returns 1 when a stop was requested."""
        cdef pz_msg_t *frame
        cdef const char *p
        cdef const char *end
        cdef pz_slice one
        cdef int rc
        cdef int batch
        if self.out_kind == OUT_WORKER:
            # our Master sends [batch], or [RESET, ""]
            if mp.total == 2 and pz_msg_size(&mp.f[0]) == <size_t>len(_W_RESET) and memcmp(
                    msg_ptr(&mp.f[0]), <char *>_W_RESET, len(_W_RESET)) == 0:
                return self._send_control(W_READY, self.credit_now)
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
            while rc == 0 and self._next_in_batch(&p, end, &one, "a malformed batch"):
                rc = self._one(one.p, one.n, NULL)
        if rc == 0:
            rc = self._flush()
        if self.out_kind == OUT_WORKER and self.processed > done0 and rc == 0:
            rc = self._adapt_credit(now_ns() - t0, self.processed - done0)
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
            return self._send_control(W_CREDIT, want)
        return 0

    cdef int _one(self, const char *p, size_t n, pz_msg_t *pframe) except -1:
        """Serve one envelope (its payload in frame `pframe` when not NULL).
        1 when a stop was requested."""
        cdef pz_env env
        cdef pz_slice entry
        cdef int rc
        cdef const char *dot
        rc = pz_parse(p, n, &env)         # GIL kept: tens of ns (see wire.h)
        if rc != PZ_OK:
            self._drop(_DECODE_REASONS.get(rc, "malformed envelope"))
            return self._complete()
        if pframe != NULL:
            take_payload(&env, pframe)
        if is_ping(&env):
            return self._pass_on(&env)
        if env.f[PZ_F_ERROR].n:
            # an error of an earlier stage travels on to the client
            return self._pass_on(&env) or self._complete()
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
        cdef int method = self.last_index
        self.calls[method] += 1
        payload = PyBytes_FromStringAndSize(env.f[PZ_F_PAYLOAD].p,
                                            <Py_ssize_t>env.f[PZ_F_PAYLOAD].n)
        try:
            result = fn(payload)
            if self.mux:
                for value in result:
                    if value is not None and self._reply(&env, value):
                        return 1
                return self._complete()
        except Exception as exc:
            self.failed += 1
            self.errors[method] += 1
            text = self._error_of(slice_str(entry), exc)
            rc = self._reply_error(&env, text)
            return rc or self._complete()
        rc = self._reply(&env, result)
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
            self.last_index = self.index_of[key]
        return fn


    cdef int _fail(self, pz_env *env, str code, str message) except -1:
        """Answer a call that names no method of ours with a LookupError
        carrying `code` (pylm_core.errors: readers decide by the code)."""
        self.failed += 1
        if self.bad_hook is not None:
            self.bad_hook("LookupError: " + message)
        return (self._reply_error(env, RemoteError("LookupError", message, "", code).to_wire())
                or self._complete())

    cdef str _error_of(self, str entry, exc):
        """The error field for `exc`, raised by `entry` (a method, or a
        hook): through error_hook, which logs it, when there is one."""
        if self.error_hook is not None:
            return self.error_hook(entry, exc)
        return error_text(exc)

    # -- replies ---------------------------------------------------------
    # Results, errors and pings take the default route: to the client, or
    # along the stream (topic = name) when pipelined, where the last stage
    # hands them to the client.  Past a custom handle_stream, whose topics
    # we cannot know, pings stop and errors go straight to the client's
    # topic.  Each returns 1 when stopped.

    cdef int _reply(self, pz_env *env, object result) except -1:
        """Send the reply to `env`: its payload replaced by `result` (None:
        no reply), through handle_stream when the server overrides it."""
        cdef pz_env o
        cdef Py_buffer buf
        cdef bint held = False
        cdef bytes head = None
        if result is None:
            return 0
        o = env[0]
        if type(result) is bytes:
            o.f[PZ_F_PAYLOAD].p = PyBytes_AS_STRING(result)
            o.f[PZ_F_PAYLOAD].n = <size_t>PyBytes_GET_SIZE(result)
        else:
            if self.array_parts is not None and is_ndarray(result):
                try:
                    head, result = self.array_parts(result)
                    if self.stream_hook is not None:
                        # handle_stream gets the payload as one buffer
                        result = b"".join((head, result))
                        head = None
                except Exception as exc:
                    self.failed += 1
                    return self._reply_error(env, self._error_of("", exc))
            try:
                check_payload(result)
            except TypeError as exc:
                self.failed += 1
                return self._reply_error(env, self._error_of("", exc))
            PyObject_GetBuffer(result, &buf, PyBUF_SIMPLE)
            held = True
            o.f[PZ_F_PAYLOAD].p = <const char *>buf.buf
            o.f[PZ_F_PAYLOAD].n = <size_t>buf.len
        o.f[PZ_F_ERROR].n = 0
        if head is not None:
            self.head.p = PyBytes_AS_STRING(head)
            self.head.n = <size_t>PyBytes_GET_SIZE(head)
        try:
            if self.stream_hook is not None:
                return self._through_stream_hook(env, &o, result, &buf, &held)
            if self.pipelined:
                o.stage += 1
            return self._out(&o, not self.pipelined, None)
        finally:
            self.head.n = 0
            if held:
                PyBuffer_Release(&buf)

    cdef int _through_stream_hook(self, pz_env *env, pz_env *o, object result,
                                  Py_buffer *buf, bint *held) except -1:
        """Send the reply `o` (to `env`, payload `result`) where the
        server's handle_stream says: a (topic, PalmMessage) or None (no
        reply).  *buf holds the payload's buffer when *held; the message
        handle_stream returns takes its place (the caller releases it)."""
        cdef PalmMessage msg = PalmMessage.__new__(PalmMessage)
        cdef object topic
        msg.from_env(o, result)
        try:
            res = self.stream_hook(msg)
            if res is not None:
                topic, msg = res
                if msg is not None and not isinstance(msg, PalmMessage):
                    raise TypeError("handle_stream returned %s, not "
                                    "(topic, PalmMessage)" % type(msg).__name__)
        except Exception as exc:
            self.failed += 1
            return self._reply_error(env, self._error_of("handle_stream", exc))
        if res is None or msg is None:
            return 0
        if held[0]:
            PyBuffer_Release(buf)
            held[0] = False
        held[0] = msg.to_env(o, buf)
        topic = topic.encode() if isinstance(topic, str) else bytes(topic)
        return self._out(o, not self.pipelined, topic)

    cdef int _reply_error(self, pz_env *env, str error) except -1:
        """Send an error reply to `env`: empty payload, `error` in its error
        field, to the client; pipelined on the default route also along
        the stream, to a client subscribed at the last stage (each client
        sees one)."""
        cdef pz_env o = env[0]
        cdef bytes etext = error.encode("utf-8", "replace")
        o.f[PZ_F_PAYLOAD].n = 0
        o.f[PZ_F_ERROR].p = <char *>etext
        o.f[PZ_F_ERROR].n = len(etext)
        if self.pipelined and self.stream_hook is None:
            return self._out(&o, True, None) or self._out(&o, False, None)
        return self._out(&o, True, None)

    cdef int _pass_on(self, pz_env *env) except -1:
        """Send `env` on unchanged: a ping, or an error of an earlier stage
        (past a custom handle_stream: pings stop, errors go to the client)."""
        if self.pipelined and self.stream_hook is not None:
            if not env.f[PZ_F_ERROR].n:
                return 0
            return self._out(env, True, None)
        return self._out(env, not self.pipelined, None)

    cdef int _out(self, pz_env *o, bint to_client, object topic) except -1:
        """Queue or send one reply (self.head before its payload).  Worker
        mode: into the batch for the Master.  Replies to a client that
        takes batches (flags) on the default route: into that client's
        batch; along a stream whose next stages are all ours: into their
        batch (subscriptions.pyx, "Stage links").  Anything else: alone,
        after the batch so far (order is kept).  1 when stopped."""
        cdef pz_msg_t m
        cdef const char *tp
        cdef size_t tn
        cdef bytes marked
        if is_ping(o):
            self.pings += 1
        else:
            self.sent += 1
        if self.out_kind == OUT_WORKER:
            if pz_batch_add_env_h(&self.wbatch, o, &self.head) != 0:
                raise MemoryError()
            if self.wbatch.len >= self.batch_bytes:
                return self._flush()
            return 0
        if self.out_kind == OUT_TOPIC:
            if topic is None and to_client and o.flags & PZ_FLAG_BATCH:
                return self.cbatch.add(o, NULL, 0, &self.head)
            if topic is not None:
                tp = <char *>topic
                tn = len(topic)
            elif to_client:
                tp = o.f[PZ_F_CLIENT].p
                tn = o.f[PZ_F_CLIENT].n
            else:
                tp = <char *>self.name
                tn = len(self.name)
            if topic is not None or not to_client:
                # along a stream: batched when every next stage is ours;
                # pings to the stages of ours only
                if is_ping(o):
                    marked = self.subs.ping_topic(tp, tn)
                    if marked is None:
                        return 0
                else:
                    marked = self.subs.stage_topic(tp, tn)
                if marked is not None:
                    return self.cbatch.add_to(<char *>marked, len(marked), o, NULL, 0,
                                              &self.head)
            if self.cbatch.flush():
                return 1
            if env_head_to_msg(o, &self.head, &m) != 0:
                raise MemoryError()
            return self.subs.publish(tp, tn, &m, NULL, legacy_reply(o))
        if env_head_to_msg(o, &self.head, &m) != 0:
            raise MemoryError()
        return send_alone(self.out, &m, 0, self.waiter)

    cdef int _flush(self) except -1:
        """Send what the batches hold.  1 when stopped."""
        cdef pz_msg_t m
        cdef bytes done
        cdef char kind = W_DONE
        cdef OutFrame out[3]
        if self.out_kind == OUT_WORKER:
            if self.wbatch.completed == 0 and self.wbatch.count == 0:
                return 0
            done = b"%d" % self.wbatch.completed
            out[0] = copy_frame(&kind, 1)
            out[1] = copy_frame(<char *>done, len(done))
            out[2] = batch_frame(&self.wbatch)
            # waiting for room while stoppable: a Master that reads
            # nothing must not keep its worker from stopping
            return send_frames(self.out, out, 3, 0, self.waiter, NULL)
        if self.out_kind == OUT_TOPIC:
            return self.cbatch.flush()
        return 0
