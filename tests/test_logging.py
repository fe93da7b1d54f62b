"""The library leaves logging to the application (issue 11, item 4).

By default no server, client or server from parts sets a level on its
logger, so the application's configuration (here: the root logger at
WARNING) decides what is emitted; `log_level`/`logging_level` set the level
only when the caller passes them.  Real servers over real sockets.
"""

import contextlib
import logging

import zmq

from pylm._testing import running, tcp_addresses
from pylm.clients import Client
from pylm.errors import RemoteError
from pylm.parts.core import ACK
from pylm.parts.messages_pb2 import PalmMessage
from pylm.parts.servers import ServerTemplate
from pylm.parts.services import RepService
from pylm.servers import Server

import pytest

TIMEOUT = 10


class Records(logging.Handler):
    """Every record of the ``pylm`` loggers that reaches the root logger."""

    def __init__(self):
        super().__init__(logging.NOTSET)
        self.records = []

    def emit(self, record):
        if record.name == "pylm" or record.name.startswith("pylm."):
            self.records.append(record)

    def below(self, level):
        return [r for r in self.records if r.levelno < level]


@pytest.fixture
def app_logging():
    """The application's configuration: the root logger at WARNING, with a
    handler that records what reaches it; restored afterwards."""
    root = logging.getLogger()
    handler = Records()
    old_level = root.level
    root.setLevel(logging.WARNING)
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


@contextlib.contextmanager
def client_logger_reset():
    """pylm.client is one logger for every Client of the process: start
    from NOTSET, and leave it so for later tests."""
    logger = logging.getLogger("pylm.client")
    logger.setLevel(logging.NOTSET)
    try:
        yield logger
    finally:
        logger.setLevel(logging.NOTSET)


class Quiet(Server):
    def fail(self, payload):
        raise ValueError("boom")


class QuietParts(ServerTemplate):
    """A server from parts; its logger is pylm.parts.QuietParts."""

    def __init__(self, rep, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_inbound(RepService, "Rep", rep)


def test_a_default_server_and_client_leave_the_levels_to_the_application(app_logging):
    db, pull, pub = tcp_addresses(3)
    server = Quiet("quiet-default", db, pull, pub)
    assert server.logger.level == logging.NOTSET
    with client_logger_reset() as client_logger, running(server):
        with Client("quiet-default", db, timeout=TIMEOUT) as client:
            assert client.logger.level == logging.NOTSET
            assert client.eval("quiet-default.echo", b"x", timeout=TIMEOUT) == b"x"
            with pytest.raises(RemoteError):
                client.eval("quiet-default.fail", b"x", timeout=TIMEOUT)
        assert client_logger.level == logging.NOTSET
    assert server.logger.level == logging.NOTSET
    # the failed call's ERROR record reached the application's handler ...
    assert any(r.levelno == logging.ERROR and r.name == server.logger.name
               for r in app_logging.records), app_logging.records
    # ... and nothing below the application's WARNING did
    assert app_logging.below(logging.WARNING) == []


def test_log_level_and_logging_level_are_applied_when_given(app_logging):
    db, pull, pub = tcp_addresses(3)
    server = Quiet("quiet-debug", db, pull, pub, log_level=logging.DEBUG)
    assert server.logger.level == logging.DEBUG
    # the legacy positional place of log_level (after pipelined) still works
    positional = Quiet("quiet-positional", db, pull, pub, False, logging.ERROR)
    assert positional.logger.level == logging.ERROR
    parts = QuietParts(tcp_addresses(1)[0], logging.INFO)
    assert parts.logger.level == logging.INFO and parts.logger.handlers == []
    with client_logger_reset() as client_logger, running(server):
        with Client("quiet-debug", db, logging_level=logging.DEBUG, timeout=TIMEOUT):
            assert client_logger.level == logging.DEBUG
    logging.getLogger(server.logger.name).setLevel(logging.NOTSET)
    logging.getLogger(positional.logger.name).setLevel(logging.NOTSET)
    logging.getLogger(parts.logger.name).setLevel(logging.NOTSET)


def serve_parts_once(server, rep):
    """Run a server from parts and answer one request on its REP part."""
    with running(server, ready=lambda s: s.ready.is_set()):
        ctx = zmq.Context.instance()
        req = ctx.socket(zmq.REQ)
        req.linger = 0
        req.rcvtimeo = TIMEOUT * 1000
        try:
            req.connect(rep)
            req.send(PalmMessage(pipeline="p", client="c", function="x.f",
                                 payload=b"x").SerializeToString())
            assert req.recv() == ACK
        finally:
            req.close()


def test_a_default_server_from_parts_emits_no_info_records(app_logging):
    rep = tcp_addresses(1)[0]
    server = QuietParts(rep)
    assert server.logger.level == logging.NOTSET
    serve_parts_once(server, rep)
    assert server.logger.level == logging.NOTSET
    assert app_logging.below(logging.WARNING) == []


def test_a_server_from_parts_given_info_emits_its_info_records(app_logging):
    rep = tcp_addresses(1)[0]
    server = QuietParts(rep, logging_level=logging.INFO)
    try:
        serve_parts_once(server, rep)
    finally:
        server.logger.setLevel(logging.NOTSET)
    infos = app_logging.below(logging.WARNING)
    assert any("starting" in r.getMessage() for r in infos), infos


def _stop_child(db, name, proc):
    """Wait until the child serves (a call answers), then SIGTERM it."""
    with Client(name, db, timeout=TIMEOUT) as client:
        assert client.eval("%s.echo" % name, b"x", timeout=TIMEOUT) == b"x"
    proc.stop()
    assert proc.exitcode == 0


@pytest.mark.parametrize("log_level, logged", [(None, False), (logging.INFO, True)])
def test_a_server_in_a_child_logs_its_sigterm_only_at_the_level_asked(child, capfd,
                                                                       log_level, logged):
    """The child configures logging at WARNING (pylm._testing): the
    server's INFO record of the signal shows only when log_level asks."""
    db, pull, pub = tcp_addresses(3)
    name = "quiet-child"
    # log_level in its positional place: child()'s own log_level keyword is
    # the level of the child's logging configuration
    proc = child(Quiet, name, db, pull, pub, False, log_level)
    _stop_child(db, name, proc)
    err = capfd.readouterr().err
    assert ("signal %d: stopping" % 15 in err) == logged, err
