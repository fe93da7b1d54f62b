"""Client.job's window bounded in bytes (issue 15): a job of large payloads
keeps at most max(1 call, window_bytes) of payloads in flight, not the
2,000 calls of the call window.

A Master and one Worker process whose method waits at a Gate: while the
first call is held no reply can come, so what the client took from the
generator, and what the Master received (its live statistics), is what the
window let go.  The generator records, at each payload it yields, the bytes
of the earlier payloads still without a reply (the job's in-flight bytes
when the client asked for one more).
"""

import threading

import pytest

from pylm._testing import Gate, in_child, stop_all, tcp_addresses, wait_for
from pylm.clients import JOB_WINDOW_BYTES, Client
from pylm.servers import Master, Worker

TIMEOUT = 30
MIB = 1 << 20


class HeldWorker(Worker):
    """`held` waits at `gate` (arriving as the payload's size), then
    answers with the payload; `echo` answers at once."""

    def __init__(self, *args, gate=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = gate

    def held(self, payload):
        if not self.gate.wait(who=str(len(payload))):
            raise TimeoutError("the test never opened the gate")
        return payload

    def echo(self, payload):
        return payload


@pytest.fixture
def held_master():
    """A Master and a HeldWorker, each a process: yields (gate, db address,
    a client of this thread for the Master's statistics).  A job runs in
    a thread of its own, with a Client of its own (a Client belongs to
    one thread)."""
    pull, pub, wpull, wpush, db = tcp_addresses(5)
    with Gate() as gate:
        procs = [in_child(Master, "master", pull, pub, wpull, wpush, db)]
        try:
            procs.append(in_child(HeldWorker, "held", db, gate=gate))
            with Client("master", db, timeout=TIMEOUT) as client:
                assert client.eval("master.echo", b"x", timeout=TIMEOUT) == b"x"
                yield gate, db, client
        finally:
            gate.open()
            stop_all(procs)


class Recorder:
    """The payloads of a job, recording at each one yielded the bytes of
    the earlier ones still unanswered."""

    def __init__(self, sizes):
        self.sizes = sizes
        self.taken = 0              # payloads yielded
        self.sent_bytes = 0         # ... their bytes
        self.answered_bytes = 0     # bytes of the replies consumed
        self.before = []            # unanswered bytes at each payload yielded

    def payloads(self):
        for i, size in enumerate(self.sizes):
            self.before.append(self.sent_bytes - self.answered_bytes)
            self.taken += 1
            self.sent_bytes += size
            yield i.to_bytes(4, "little") * (size // 4)

    def run(self, db, window_bytes, replies, resend=False):
        with Client("master", db, timeout=TIMEOUT) as client:
            for reply in client.job("master.held", self.payloads(), timeout=TIMEOUT,
                                    window_bytes=window_bytes, resend=resend):
                self.answered_bytes += len(reply)
                replies.append(reply)


def _job_in_thread(recorder, db, window_bytes, resend=False):
    replies, errors = [], []

    def run():
        try:
            recorder.run(db, window_bytes, replies, resend)
        except BaseException as exc:        # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run, name="job")
    thread.start()
    return thread, replies, errors


def _received(client):
    return client.stats(timeout=TIMEOUT)["received"]


def test_the_default_byte_bound_is_16_mib():
    assert JOB_WINDOW_BYTES == 16 * MIB


def test_a_job_of_1_mib_payloads_keeps_window_bytes_in_flight(held_master):
    gate, db, client = held_master
    before = _received(client)
    sizes = [MIB] * 16
    recorder = Recorder(sizes)
    thread, replies, errors = _job_in_thread(recorder, db, 4 * MIB)
    try:
        gate.wait_arrived(1)
        wait_for(lambda: _received(client) - before >= 4, timeout=TIMEOUT,
                 what="the Master receiving the window")
        # four calls (4 MiB) went, the client took no fifth payload
        assert _received(client) - before == 4
        assert recorder.taken == 4
    finally:
        gate.open()
        thread.join(TIMEOUT)
    assert not thread.is_alive() and not errors, errors
    assert sorted(replies) == [i.to_bytes(4, "little") * (MIB // 4) for i in range(16)]
    assert max(recorder.before) == 3 * MIB       # 3 unanswered when the 4th was taken


@pytest.mark.parametrize("resend", [False, True], ids=["plain", "resend"])
def test_a_payload_larger_than_any_before_waits_until_the_smaller_window_has_room(
        held_master, resend):
    """Six 512 KiB payloads fill 3 of 4 MiB; a 2 MiB one then shrinks the
    window to two calls: it is held by the client (taken, not sent) until
    replies make room, not sent on top of the 3 MiB.  With resend (each
    call kept until its reply) as without."""
    gate, db, client = held_master
    before = _received(client)
    sizes = [MIB // 2] * 6 + [2 * MIB] * 3
    recorder = Recorder(sizes)
    thread, replies, errors = _job_in_thread(recorder, db, 4 * MIB, resend)
    try:
        gate.wait_arrived(1)
        wait_for(lambda: recorder.taken >= 7 and _received(client) - before >= 6,
                 timeout=TIMEOUT, what="the six small calls sent and the large one taken")
        assert _received(client) - before == 6
        assert recorder.taken == 7
    finally:
        gate.open()
        thread.join(TIMEOUT)
    assert not thread.is_alive() and not errors, errors
    assert sorted(len(r) for r in replies) == sorted(sizes)
    # each 2 MiB payload went with at most one call (2 MiB) before it
    assert all(b <= 2 * MIB for b in recorder.before[7:]), recorder.before


def test_a_payload_above_the_bound_goes_alone(held_master):
    """window_bytes below one payload: one call at a time, never none."""
    gate, db, _ = held_master
    gate.open()
    sizes = [2 * MIB] * 4
    recorder = Recorder(sizes)
    replies = []
    recorder.run(db, MIB, replies)
    assert sorted(len(r) for r in replies) == sizes
    assert recorder.before == [0, 0, 0, 0]
