"""Fixtures for tests that run real servers, workers and clients
(built on pylm._testing; nothing is mocked)."""

import contextlib

import pytest

from pylm._testing import in_child, running, stop_all, tcp_addresses


@pytest.fixture
def addresses():
    """``addresses(n)``: n distinct free ``tcp://127.0.0.1:port`` addresses."""
    return tcp_addresses


@pytest.fixture
def serve():
    """``serve(server, **start_kwargs)``: run the server in a thread until
    the test ends (returns a pylm._testing.Running); stopped and joined,
    with a bounded timeout, at teardown."""
    with contextlib.ExitStack() as stack:
        yield lambda server, **kwargs: stack.enter_context(running(server, **kwargs))


@pytest.fixture
def make_client():
    """``make_client(*args, **kwargs)``: a pylm Client closed at teardown."""
    from pylm.clients import Client

    clients = []

    def make(*args, **kwargs):
        client = Client(*args, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def child():
    """``child(cls, *args, **kwargs)``: cls(*args, **kwargs).start() in a
    spawned process, stopped by SIGTERM to its PID at teardown (fails the
    test when it does not stop or exited with an error)."""
    procs = []

    def start(cls, *args, **kwargs):
        proc = in_child(cls, *args, **kwargs)
        procs.append(proc)
        return proc

    yield start
    stop_all(procs)
