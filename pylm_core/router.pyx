# The one poll loop of every pylm server, and its routing table.
#
# A server is a Router plus the parts registered with it (shared/API.md,
# "Low-level API").  A part is a set of handlers over sockets: it asks the
# Router to watch a socket (or a plain fd) and is called when it is ready.
# The Router polls every watched socket in one wait (wait_items), without
# the GIL, in the thread that runs it; nothing is lock-stepped and no part
# has a thread of its own.  Parts written in C (the Master's intake, worker pool
# and publisher, the execution loop of Server/Pipeline/Worker) are called
# through cdef methods, so their hot path never enters Python; parts written
# in Python (pylm.parts) give a Python handler instead.
#
# The routing table: each part has a `target`, the part its messages go to
# (pylm 0.14's `route`); an outbound part's own target is its one reroute,
# where its feedback goes.  `block` makes an inbound part wait for the
# feedback.  An outbound part whose backlog is full asks the Router to stop
# reading the inbound parts that feed it (backlog()), zguide's lbbroker
# rule: take new work only when it can go somewhere.

import collections

cdef extern from "poll.h" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int c_poll "poll"(pollfd *fds, unsigned long nfds, int timeout)
    short POLLIN, POLLOUT, POLLPRI


cdef int zmq_events(void *sock, short *events) noexcept nogil:
    """The socket's ZMQ_EVENTS (its pending commands are processed: one
    poll(2) of its mailbox); 0, or -1 with errno set."""
    cdef int value = 0
    cdef size_t size = sizeof(int)
    if pz_getsockopt(sock, PZ_EVENTS, &value, &size) != 0:
        return -1
    events[0] = <short>value
    return 0


cdef int wait_items(pz_pollitem_t *items, pollfd *fds, const unsigned char *drained, int n,
                    long timeout) noexcept nogil:
    """zmq_poll(items, n, timeout) in fewer syscalls (`fds` has room for n):
    the number of items ready, their revents set; -1 with errno set.

    libzmq's zmq_poll polls every fd with timeout 0, then asks each socket
    for ZMQ_EVENTS (a poll(2) of its mailbox each), then sleeps in poll(2)
    and asks every socket again: for a Server's three sockets and its wakeup
    fd, nine poll(2) per message.  The same answer is had with the sockets'
    events asked once before sleeping and, after, only of the sockets whose
    mailbox fd woke the sleep: a socket's events change only through a
    command in its mailbox, which makes that fd readable until the socket
    takes it (ZMQ_FD's contract), and its events were just read.  Plain fds
    are read from the one poll(2).

    An item marked in `drained` (a POLLIN-only socket whose owner's last
    receive said EAGAIN, untouched since) is not asked before sleeping
    either: that EAGAIN processed its commands, so no message is waiting
    that its mailbox fd will not signal (ZMQ_FD's contract again).  The
    Server saves one poll(2) per call.  Never for the control socket, whose
    wakeup a zmq_poll elsewhere (stop_asked, the Waiter) may consume."""
    cdef int k, ready = 0, rc
    cdef short ev, was
    cdef int fd
    cdef size_t size
    cdef long long end = 0
    for k in range(n):
        items[k].revents = 0
        if items[k].socket != NULL:
            if not drained[k]:
                if zmq_events(items[k].socket, &ev) < 0:
                    return -1
                items[k].revents = ev & items[k].events
                if items[k].revents:
                    ready += 1
            size = sizeof(int)
            if pz_getsockopt(items[k].socket, PZ_FD, &fd, &size) != 0:
                return -1
            fds[k].fd = fd
            fds[k].events = POLLIN
        else:
            fds[k].fd = items[k].fd
            fds[k].events = ((POLLIN if items[k].events & PZ_POLLIN else 0)
                             | (POLLOUT if items[k].events & PZ_POLLOUT else 0))
        fds[k].revents = 0
    if ready:
        timeout = 0
    elif timeout > 0:
        end = now_ms() + timeout
    while True:
        rc = c_poll(fds, <unsigned long>n, <int>timeout)
        if rc < 0:
            return -1
        for k in range(n):
            if fds[k].revents == 0:
                continue
            was = items[k].revents
            if items[k].socket != NULL:
                if zmq_events(items[k].socket, &ev) < 0:
                    return -1
                items[k].revents = ev & items[k].events
            else:
                # as zmq_poll: POLLIN/POLLOUT, and anything else is POLLERR
                items[k].revents = (
                    (PZ_POLLIN if fds[k].revents & POLLIN else 0)
                    | (PZ_POLLOUT if fds[k].revents & POLLOUT else 0)
                    | (PZ_POLLERR if fds[k].revents & ~(POLLIN | POLLOUT | POLLPRI) else 0))
            ready += (items[k].revents != 0) - (was != 0)
            fds[k].revents = 0
        if ready or timeout == 0:
            return ready
        if timeout > 0:
            timeout = <long>(end - now_ms())
            if timeout <= 0:
                return 0

cdef enum:
    PAUSE_STOP = 1              # the server is stopping or reached its limit
    PAUSE_BACKLOG = 2           # a part it feeds is full
    ROUTER_SLOTS = 2            # items before the watches: control, wakeup fd

cdef struct Watch:
    void *sock                  # libzmq socket, or NULL for a plain fd
    int fd
    short events                # what the owner wants polled
    unsigned int paused         # POLLIN is left out while any bit is set
    int slot                    # the owner's number for this watch
    bint inbound                # new input: paused while stopping
    bint drained                # its owner's receive said EAGAIN since the
                                # last wait (mark_drained; wait_items)


cdef class Part:
    """A part of a server: handlers over sockets the Router polls.

    Subclasses in C override the cdef methods; subclasses in Python
    (pylm.parts) give handlers to Router._watch and override ``_idle``.

    ``target`` is the part this part's messages go to (its route), or None;
    ``block``: an inbound part that waits for its target's feedback.
    ``bad`` counts the input the part dropped (_drop), and ``bad_hook``,
    ``callable(reason)`` or None, is told of each (the servers log it).
    """
    cdef public object target
    cdef public bint block
    cdef public long long bad
    cdef object bad_hook

    cdef int _drop(self, str reason) except -1:
        """Drop bad input (a malformed envelope or frame, a failing hook):
        count it and tell bad_hook; the part goes on."""
        self.bad += 1
        if self.bad_hook is not None:
            self.bad_hook(reason)
        return 0

    cdef int _next_in_batch(self, const char **p, const char *end, pz_slice *one,
                            str what) except -1:
        """The envelope of a batch at p[0] into `one` (pz_batch_next): 1, or
        0 at the batch's end and when its rest is malformed (dropped once:
        _drop(what))."""
        cdef int rc = pz_batch_next(p, end, one)
        if rc < 0:
            self._drop(what)
            return 0
        return rc

    cdef int attach(self, Router runner) except -1:
        """Register this part's watches with `runner`, the Router that
        runs it (C parts)."""
        return 0

    cdef int begin(self) except -1:
        """The loop starts: say hello to peers."""
        return 0

    cdef int on_ready(self, int slot, short revents) except -1:
        """Watch `slot` of this part is ready.  1 stops the server."""
        return 0

    cdef int on_tick(self, long long now) except -1:
        """Called after every poll for parts that asked (Router.tick).  1
        stops the server.  A part in Python (Router._tick) gives _on_tick()."""
        return 1 if self._on_tick() else 0

    cdef int take(self, const char *p, size_t n, pz_msg_t *frame) except -1:
        """An encoded envelope routed here (`frame`, when not NULL, is the
        zmq message holding exactly p[0:n]).  1 when a stop was asked."""
        raise TypeError("part %r takes no envelopes from the core" % (self,))

    cdef int flush(self) except -1:
        """Send what was batched.  1 when a stop was asked."""
        return 0

    cdef int finish(self) except -1:
        """The loop ended (said once, even after an error)."""
        return 0

    def _on_tick(self):
        """A part in Python that ticks (Router._tick) overrides this."""
        return False

    cpdef bint _idle(self):
        """Nothing of this part is under way (a server stopping waits for
        every part to be idle)."""
        return True

    def counters(self):
        """The part's counters, merged into ``server.stats``."""
        return {}

    def details(self):
        """What the part knows beyond its counters, for live statistics
        (a dict merged by Router.details: per-method counts, workers)."""
        return {}


cdef class Router:
    """The poll loop and routing table of one server.

    Parts are added with add() (C parts) or watch their sockets with
    _watch() (Python parts).  run() serves them until a stop request on the
    control socket, `messages` routed messages, or a part asks to stop.
    """
    cdef:
        Watch *watches              # malloc'd, n_watches used
        int n_watches, cap_watches
        list owners                 # per watch: its Part, or None
        list handlers               # per watch: Python callable(events), or None
        dict index                  # socket object or fd -> watch number
        pz_pollitem_t *items        # malloc'd, rebuilt before every poll
        pollfd *fds                 # wait_items' room, as many as items
        int *item_watch             # items[k] is the watch item_watch[k]
        unsigned char *drained      # items[k] needs no events asked (wait_items)
        int cap_items
        list parts                  # C parts added, in order
        list ticking                # parts whose on_tick runs after polls
        long tick_ms                # poll timeout while parts tick
        object posted               # deque of (fn, args) run before the next poll
        dict reasons                # Python pause reason -> bit
        unsigned int next_bit       # the bit the next new reason gets
        set backlogged              # parts whose backlog is full
        void *control               # any message here stops the loop
        int wakeup_fd               # readable when a signal arrived, or -1
        bint input_stopped          # inbound watches are paused for good
        bint quitting               # a handler asked run() to return
    cdef readonly Waiter waiter     # sends that wait for room, stoppable
    cdef public long long routed, messages

    def __cinit__(self, *args, **kwargs):
        self.posted = collections.deque()
        self.reasons = {}
        self.next_bit = 4           # after PAUSE_STOP and PAUSE_BACKLOG
        self.wakeup_fd = -1
        self.waiter = Waiter()
        self.messages = 2**62
        self.reset()

    def __dealloc__(self):
        free(self.watches)
        free(self.items)
        free(self.item_watch)
        free(self.fds)
        free(self.drained)

    # -- parts and watches --------------------------------------------------

    def reset(self):
        """Forget every part and watch (a Router that starts again)."""
        self.n_watches = 0
        self.owners = []
        self.handlers = []
        self.index = {}
        self.parts = []
        self.ticking = []
        self.tick_ms = -1
        self.posted.clear()
        self.backlogged = set()
        self.input_stopped = False
        self.quitting = False

    def add(self, Part part, target=None):
        """Add a C part; its messages go to `target` (a Part or None)."""
        part.target = target
        part.attach(self)
        self.parts.append(part)
        return part

    cdef int watch(self, void *sock, int fd, short events, Part owner, int slot,
                   bint inbound) except -1:
        """Poll `sock` (or `fd` when sock is NULL) for `events`; ready events
        go to owner.on_ready(slot, revents).  The watch number."""
        cdef Watch *grown
        if self.n_watches == self.cap_watches:
            grown = <Watch *>realloc(self.watches, (2 * self.cap_watches + 8) * sizeof(Watch))
            if grown == NULL:
                raise MemoryError()
            self.watches = grown
            self.cap_watches = 2 * self.cap_watches + 8
        self.watches[self.n_watches] = Watch(sock=sock, fd=fd, events=events, paused=0,
                                             slot=slot, inbound=inbound, drained=False)
        self.owners.append(owner)
        self.handlers.append(None)
        self.n_watches += 1
        return self.n_watches - 1

    cdef inline void mark_drained(self, int w) noexcept:
        """The owner of watch `w` (a socket it alone reads, POLLIN only) just
        had EAGAIN from it and will not touch it before the next wait: that
        wait need not ask its events before sleeping (wait_items).  Good
        for one wait."""
        self.watches[w].drained = True

    cdef inline void set_events(self, int w, short events) noexcept:
        self.watches[w].events = events

    cdef inline void pause(self, int w, unsigned int bit, bint on) noexcept:
        if on:
            self.watches[w].paused |= bit
        else:
            self.watches[w].paused &= ~bit

    cdef int tick(self, Part part, long every_ms) except -1:
        """Call part.on_tick after every poll; poll at least every every_ms."""
        self.ticking.append(part)
        if self.tick_ms < 0 or every_ms < self.tick_ms:
            self.tick_ms = every_ms
        return 0

    def _watch(self, sock, handler, events, *, owner=None, bint inbound=False):
        """Poll `sock` (a pyzmq socket or an fd) for `events` and call
        handler(revents) when ready (Python parts).  Watching a socket again
        replaces its handler and events."""
        cdef int w
        w = self.index.get(sock, -1)
        if w < 0:
            if isinstance(sock, int):
                w = self.watch(NULL, sock, events, None, 0, inbound)
            else:
                w = self.watch(sock_handle(sock), -1, events, None, 0, inbound)
            self.index[sock] = w
        self.watches[w].events = events
        self.watches[w].inbound = inbound
        self.handlers[w] = handler
        self.owners[w] = owner
        return w

    def _tick(self, Part part, long every_ms):
        """Call part._on_tick() after every poll, and at least every
        every_ms (Python parts; true from it stops the server)."""
        self.tick(part, every_ms)

    def _want(self, sock, int flag, bint on):
        """Add (or remove) `flag` to the events polled on sock."""
        cdef int w = self.index[sock]
        if on:
            self.watches[w].events |= flag
        else:
            self.watches[w].events &= ~flag

    cdef unsigned int _bit(self, reason) except 0:
        bit = self.reasons.get(reason)
        if bit is None:
            if self.next_bit == 0:
                raise ValueError("too many pause reasons")
            bit = self.reasons[reason] = self.next_bit
            self.next_bit <<= 1
        return bit

    def _pause(self, sock, reason):
        """Stop reading sock until _resume(sock, reason)."""
        w = self.index.get(sock)
        if w is not None:
            self.pause(w, self._bit(reason), True)

    def _resume(self, sock, reason):
        w = self.index.get(sock)
        if w is not None:
            self.pause(w, self._bit(reason), False)

    def _paused(self, sock):
        return self.watches[<int>self.index[sock]].paused != 0

    def _quit(self):
        """Make run() return once the handler that calls this is done."""
        self.quitting = True

    def _post(self, fn, *args):
        """Call fn(*args) from the loop, before it polls again."""
        self.posted.append((fn, args))

    # -- the routing table ------------------------------------------------------

    cpdef backlog(self, Part part, bint over):
        """`part`'s backlog crossed its limit: stop (or resume) reading the
        inbound watches of the parts that feed it, directly or through their
        target's reroute.  Others go on: results of workers still flow while
        the queue to them is full."""
        cdef int w
        cdef Part owner
        if over:
            self.backlogged.add(part)
        else:
            self.backlogged.discard(part)
        for w in range(self.n_watches):
            if not self.watches[w].inbound or self.owners[w] is None:
                continue
            owner = self.owners[w]
            feeds = owner.target is not None and (
                owner.target in self.backlogged or
                ((<Part>owner.target).target is not None
                 and (<Part>owner.target).target in self.backlogged))
            self.pause(w, PAUSE_BACKLOG, feeds)

    cpdef bint backlogged_for(self, Part part):
        """Is a part that `part` feeds full (is `part` paused for it)?"""
        return bool(self.backlogged) and part.target is not None and (
            part.target in self.backlogged or (
                (<Part>part.target).target is not None
                and (<Part>part.target).target in self.backlogged))

    def route(self, Part part, data, exchange=None):
        """Route one message of a Python inbound `part` to its target
        (``target._submit(data, done)``).  The feedback for the part: ACK, or
        None when it comes later through part._resume(exchange, feedback)
        (a blocking part)."""
        self.routed += 1
        target = part.target
        if target is None:
            return ACK
        if part.block:
            target._submit(data, (self._blocked_feedback, target, exchange))
            return None
        target._submit(data, (self._feedback, target)
                       if (<Part>target).target is not None else None)
        return ACK

    def _feedback(self, outbound, feedback):
        """An outbound part finished a message: route its feedback once more."""
        reroute = (<Part>outbound).target
        if reroute is not None and feedback:
            reroute._submit(feedback, None)

    def _blocked_feedback(self, outbound, exchange, feedback):
        self._feedback(outbound, feedback)
        exchange.part._resume(exchange, feedback)

    # -- the loop -----------------------------------------------------------

    cdef int stop_input(self) except -1:
        """Read no new input: pause every inbound watch for good."""
        cdef int w
        self.input_stopped = True
        for w in range(self.n_watches):
            if self.watches[w].inbound:
                self.watches[w].paused |= PAUSE_STOP
        return 0

    cdef int stop_asked(self) except -1:
        """Is a stop request waiting (without taking it or blocking)?  A
        part busy with a long inbound queue asks between messages.  Signal
        handlers run first when a signal arrived."""
        cdef pz_pollitem_t items[2]
        cdef int n = poll_item(items, 0, self.control, 0, PZ_POLLIN)
        cdef int rc
        if self.wakeup_fd >= 0:
            n = poll_item(items, n, NULL, self.wakeup_fd, PZ_POLLIN)
        rc = pz_poll(items, n, 0)
        if rc <= 0:
            return 0
        if self.wakeup_fd >= 0 and items[1].revents & PZ_POLLIN:
            on_wakeup(self.wakeup_fd)
            rc = pz_poll(items, 1, 0)
            return rc > 0 and items[0].revents & PZ_POLLIN
        return items[0].revents & PZ_POLLIN

    cdef bint _all_idle(self) except -1:
        for part in self.parts:
            if not (<Part>part)._idle():
                return False
        for owner in set(self.owners):
            if owner is not None and owner not in self.parts and not (<Part>owner)._idle():
                return False
        return True

    cdef int _build(self) except -1:
        """Fill items: control, the wakeup fd, then each watch with events
        left after its pauses (and `drained`, taking each watch's mark).
        The number of items."""
        cdef int w, n
        cdef short events
        if self.cap_items < self.n_watches + ROUTER_SLOTS:
            free(self.items)
            free(self.item_watch)
            free(self.fds)
            free(self.drained)
            self.cap_items = self.n_watches + ROUTER_SLOTS + 8
            self.items = <pz_pollitem_t *>malloc(self.cap_items * sizeof(pz_pollitem_t))
            self.item_watch = <int *>malloc(self.cap_items * sizeof(int))
            self.fds = <pollfd *>malloc(self.cap_items * sizeof(pollfd))
            self.drained = <unsigned char *>malloc(self.cap_items)
            if (self.items == NULL or self.item_watch == NULL or self.fds == NULL
                    or self.drained == NULL):
                self.cap_items = 0
                raise MemoryError()
        self.drained[0] = self.drained[1] = 0
        n = poll_item(self.items, 0, self.control, 0, PZ_POLLIN)
        if self.wakeup_fd >= 0:
            n = poll_item(self.items, n, NULL, self.wakeup_fd, PZ_POLLIN)
        for w in range(self.n_watches):
            events = self.watches[w].events
            if self.watches[w].paused:
                events &= ~PZ_POLLIN
            if events:
                self.item_watch[n] = w
                self.drained[n] = (self.watches[w].drained and events == PZ_POLLIN
                                   and self.watches[w].sock != NULL)
                n = poll_item(self.items, n, self.watches[w].sock, self.watches[w].fd, events)
            self.watches[w].drained = False
        return n

    cdef int _fire(self, int w, short revents) except -1:
        handler = self.handlers[w]
        if handler is not None:
            handler(revents)
            return 0
        return (<Part>self.owners[w]).on_ready(self.watches[w].slot, revents)

    def run(self, control, int wakeup_fd=-1, long long drain_ms=0):
        """Serve until a message on `control` (a bound PULL), `messages`
        routed messages or a part asking to stop.  With drain_ms, a stop
        first reads no new input and waits up to drain_ms for every part to
        be idle (a second stop ends at once).  `wakeup_fd` becomes readable
        when a signal arrives, so its handler runs at once."""
        cdef int n, k, rc, first
        cdef long long stop_at = -1
        cdef long timeout
        cdef short revents
        cdef object keep = control
        self.control = sock_handle(control)
        self.wakeup_fd = wakeup_fd
        self.waiter.control = self.control
        self.input_stopped = False
        self.quitting = False
        first = 2 if wakeup_fd >= 0 else 1
        try:
            for part in self.parts:
                if (<Part>part).begin():
                    return
            while True:
                while self.posted:
                    fn, args = self.posted.popleft()
                    fn(*args)
                if self.routed >= self.messages and not self.input_stopped:
                    self.stop_input()
                if self.input_stopped:
                    if stop_at >= 0 and now_ms() > stop_at:
                        return
                    if self._all_idle():
                        return
                n = self._build()
                timeout = self.tick_ms
                if stop_at >= 0 and (timeout < 0 or timeout > 100):
                    timeout = 100
                with nogil:
                    rc = wait_items(self.items, self.fds, self.drained, n, timeout)
                if rc < 0:
                    _check_rc(rc)
                    continue
                if first == 2 and self.items[1].revents & PZ_POLLIN:
                    on_wakeup(wakeup_fd)
                if self.items[0].revents & PZ_POLLIN:
                    drain(self.control)
                    if drain_ms <= 0 or stop_at >= 0:
                        return
                    stop_at = now_ms() + drain_ms
                    self.stop_input()
                for k in range(first, n):
                    revents = self.items[k].revents
                    if revents and self._fire(self.item_watch[k], revents):
                        return
                if self.quitting:
                    return
                if self.ticking:
                    now = now_ms()
                    for part in self.ticking:
                        if (<Part>part).on_tick(now):
                            return
        finally:
            for part in self.parts:
                (<Part>part).finish()

    def counters(self):
        """The counters of every C part, summed by name."""
        total = {}
        for part in self.parts:
            for key, value in part.counters().items():
                total[key] = total.get(key, 0) + value
        return total

    def details(self):
        """The details of every C part, merged (pylm/_stats.py).  Like
        counters(), callable from another thread while run() serves: it
        runs with the GIL, which the loop holds whenever it changes a part."""
        merged = {}
        for part in self.parts:
            merged.update(part.details())
        return merged


#: The feedback of an inbound part that does not block: pylm 0.14's
#: acknowledgement.
ACK = b"1"
