"""Nothing the core hands to libzmq is leaked: after a Master, a worker and
a client in this process ran calls and jobs (small ones in batches, big ones
lent without a copy, through the queue's buffer handed to libzmq) and were
all stopped and closed, every batch buffer given to libzmq was freed and
every lent payload released (style.md 13(b), with always-on counts of the
two resources the core lends rather than debug-build counters of every
zmq_msg_t)."""

import gc

import pytest

from pylm_core import _core
from pylm._testing import running, tcp_addresses, wait_for
from pylm.clients import Client
from pylm.servers import Master, Server, Worker

TIMEOUT = 10


class Echo(Worker):
    def echo(self, payload):
        return payload


class EchoServer(Server):
    def echo(self, payload):
        return payload


def outstanding():
    counts = _core.resource_counts()
    return (counts["batches_given"] - counts["batches_freed"],
            counts["payloads_lent"] - counts["payloads_released"])


def balanced_again(before):
    def check():
        gc.collect()
        return outstanding() == before
    wait_for(check, timeout=TIMEOUT, what="every buffer back from libzmq")


@pytest.mark.timeout(60)
def test_a_master_worker_and_client_give_back_every_buffer():
    before = outstanding()
    start = _core.resource_counts()
    pull, pub, wpull, wpush, db = tcp_addresses(5)
    master = Master("res", pull, pub, wpull, wpush, db)
    with running(master), running(Echo("w", db)):
        with Client("res", db, timeout=TIMEOUT) as client:
            assert client.eval("res.echo", b"x" * 100_000) == b"x" * 100_000
            small = [b"%d" % i for i in range(5000)]
            assert sorted(client.job("res.echo", iter(small), messages=len(small))) == \
                sorted(small)
            big = [b"%d" % i + b"y" * 70_000 for i in range(200)]
            assert sorted(client.job("res.echo", iter(big), messages=len(big))) == sorted(big)
    used = _core.resource_counts()
    # the counts moved: the test exercised both kinds of buffers
    assert used["batches_given"] > start["batches_given"]
    assert used["payloads_lent"] >= start["payloads_lent"] + 201
    balanced_again(before)


@pytest.mark.timeout(60)
def test_a_server_and_client_give_back_every_buffer():
    before = outstanding()
    db, pull, pub = tcp_addresses(3)
    with running(EchoServer("res2", db, pull, pub)):
        with Client("res2", db, timeout=TIMEOUT) as client:
            payloads = [b"%d" % i + b"z" * (70_000 if i % 10 == 0 else 10) for i in range(500)]
            assert sorted(client.job("res2.echo", iter(payloads), messages=len(payloads))) == \
                sorted(payloads)
    balanced_again(before)
