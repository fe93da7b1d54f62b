# The constants of the core, each defined once: the frames of our messages,
# the worker protocol and the limits.  Included first by _core.pyx, so that
# no included file relies on another one's definitions (uvloop's
# includes/consts.pxi).  What Python needs is exported at the end, under
# the C name with a trailing underscore where that name is taken by the enum
# (pylm/servers.py, pylm/clients.py and pylm/parts read them from here).

# -- frames ----------------------------------------------------------------------

cdef enum:
    MAX_FRAMES = 4          # no message of ours has more frames than this
    IN_PLAIN = 0            # inbound of one frame: an envelope (PULL, our DEALER)
    IN_TOPIC = 1            # two frames: topic, envelope (SUB)
    OUT_TOPIC = 1           # outbound PUB: topic frame + envelope
    OUT_PLAIN = 2           # PUSH: envelope (a pylm 0.14 Master's worker link)
    OUT_WORKER = 3          # DEALER to our Master: the worker protocol below
    MARK_LEN = 11           # BATCH_MARK and PAYLOAD_MARK

# The frame before a batch of envelopes on a pylm-to-pylm link:
# client -> server [BATCH_MARK, batch]; server -> client [topic, BATCH_MARK, batch].
BATCH_MARK = b"\x00pylm-batch"
# The topic prefix of a stage link's batches: a stage of ours publishes
# [STAGE_MARK + topic, BATCH_MARK, batch] instead of one [topic, envelope]
# per message when every subscriber of `topic` is ours, which each says by
# subscribing to STAGE_MARK + topic too (subscriptions.pyx, "Stage links").
# 0xFF never occurs in UTF-8, so no plain topic (or subscription) starts
# with it, and a SUB resends its subscriptions in byte order, the plain one
# first.
STAGE_MARK = b"\xffpylm-stage:"
# The frame before [envelope, payload] on a pylm-to-pylm link: the payload
# travels in a frame of its own, pointing at the caller's buffer (no copy).
PAYLOAD_MARK = b"\x00pylm-payld"
# The handshake a client uses to know its subscription is live: an envelope
# with an empty `function` and this prefix in `cache` is published straight
# back to its `client` topic by every pylm server (never run as a call).
PING_PREFIX = b"\x00pylm-ping"
# What every pylm server's XPUB sends a new subscriber first (one frame).
WELCOME = b"\x00pylm-welcome"

cdef bytes _BATCH_MARK = BATCH_MARK
cdef bytes _PAYLOAD_MARK = PAYLOAD_MARK
cdef bytes _PING_PREFIX = PING_PREFIX
cdef bytes _STAGE_MARK = STAGE_MARK

# -- the worker protocol (worker DEALER <-> Master ROUTER) --------------------
#
#   master -> worker: [batch] envelopes to run;
#                     [W_RESET, ""] when the Master had given the worker up
#                     (its messages went to others): the worker says READY
#                     again, and the Master counts its results from then on
#                     (everything sent before RESET is ahead of it in the
#                     worker's queue, so no stale result is counted).
#   worker -> master: [R, credit] ready (at start and after RESET), with how
#                     many requests it wants in flight; [C, credit] a new
#                     credit; [D, completed, batch] results, with the number
#                     of requests finished; [B] leaving (the Master hands
#                     what it sent there and was not finished to other
#                     workers); [H] heartbeat, from a second DEALER whose
#                     routing id is the worker's plus HB_SUFFIX (pylm/servers.py
#                     sends them from a thread of their own, so that they
#                     keep coming during a long call).
# The kind is the one byte of the frame after the routing id.  A worker sets
# its credit to about CREDIT_WORK_NS of work at its measured speed: a fast
# worker asks for big batches, a slow one for a few messages, so a slow
# worker never sits on a backlog that others could run.

cdef enum:
    W_READY = 0x52          # b"R"
    W_CREDIT = 0x43         # b"C"
    W_DONE = 0x44           # b"D"
    W_BEAT = 0x48           # b"H"
    W_BYE = 0x42            # b"B"
    CREDIT_START = 16       # a worker's first credit, before it has timings
    CREDIT_WORK_NS = 20000000   # a worker asks for about 20 ms of work
    MAX_CREDIT = 100000     # the most a Master lets a worker ask for

W_RESET = b"\x00pylm-reset"
HB_SUFFIX = b"!hb"          # routing id suffix of a worker's heartbeat socket
cdef bytes _W_RESET = W_RESET
cdef bytes _HB_SUFFIX = HB_SUFFIX

# -- limits -------------------------------------------------------------------------

cdef enum:
    BATCH = 256             # messages taken from one socket per poll
    BATCH_BYTES = 262144    # a batch frame is sent once it holds this much
    # envelopes in one batch to a worker or server: small calls go about
    # 1000 at a time (a job's default window in two batches, a worker's
    # default credit in one); each batch costs every process on its way a
    # wake-up and a few syscalls (a third of the CPU per 100-byte call at 256)
    MAX_SEND = 1024
    MAX_LOST = 3            # workers a message may take down: then poison
    # SNDHWM of the Master's ROUTER to its workers, set on it explicitly
    # (pylm/servers.py): a context-wide default must not lower it
    WORKER_HWM = 1000
    # batches a Master has in flight to one worker, whatever its credit:
    # under half WORKER_HWM (libzmq learns what the peer read in steps of
    # half of it), so that a send to a worker never blocks the Master, even
    # to a worker that reads nothing while it waits to send us its results
    MAX_BATCHES_IN_FLIGHT = WORKER_HWM // 4
    # the largest message a server's bound sockets accept (ZMQ_MAXMSGSIZE;
    # bigger ones make libzmq drop the peer), also an HTTP body's limit
    MAX_MESSAGE_SIZE = 268435456
    # queue limit of a server's PUB; with XPUB_NODROP a full queue blocks
    # the sender (back-pressure) instead of dropping replies
    PUB_HWM = 100000
    # the longest a blocking receive of a client waits before it looks at
    # Python's pending signals: a signal that came just before the receive
    # began interrupts no system call, and would wait for the reply
    SIGNAL_SLICE_MS = 100

# -- for Python -----------------------------------------------------------------------

IN_PLAIN_ = IN_PLAIN
IN_TOPIC_ = IN_TOPIC
OUT_TOPIC_ = OUT_TOPIC
OUT_PLAIN_ = OUT_PLAIN
OUT_WORKER_ = OUT_WORKER
W_BEAT_ = bytes((W_BEAT,))      # the heartbeat frame pylm/servers.py sends
MAX_LOST_ = MAX_LOST
MAX_MESSAGE_SIZE_ = MAX_MESSAGE_SIZE
PUB_HWM_ = PUB_HWM
WORKER_HWM_ = WORKER_HWM
