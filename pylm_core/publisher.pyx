# The Master's publisher: the part that publishes results on the Master's
# XPUB, to each client's topic (batched for clients that read batches) or,
# when pipelined, to the next stage (batched when the next stages are
# ours).  Python runs only for the hooks a
# subclass overrides (gather, handle_stream).


cdef class Publisher(Part):
    """The outbound part of a Master or Hub that publishes results.

    :param pub: the XPUB results are published on (XPUB_NODROP set)
    :param name: the Master's name (topic when pipelined)
    :param pipelined: publish results to topic `name` with ``stage += 1``
    :param gather, stream_hook: the subclass's overrides, or None
    :param bad_hook: ``callable(reason)`` for results that are dropped
    :param send_tracebacks: error replies for failing hooks (its own and
        the Intake's) carry the traceback; false: type and message only
    :param hold_replies, hold_seconds: a result whose topic no one
        subscribes to yet is held, at most this many for at most this long
        (subscriptions.pyx)
    """
    cdef:
        void *pub
        object _socket
        bytes name
        bint pipelined
        object gather, stream_hook
        bint send_tracebacks
        Waiter waiter
        ClientBatch cbatch          # results for clients that read batches
        Subscriptions subs          # who subscribes to pub, and held results
    cdef public long long sent, errors, pings

    def __init__(self, pub, name, *, bint pipelined=False, gather=None, stream_hook=None,
                 bad_hook=None, bint send_tracebacks=True,
                 size_t hold_replies=HOLD_REPLIES, double hold_seconds=HOLD_SECONDS):
        self._socket = pub
        self.pub = sock_handle(pub)
        self.name = name.encode() if isinstance(name, str) else bytes(name)
        self.pipelined = pipelined
        self.gather = gather
        self.stream_hook = stream_hook
        self.bad_hook = bad_hook
        self.send_tracebacks = send_tracebacks
        self.sent = self.bad = self.errors = self.pings = 0
        self.cbatch = ClientBatch()
        self.subs = Subscriptions(hold_replies, hold_seconds)

    def counters(self):
        counts = {"sent": self.sent, "bad": self.bad, "errors": self.errors,
                  "pings": self.pings}
        counts.update(self.subs.counters())
        return counts

    cdef int attach(self, Router runner) except -1:
        self.waiter = runner.waiter
        self.subs.bind(self.pub, self.waiter)
        self.cbatch.bind(self.pub, self.waiter, self.subs)
        # subscriptions: reading them is what makes the XPUB welcome clients
        runner.watch(self.pub, -1, PZ_POLLIN, self, 0, False)
        if self.subs.holds():
            runner.tick(self, HOLD_TICK_MS)
        return 0

    cdef int on_ready(self, int slot, short revents) except -1:
        return self.subs.read()

    cdef int on_tick(self, long long now) except -1:
        return self.subs.tick(now_ns())

    cdef int take(self, const char *p, size_t n, pz_msg_t *frame) except -1:
        cdef pz_env env
        cdef int rc
        with nogil:
            rc = pz_parse(p, n, &env)
        if rc != PZ_OK:
            return self._drop("a worker result: " + _DECODE_REASONS.get(rc, "malformed envelope"))
        return self.publish(&env, p, n, frame)

    cdef int publish(self, pz_env *env, const char *p, size_t n, pz_msg_t *frame) except -1:
        """A result (parsed into env from p[0:n], held by `frame` when not
        NULL): gather, handle_stream, publish.  1 when stopped."""
        cdef PalmMessage msg
        if env.f[PZ_F_ERROR].n:
            # errors take the default route and also go to the client's
            # topic here (see executor.pyx, replies)
            if self.publish_env(env, env.f[PZ_F_CLIENT].p, env.f[PZ_F_CLIENT].n):
                return 1
            if self.pipelined and self.stream_hook is None:
                return self.publish_env(env, <char *>self.name, len(self.name))
            return 0
        if self.gather is None and self.stream_hook is None:
            if not self.pipelined:
                if env.flags & PZ_FLAG_BATCH:
                    return self._batch(env, p, n)
                return self._publish_raw(p, n, frame, env.f[PZ_F_CLIENT].p,
                                         env.f[PZ_F_CLIENT].n, legacy_reply(env))
            env.stage += 1
            return self.along(env, <char *>self.name, len(self.name))
        msg = PalmMessage.__new__(PalmMessage)
        msg.from_env(env, None)
        try:
            routed = []
            for out in (self.gather(msg) if self.gather is not None else (msg,)):
                if out is None:
                    continue
                if not isinstance(out, PalmMessage):
                    raise TypeError("gather yielded %s, not PalmMessage" % type(out).__name__)
                if self.stream_hook is not None:
                    res = self.stream_hook(out)
                    if res is None:
                        continue
                    topic, out = res
                    if out is None:
                        continue
                    if not isinstance(out, PalmMessage):
                        raise TypeError("handle_stream returned %s, not (topic, PalmMessage)"
                                        % type(out).__name__)
                elif self.pipelined:
                    (<PalmMessage>out).stage += 1
                    topic = self.name
                else:
                    topic = (<PalmMessage>out)._client
                routed.append((topic, out))
        except Exception as exc:
            # a failing hook is the caller's error, not the Master's end
            self._drop("gather/handle_stream raised %s: %s" % (type(exc).__name__, exc))
            return self.reply_error(env, self.error_field(exc))
        for topic, out in routed:
            if self.publish_message(topic, out):
                return 1
        return 0

    cdef int forward(self, pz_msg_t *frame) except -1:
        """Publish a worker's batch of results as it is, by reference (no
        copy), when all of them are replies for one client that reads
        batches and no hook or pipeline changes them.  0 when published, 1
        when stopped, 2 when the batch is not such (publish each result)."""
        cdef const char *p = msg_ptr(frame)
        cdef const char *end = p + pz_msg_size(frame)
        cdef pz_slice one
        cdef pz_slice topic
        cdef pz_env env
        cdef long k = 0
        cdef int rc
        cdef pz_msg_t m
        if self.gather is not None or self.stream_hook is not None or self.pipelined:
            return 2
        topic.p = NULL
        topic.n = 0
        while True:
            rc = pz_batch_next(&p, end, &one)
            if rc == 0:
                break
            if rc < 0 or pz_parse(one.p, one.n, &env) != PZ_OK:
                return 2
            if env.f[PZ_F_ERROR].n or not env.flags & PZ_FLAG_BATCH:
                return 2
            if k == 0:
                topic = env.f[PZ_F_CLIENT]
            elif env.f[PZ_F_CLIENT].n != topic.n or memcmp(env.f[PZ_F_CLIENT].p, topic.p,
                                                           topic.n) != 0:
                return 2
            k += 1
        if k == 0:
            return 2
        if self.flush():
            return 1
        pz_msg_init(&m)
        pz_msg_copy(&m, frame)
        self.sent += k
        return self.subs.publish(topic.p, topic.n, &m, <char *>_BATCH_MARK)

    cdef int ping(self, pz_env *env) except -1:
        """Send a client's ping back along the default route of results."""
        cdef bytes marked
        if not self.pipelined:
            return self.publish_env(env, env.f[PZ_F_CLIENT].p, env.f[PZ_F_CLIENT].n)
        if self.stream_hook is None:
            # to the next stages of ours only (Subscriptions.ping_topic)
            marked = self.subs.ping_topic(<char *>self.name, len(self.name))
            if marked is None:
                return 0
            self.pings += 1
            return self.cbatch.add_to(<char *>marked, len(marked), env, NULL, 0, NULL)
        return 0

    cdef int pass_error(self, pz_env *env) except -1:
        """Send on an error of an earlier stage (a Hub's upstream)."""
        if self.pipelined and self.stream_hook is None:
            return self.publish_env(env, <char *>self.name, len(self.name))
        return self.publish_env(env, env.f[PZ_F_CLIENT].p, env.f[PZ_F_CLIENT].n)

    cdef int reply_error(self, pz_env *env, bytes text) except -1:
        """Answer env's client (its own topic) with an error reply."""
        env.f[PZ_F_PAYLOAD].n = 0
        env.f[PZ_F_ERROR].p = <char *>text
        env.f[PZ_F_ERROR].n = len(text)
        env.lost = 0
        return self.publish_env(env, env.f[PZ_F_CLIENT].p, env.f[PZ_F_CLIENT].n)

    cdef bytes error_field(self, exc):
        """The error field (encoded) reporting a failing hook's `exc`."""
        return error_text(exc, with_traceback=self.send_tracebacks).encode()

    cdef int _batch(self, pz_env *env, const char *p, size_t n) except -1:
        """Add an encoded result to the batch of its client."""
        self.sent += 1
        return self.cbatch.add(env, p, n, NULL)

    cdef int flush(self) except -1:
        return self.cbatch.flush()

    cdef int along(self, pz_env *env, const char *tp, size_t tn) except -1:
        """Publish a result along the stream, to topic tp[0:tn]: into the
        batch of the next stages when they are all ours (subscriptions.pyx,
        "Stage links"), else alone.  1 when stopped."""
        cdef bytes marked = self.subs.stage_topic(tp, tn)
        if marked is None:
            return self.publish_env(env, tp, tn)
        self.sent += 1
        return self.cbatch.add_to(<char *>marked, len(marked), env, NULL, 0, NULL)

    cdef int publish_message(self, object topic, PalmMessage msg) except -1:
        cdef pz_env env
        cdef Py_buffer buf
        cdef int held = msg.to_env(&env, &buf)
        cdef bytes btopic = topic.encode() if isinstance(topic, str) else bytes(topic)
        try:
            if env.f[PZ_F_ERROR].n == 0 and not is_ping(&env):
                return self.along(&env, <char *>btopic, len(btopic))
            return self.publish_env(&env, <char *>btopic, len(btopic))
        finally:
            if held:
                PyBuffer_Release(&buf)

    cdef int publish_env(self, pz_env *env, const char *tp, size_t tn) except -1:
        cdef pz_msg_t m
        if self.flush():
            return 1
        if env_to_msg(env, &m) != 0:
            raise MemoryError()
        if is_ping(env):
            self.pings += 1
        else:
            self.sent += 1
            if env.f[PZ_F_ERROR].n:
                self.errors += 1
        return self.subs.publish(tp, tn, &m, NULL, legacy_reply(env))

    cdef int _publish_raw(self, const char *p, size_t n, pz_msg_t *frame,
                          const char *tp, size_t tn, bint legacy) except -1:
        """Publish an encoded envelope: `frame` shared as it is (no copy)
        when given, else a copy of p[0:n]."""
        cdef pz_msg_t m
        if self.flush():
            return 1
        if frame != NULL:
            pz_msg_init(&m)
            pz_msg_copy(&m, frame)
        else:
            if pz_msg_init_size(&m, n) != 0:
                raise MemoryError()
            memcpy(pz_msg_data(&m), p, n)
        self.sent += 1
        return self.subs.publish(tp, tn, &m, NULL, legacy)
