"""Server: calls from a real Client over real ZeroMQ sockets, with the server
in a thread (pylm._testing.running) or, for the pylm 0.14-style program, in a
child process of its own."""

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from pylm._testing import Gate, ServerFailed, in_child, running, wait_for
from pylm.errors import RemoteError
from pylm.servers import Server

TIMEOUT = 10  # seconds for any call that should answer


class UserBase(Server):
    """A user's own base class: its public methods are callable too."""

    def inherited(self, payload):
        return b"inherited:" + payload


class Calc(UserBase):
    counter = 0  # a class attribute: not a method, never callable

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []
        self.private_called = False
        self.stream_calls = 0

    def upper(self, payload):
        self.calls.append(payload)
        return payload.upper()

    def fail(self, payload):
        raise ValueError("boom: " + payload.decode())

    def fail_multiline(self, payload):
        raise ValueError("line one\nline two")

    def wrong_type(self, payload):
        return "a str, not bytes"

    def _private(self, payload):
        self.private_called = True
        return b"private"

    # overrides of library methods: hooks, never callable from the wire
    def start(self, *args, **kwargs):
        return super().start(*args, **kwargs)

    def handle_stream(self, message):
        self.stream_calls += 1
        return message.client, message


def make_calc(addresses, name="calc", **kwargs):
    db, pull, pub = addresses(3)
    return Calc(name, db, pull, pub, **kwargs)


@pytest.fixture
def calc(addresses, serve):
    server = make_calc(addresses)
    serve(server)
    return server


@pytest.fixture
def client(calc, make_client):
    return make_client("calc", calc.db_address)


def test_eval_returns_the_method_result(calc, client):
    assert client.eval("calc.upper", b"hello", timeout=TIMEOUT) == b"HELLO"
    assert calc.calls == [b"hello"]
    # the overridden handle_stream routed the reply
    assert calc.stream_calls == 1


def test_second_eval_on_the_same_client(client):
    # pylm 0.14 hung on the second eval of a client
    assert client.eval("calc.upper", b"one", timeout=TIMEOUT) == b"ONE"
    assert client.eval("calc.upper", b"two", timeout=TIMEOUT) == b"TWO"
    assert client.eval("calc.upper", b"three", timeout=TIMEOUT) == b"THREE"


def test_echo(client):
    assert client.eval("calc.echo", b"same bytes", timeout=TIMEOUT) == b"same bytes"
    assert client.eval("calc.echo", b"", timeout=TIMEOUT) == b""


def test_methods_of_user_base_classes_are_callable(client):
    assert client.eval("calc.inherited", b"x", timeout=TIMEOUT) == b"inherited:x"


def test_messages_n_makes_start_return(addresses, make_client):
    server = make_calc(addresses, messages=3)
    with running(server) as run:
        client = make_client("calc", server.db_address)
        for i in range(3):
            assert client.eval("calc.upper", b"m%d" % i, timeout=TIMEOUT) == b"M%d" % i
        run.join(timeout=TIMEOUT)  # returns by itself, without stop()
        # nothing serves any more
        with pytest.raises(TimeoutError):
            client.eval("calc.upper", b"late", timeout=0.3)
    assert server.calls == [b"m0", b"m1", b"m2"]


def test_stop_returns_start_and_leaves_no_thread(addresses, make_client):
    before = set(threading.enumerate())
    server = make_calc(addresses)
    with running(server) as run:
        client = make_client("calc", server.db_address)
        assert client.eval("calc.upper", b"a", timeout=TIMEOUT) == b"A"
        assert len(set(threading.enumerate()) - before) >= 1
        run.stop(timeout=5)
        assert not run.thread.is_alive()
    server.stop()  # idempotent, also after start() returned
    left = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert left == []


@pytest.mark.parametrize("name", [
    "_private", "__init__", "__class__", "__dict__",
    "start", "stop", "handle_stream",                   # library hooks and lifecycle
    "_config", "_serve_cache", "_executor", "_run",                 # library internals
    "cache", "logger", "name", "pull_address", "counter",           # attributes
    "missing",
])
def test_only_public_user_methods_are_callable(calc, client, name):
    with pytest.raises(RemoteError) as info:
        client.eval("calc." + name, b"payload", timeout=TIMEOUT)
    assert info.value.remote_type == "LookupError", info.value
    assert name in info.value.remote_message
    # the server keeps serving, and nothing behind the name ran
    assert client.eval("calc.upper", b"still here", timeout=TIMEOUT) == b"STILL HERE"
    assert not calc.private_called
    assert calc.calls == [b"still here"]


@pytest.mark.parametrize("function", ["other.upper", "upper", "calc."])
def test_malformed_or_foreign_function_is_a_lookup_error(client, function):
    with pytest.raises(RemoteError) as info:
        client.eval(function, b"x", timeout=TIMEOUT)
    assert info.value.remote_type == "LookupError"
    assert client.eval("calc.upper", b"ok", timeout=TIMEOUT) == b"OK"


def test_a_raising_method_reaches_the_caller_and_is_logged(calc, client, caplog):
    with caplog.at_level(logging.INFO, logger="pylm"):
        with pytest.raises(RemoteError) as info:
            client.eval("calc.fail", b"x", timeout=TIMEOUT)
    err = info.value
    assert err.remote_type == "ValueError"
    assert err.remote_message == "boom: x"
    assert "Traceback" in err.remote_traceback
    assert "in fail" in err.remote_traceback
    assert str(err) == "ValueError: boom: x"
    # logged once, at ERROR, with the traceback
    failed = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert len(failed) == 1
    assert failed[0].exc_info[0] is ValueError
    assert "Traceback" in caplog.text and "boom: x" in caplog.text
    # the server keeps serving
    assert client.eval("calc.upper", b"after", timeout=TIMEOUT) == b"AFTER"


def test_a_multiline_remote_message_is_kept(client):
    with pytest.raises(RemoteError) as info:
        client.eval("calc.fail_multiline", b"x", timeout=TIMEOUT)
    assert info.value.remote_message == "line one\nline two"


def test_a_method_returning_non_bytes_is_a_remote_type_error(client):
    with pytest.raises(RemoteError) as info:
        client.eval("calc.wrong_type", b"x", timeout=TIMEOUT)
    assert info.value.remote_type == "TypeError"
    assert client.eval("calc.upper", b"after", timeout=TIMEOUT) == b"AFTER"


def test_errors_do_not_count_against_serving(calc, client):
    # several failures in a row, then normal calls
    for _ in range(5):
        with pytest.raises(RemoteError):
            client.eval("calc.fail", b"again", timeout=TIMEOUT)
    assert list(client.job("calc.upper", iter([b"a", b"b"]), timeout=TIMEOUT)) in (
        [b"A", b"B"], [b"B", b"A"])


def test_a_server_in_a_child_process_stops_on_sigterm(addresses, child, make_client):
    db, pull, pub = addresses(3)
    proc = child(Calc, "calc", db, pull, pub)
    client = make_client("calc", db)
    assert client.eval("calc.upper", b"child", timeout=TIMEOUT) == b"CHILD"
    proc.stop(timeout=TIMEOUT)  # SIGTERM to its PID
    assert proc.exitcode == 0  # start() returned: not killed by the signal


class Held(Server):
    """Its method blocks at the test's Gate: in a socket recv, not in
    Python, until the test lets it pass.  Logs at INFO, so that the test
    sees when its SIGTERM handler ran (pylm._runtime)."""

    def __init__(self, name, db_address, pull_address, pub_address, gate):
        super().__init__(name, db_address, pull_address, pub_address, log_level=logging.INFO)
        self.gate = gate

    def held(self, payload):
        if not self.gate.wait():
            raise TimeoutError("the test never opened the gate")
        return payload


def test_a_sigterm_during_a_call_stops_the_server(addresses, make_client, capfd):
    db, pull, pub = addresses(3)
    with Gate() as gate:
        proc = in_child(Held, "held", db, pull, pub, gate)
        try:
            client = make_client("held", db)
            assert client.eval("held.echo", b"up", timeout=TIMEOUT) == b"up"
            with pytest.raises(TimeoutError):       # held at the gate: no reply can come
                client.eval("held.held", b"call", timeout=0.3)
            gate.wait_arrived(1, timeout=TIMEOUT)   # the call is running in the server
            os.kill(proc.pid, signal.SIGTERM)
            # the child handled the signal (its log line on our stderr) in
            # the call, and lives on: it cannot stop inside the call ...
            err = []

            def handled():
                err.append(capfd.readouterr().err)
                return "signal %d: stopping" % signal.SIGTERM in "".join(err)
            wait_for(handled, timeout=TIMEOUT, what="the child's SIGTERM handler")
            assert proc.is_alive()
            gate.open()
            proc.process.join(TIMEOUT)              # ... and stops once it returns
            assert not proc.is_alive(), "the server did not stop after SIGTERM"
            assert proc.exitcode == 0
        finally:
            if proc.is_alive():
                proc.process.kill()
                proc.process.join(5)


# -- the helpers themselves fail loudly ---------------------------------------

def test_running_fails_loudly_when_start_raises(addresses):
    db, pub = addresses(2)
    server = Calc("calc", db, "tcp://127.0.0.1:not-a-port", pub)
    with pytest.raises(ServerFailed, match="start\\(\\) raised"):
        with running(server, start_timeout=5):
            pass


def test_running_fails_loudly_when_a_server_does_not_stop(addresses):
    class Stubborn(Calc):
        def stop(self):
            pass  # ignores the request

    server = Stubborn("calc", *addresses(3))
    run = None
    with pytest.raises(ServerFailed, match="did not stop"):
        with running(server, stop_timeout=0.5) as run:
            pass
    Server.stop(server)  # the real stop, so that nothing is left running
    run.join(timeout=5)


# -- a pylm 0.14-style program --------------------------------------------------
# Both sides are written as pylm 0.14 users wrote them (positional arguments,
# no timeouts) and run as programs of their own, so that a hang is bounded by
# the test's wait and not by pytest-timeout.

LEGACY_SERVER = textwrap.dedent("""
    import sys

    from pylm.servers import Server


    class MyServer(Server):
        def foo(self, message):
            return b'foo:' + message


    if __name__ == '__main__':
        db_address, pull_address, pub_address, messages = sys.argv[1:5]
        server = MyServer('my_server', db_address, pull_address, pub_address,
                          messages=int(messages))
        server.start()
""")

LEGACY_CLIENT = textwrap.dedent("""
    import sys

    from pylm.clients import Client


    def generator():
        for i in range(10):
            yield ('message %d' % i).encode('utf-8')


    if __name__ == '__main__':
        client = Client('my_server', sys.argv[1])
        # the cache first: the server's start() returns after 11 calls
        key = client.set(b'a value')
        assert client.get(key) == b'a value'
        assert client.set(b'another value', 'my key') == 'my key'
        assert client.get('my key') == b'another value'
        assert client.delete('my key') == 'my key'
        assert client.get('my key') == b''

        result = client.eval('my_server.foo', b'a message')
        assert result == b'foo:a message', result

        results = [r for r in client.job('my_server.foo', generator(), messages=10)]
        assert sorted(results) == sorted(
            ('foo:message %d' % i).encode() for i in range(10)), results
        client.clean()
        print('client done')
""")


def test_a_pylm_014_program(tmp_path, addresses):
    (tmp_path / "legacy_server.py").write_text(LEGACY_SERVER)
    (tmp_path / "legacy_client.py").write_text(LEGACY_CLIENT)
    db, pull, pub = addresses(3)
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    def program(*args):
        return subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    server = program("legacy_server.py", db, pull, pub, "11")  # one eval + a job of ten
    client = program("legacy_client.py", db)
    try:
        for proc, name, timeout in ((client, "client", 30), (server, "server", TIMEOUT)):
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate(timeout=5)
                pytest.fail("the 0.14-style %s hung (%s s); its output:\n%s"
                            % (name, timeout, out.decode()))
            # the server: messages=11 made start() return and the program end
            assert proc.returncode == 0, out.decode()
            if name == "client":
                assert b"client done" in out, out.decode()
    finally:
        for proc in (client, server):
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=5)
