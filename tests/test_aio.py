"""pylm.aio.Client against a Master (in a thread) with two worker processes,
and against a Server process that is restarted; every test runs its own
event loop (asyncio.run, or uvloop's when it is installed)."""

import asyncio
from collections import Counter

import pytest

from pylm import _local, aio
from pylm._testing import Gate, in_child, running, stop_all, tcp_addresses, wait_for
from pylm.clients import Client
from pylm.errors import RemoteError
from pylm.servers import Master, MuxWorker, Server, Worker

from test_interop import legacy_python, node  # noqa: F401 (fixtures: pylm 0.14 programs)

TIMEOUT = 20  # seconds for anything that should answer

try:
    import uvloop
except ImportError:
    uvloop = None


def gate_payload(gate, tag):
    """A payload for GatedWorker.held: where the gate is, and a tag."""
    host, port = gate.address
    return b"%s:%d|%s" % (host.encode(), port, tag)


class GatedWorker(Worker):
    """Runs in a child process (module level: pickled by reference)."""

    def tag(self, payload):
        return payload

    def who(self, payload):
        return self.name.encode()

    def fail(self, payload):
        raise ValueError("failed on " + payload.decode())

    def held(self, payload):
        """Wait at the gate named in the payload, then return its tag."""
        where, _, tag = payload.partition(b"|")
        host, _, port = where.decode().rpartition(":")
        gate = Gate.__new__(Gate)
        gate.__setstate__({"address": (host, int(port))})
        gate.wait(who=tag.decode())
        return tag


class TagServer(Server):
    def tag(self, payload):
        return payload


@pytest.fixture(scope="module")
def cluster():
    """A Master in a thread and two GatedWorkers in child processes; yields
    the Master's db address once both workers have answered."""
    pull, pub, wpull, wpush, db = tcp_addresses(5)
    master = Master("master", pull_address=pull, pub_address=pub, worker_pull_address=wpull,
                    worker_push_address=wpush, db_address=db)
    with running(master):
        procs = []
        try:
            for name in ("worker-a", "worker-b"):
                procs.append(in_child(GatedWorker, name, db))
            with Client("master", db, timeout=TIMEOUT) as client:
                seen = set()

                def both_answered():
                    seen.update(client.job("master.who", iter([b""] * 4000), timeout=TIMEOUT))
                    return seen == {b"worker-a", b"worker-b"}

                wait_for(both_answered, timeout=30, what="both workers answering")
            yield db
        finally:
            stop_all(procs)


def run(coro, loop="asyncio"):
    """Run coro to its end on a new event loop of the given kind."""
    if loop == "uvloop":
        if uvloop is None:
            pytest.skip("uvloop is not installed (it is in the test extra; "
                        "pip install uvloop)")
        event_loop = uvloop.new_event_loop()
        try:
            return event_loop.run_until_complete(coro)
        finally:
            event_loop.close()
    return asyncio.run(coro)


async def until(predicate, what, timeout=TIMEOUT):
    """Poll predicate() on the loop until true; AssertionError after timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("%s not met within %s s" % (what, timeout))
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_10000_concurrent_evals_on_one_client(cluster, loop):
    async def main():
        async with aio.Client("master", cluster, timeout=TIMEOUT) as client:
            payloads = [b"%d" % i for i in range(10_000)]
            replies = await asyncio.gather(*[client.eval("master.tag", p, timeout=TIMEOUT)
                                             for p in payloads])
            assert replies == payloads
            who = await asyncio.gather(*[client.eval("master.who", b"", timeout=TIMEOUT)
                                         for _ in range(2000)])
            assert set(who) <= {b"worker-a", b"worker-b"}
            assert client.pending == 0
    run(main(), loop)


async def numbered(n):
    for i in range(n):
        yield b"%d" % i


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_job_of_100000_from_sync_and_async_iterables(cluster, loop):
    expected = Counter(b"%d" % i for i in range(100_000))

    async def main():
        async with aio.Client("master", cluster, timeout=TIMEOUT) as client:
            replies = [r async for r in client.job(
                "master.tag", (b"%d" % i for i in range(100_000)), timeout=TIMEOUT)]
            assert Counter(replies) == expected
            replies = [r async for r in client.job("master.tag", numbered(100_000),
                                                   timeout=TIMEOUT)]
            assert Counter(replies) == expected
            # messages= stops early; an eval beside a job gets its own reply
            job = client.job("master.tag", (b"j%d" % i for i in range(10_000)), messages=500,
                             timeout=TIMEOUT)
            first = await job.__anext__()
            assert await client.eval("master.tag", b"beside", timeout=TIMEOUT) == b"beside"
            rest = [r async for r in job]
            assert len(rest) == 499 and first.startswith(b"j")
            assert client.pending == 0
            # a job left early is forgotten once its generator is finalized
            async for _ in client.job("master.tag", (b"%d" % i for i in range(10_000)),
                                      timeout=TIMEOUT):
                break
            await until(lambda: client.pending == 0, "the abandoned job forgotten")
            assert await client.eval("master.tag", b"after", timeout=TIMEOUT) == b"after"
    run(main(), loop)


def test_cancelling_half_of_1000_calls_in_flight(cluster):
    """1,000 calls held at a gate in the workers; 500 cancelled, then the
    gate opens: the other 500 get their own replies, the 500 late replies
    are dropped (counted as stale), later calls get their own, and the
    table of pending calls is empty."""
    async def main():
        with Gate() as gate:
            async with aio.Client("master", cluster, timeout=TIMEOUT) as client:
                assert await client.eval("master.tag", b"warm", timeout=TIMEOUT) == b"warm"
                stale = client.stale
                tags = [b"t%d" % i for i in range(1000)]
                tasks = [asyncio.ensure_future(
                    client.eval("master.held", gate_payload(gate, tag), timeout=60))
                    for tag in tags]
                # both workers hold a call at the gate: the calls have left
                await until(lambda: gate.arrived >= 2, "two calls at the gate")
                assert client.pending == 1000
                for task in tasks[::2]:
                    task.cancel()
                await asyncio.sleep(0)
                assert client.pending == 500
                gate.open()
                replies = await asyncio.gather(*tasks[1::2])
                assert replies == tags[1::2]
                assert all(task.cancelled() for task in tasks[::2])
                await until(lambda: client.stale - stale >= 500, "500 late replies dropped")
                later = [b"later%d" % i for i in range(500)]
                assert await asyncio.gather(*[client.eval("master.tag", p, timeout=TIMEOUT)
                                              for p in later]) == later
                assert client.stale - stale == 500
                assert client.pending == 0
                assert gate.arrived == 1000
    run(main())


def test_timeout_raises_and_the_late_reply_is_dropped(cluster):
    async def main():
        with Gate() as gate:
            async with aio.Client("master", cluster, timeout=TIMEOUT) as client:
                assert await client.eval("master.tag", b"warm", timeout=TIMEOUT) == b"warm"
                stale = client.stale
                with pytest.raises(TimeoutError):
                    await client.eval("master.held", gate_payload(gate, b"late"), timeout=0.5)
                assert client.pending == 0
                gate.wait_arrived(1)
                gate.open()
                await until(lambda: client.stale > stale, "the late reply dropped")
                assert await client.eval("master.tag", b"next", timeout=TIMEOUT) == b"next"
                with Gate() as held:
                    with pytest.raises(TimeoutError):   # a job whose replies do not come
                        async for _ in client.job("master.held",
                                                  [gate_payload(held, b"x")] * 3, timeout=0.5):
                            pass
                    assert client.pending == 0
    run(main())


def test_remote_errors(cluster):
    async def main():
        async with aio.Client("master", cluster, timeout=TIMEOUT) as client:
            with pytest.raises(RemoteError) as info:
                await client.eval("master.fail", b"x", timeout=TIMEOUT)
            assert info.value.remote_type == "ValueError"
            assert info.value.remote_message == "failed on x"
            with pytest.raises(RemoteError):
                async for _ in client.job("master.fail", [b"a"] * 10, timeout=TIMEOUT):
                    pass
            with pytest.raises(RemoteError) as info:
                await client.eval("master.missing", b"x", timeout=TIMEOUT)
            assert info.value.remote_type == "LookupError"
            with pytest.raises(TypeError):
                await client.eval("master.tag", "not bytes")
            assert await client.eval("master.tag", b"fine", timeout=TIMEOUT) == b"fine"
            assert client.pending == 0
    run(main())


def test_async_with_closes_the_sockets(cluster):
    async def main():
        async with aio.Client("master", cluster, timeout=TIMEOUT) as client:
            assert await client.eval("master.tag", b"x", timeout=TIMEOUT) == b"x"
            sockets = [client._sync._push, client._sync._sub]
            assert not any(sock.closed for sock in sockets)
        assert all(sock.closed for sock in sockets)
        with pytest.raises(ConnectionError):
            await client.eval("master.tag", b"x", timeout=TIMEOUT)
        await client.close()            # idempotent
    run(main())


def test_close_fails_the_calls_still_waiting(cluster):
    async def main():
        with Gate() as gate:
            client = aio.Client("master", cluster, timeout=TIMEOUT)
            task = asyncio.ensure_future(client.eval("master.held",
                                                     gate_payload(gate, b"c"), timeout=60))
            await until(lambda: gate.arrived >= 1, "the call at the gate")
            await client.close()
            with pytest.raises(ConnectionError):
                await task
            assert client.pending == 0
    run(main())


def test_a_server_restart_mid_job_times_out_and_the_client_works_after():
    """Stop the server process mid-job: the job raises TimeoutError; a new
    server process on the same addresses answers the same client."""
    db, pull, pub = tcp_addresses(3)
    procs = [in_child(TagServer, "srv", db, pull, pub)]

    async def main():
        client = aio.Client("srv", db, timeout=TIMEOUT)
        try:
            replies = []
            with pytest.raises(TimeoutError):
                async for reply in client.job("srv.tag", (b"%d" % i for i in range(20_000)),
                                              timeout=2):
                    replies.append(reply)
                    if len(replies) == 300:
                        procs[0].stop()         # blocks the loop: nothing more is sent
            assert 300 <= len(replies) < 20_000
            assert len(set(replies)) == len(replies)
            assert client.pending == 0
            procs.append(in_child(TagServer, "srv", db, pull, pub))
            for attempt in range(20):           # until its subscription reached the new server
                try:
                    assert await client.eval("srv.tag", b"again", timeout=1.0) == b"again"
                    break
                except TimeoutError:
                    continue
            else:
                raise AssertionError("the new server never answered the client")
            payloads = [b"new%d" % i for i in range(2000)]
            replies = [r async for r in client.job("srv.tag", payloads, timeout=TIMEOUT)]
            assert Counter(replies) == Counter(payloads)
            assert client.pending == 0
        finally:
            await client.close()
    try:
        run(main())
    finally:
        stop_all(procs)


def test_large_payloads_travel_alone(cluster):
    async def main():
        async with aio.Client("master", cluster, timeout=TIMEOUT) as client:
            big = [bytes([i]) * (70_000 + i) for i in range(20)]
            assert await asyncio.gather(*[client.eval("master.tag", p, timeout=TIMEOUT)
                                          for p in big]) == big
            replies = [r async for r in client.job("master.tag", big + [b"small"],
                                                   timeout=TIMEOUT)]
            assert Counter(replies) == Counter(big + [b"small"])
    run(main())


def test_the_constructor_is_the_sync_clients():
    with pytest.raises(TypeError):
        aio.Client("x", None, this_config=True, no_such_keyword=1)
    client = aio.Client("x", None, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", this_config=True)
    assert client.push_address == "tcp://127.0.0.1:1"
    assert client.sub_address == "tcp://127.0.0.1:2"
    asyncio.run(client.close())


def test_the_constructor_never_blocks_the_loop():
    """Made against a dead cache address, the client does no I/O until its
    first call, which fetches the configuration in the executor (a ticker
    task keeps ticking meanwhile) and raises TimeoutError; once a server
    answers there, the next call of the same client fetches it and works."""
    db = tcp_addresses(1)[0]            # nothing listens there yet

    async def main():
        loop = asyncio.get_running_loop()
        ticks = []
        stop = asyncio.Event()

        async def ticker():
            while not stop.is_set() and len(ticks) < 10_000:
                ticks.append(loop.time())
                await asyncio.sleep(0.01)

        task = asyncio.ensure_future(ticker())
        await until(lambda: ticks, "the first tick")
        client = aio.Client("srv", db, timeout=2)
        try:
            made = loop.time()
            with pytest.raises(TimeoutError):
                await client.eval("srv.tag", b"x", timeout=TIMEOUT)
            failed = loop.time()
            stop.set()
            await task
            # the loop ran while the fetch waited: ticks all through it, no
            # gap anywhere near the 2 s the fetch blocked for
            during = [t for t in ticks if made <= t <= failed]
            assert len(during) >= 5, (len(during), failed - made)
            assert client.push_address is None      # nothing fetched
            pull, pub = tcp_addresses(2)
            with running(TagServer("srv", db, pull, pub)):
                assert await client.eval("srv.tag", b"y", timeout=TIMEOUT) == b"y"
            # fetched now: the tcp address, or on this host the Server's twin
            assert client.push_address in (pull, _local.twin_of(pull))
        finally:
            await client.close()

    run(main())


def test_calls_wait_for_room_on_the_push_socket():
    """No peer at the push address: the PUSH queue fills (its high-water
    mark), the rest of the calls wait in the client, and all of them leave
    once a peer binds there; a call cancelled before it left is not sent."""
    import zmq
    from pylm._context import context
    from pylm_core import _core

    push, sub = tcp_addresses(2)
    calls = 2500

    async def main():
        # nothing publishes at `sub`: after a second of silence the client
        # takes it for pylm 0.14's and sends calls one envelope each
        client = aio.Client("srv", None, push, sub, this_config=True, timeout=TIMEOUT)
        pull = context().socket(zmq.PULL)
        try:
            tasks = [asyncio.ensure_future(client.eval("srv.tag", b"%d" % i))
                     for i in range(calls)]
            await until(lambda: client._watching_room, "the PUSH queue full")
            tasks[-1].cancel()
            await asyncio.sleep(0)
            pull.bind(push)
            got = set()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + TIMEOUT
            while len(got) < calls - 1 and loop.time() < deadline:
                if await loop.run_in_executor(None, pull.poll, 100):
                    while True:
                        try:
                            frame = pull.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        message = _core.PalmMessage()
                        message.ParseFromString(frame)
                        got.add(message.payload)
            assert got == {b"%d" % i for i in range(calls - 1)}
            assert client.pending == calls - 1
            await client.close()
            for task in tasks[:-1]:
                with pytest.raises(ConnectionError):
                    await task
            assert client.pending == 0
        finally:
            pull.close(linger=0)
            await client.close()
    run(main())


class Triple(MuxWorker):
    def three(self, payload):
        for i in range(3):
            yield payload + b"-%d" % i


def test_evals_of_several_replies_each():
    pull, pub, wpull, wpush, db = tcp_addresses(5)
    master = Master("mux", pull_address=pull, pub_address=pub, worker_pull_address=wpull,
                    worker_push_address=wpush, db_address=db)

    async def main():
        async with aio.Client("mux", db, timeout=TIMEOUT) as client:
            replies = await asyncio.gather(*[client.eval("mux.three", b"%d" % i, messages=3,
                                                         timeout=TIMEOUT) for i in range(300)])
            assert replies == [[b"%d-%d" % (i, k) for k in range(3)] for i in range(300)]
            with pytest.raises(TimeoutError):       # a fourth reply never comes
                await client.eval("mux.three", b"x", messages=4, timeout=0.5)
            assert client.pending == 0
    with running(master), running(Triple("triple", db)):
        run(main())


def test_against_a_pylm_014_server(node):
    """A pylm 0.14 server: no batches, no greeting (the client waits once,
    as the sync client does); the call ids still sort the replies."""
    from legacy import tcp_addresses as legacy_addresses
    from test_interop import start_old

    db, pull, pub = legacy_addresses(3)
    start_old(node, "old-server", "server", "server", db, pull, pub, db=db, name="server")

    async def main():
        async with aio.Client("server", db, timeout=TIMEOUT) as client:
            payloads = [b"eval-%d" % i for i in range(200)]
            replies = await asyncio.gather(*[client.eval("server.foo", p, timeout=TIMEOUT)
                                             for p in payloads])
            assert replies == [b"old-server:" + p for p in payloads]
            payloads = [b"job-%d" % i for i in range(1000)]
            replies = [r async for r in client.job("server.foo", payloads, timeout=TIMEOUT)]
            assert Counter(replies) == Counter(b"old-server:" + p for p in payloads)
            assert client.pending == 0
    run(main())


def test_curve_keys_as_with_the_sync_client(tmp_path):
    """secret_key=/server_key= reach the sockets through the sync client's
    code: an authorized key is served, an outsider's times out."""
    import shutil

    from pylm.security import generate_keys

    made = {name: generate_keys(str(tmp_path / name), name)
            for name in ("server", "client", "outsider")}
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    for name in ("server", "client"):
        shutil.copy(made[name][0], authorized)
    db, pull, pub = tcp_addresses(3)
    server = TagServer("srv", db, pull, pub, secret_key=made["server"][1],
                       authorized_keys=str(authorized))
    good = dict(server_key=made["server"][0], secret_key=made["client"][1])

    async def main():
        async with aio.Client("srv", db, timeout=TIMEOUT, **good) as client:
            replies = await asyncio.gather(*[client.eval("srv.tag", b"%d" % i, timeout=TIMEOUT)
                                             for i in range(1000)])
            assert replies == [b"%d" % i for i in range(1000)]
            assert [r async for r in client.job("srv.tag", [b"j"] * 100,
                                                timeout=TIMEOUT)] == [b"j"] * 100
        outsider = aio.Client("srv", db, timeout=0.5, server_key=made["server"][0],
                              secret_key=made["outsider"][1])
        try:
            with pytest.raises(TimeoutError):   # the cache refuses the outsider
                await outsider.eval("srv.tag", b"x", timeout=TIMEOUT)
        finally:
            await outsider.close()
    with running(server, client_kwargs=good):
        run(main())
