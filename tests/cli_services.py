"""Classes that tests/test_cli.py runs with the ``pylm`` command in other
processes (they import this module: PYTHONPATH includes tests/).

``PYLM_TEST_GATE`` (``HOST:PORT`` of a pylm._testing.Gate in the test's
process), when set, is where ``hold`` waits; ``Upper.gated`` waits there
for the payload ``PYLM_TEST_GATED`` only, arriving as its worker's PID."""

import os

from pylm._testing import Gate
from pylm.servers import Server, Worker


def _gate():
    host, port = os.environ["PYLM_TEST_GATE"].rsplit(":", 1)
    gate = Gate.__new__(Gate)
    gate.__setstate__({"address": (host, int(port))})
    return gate


class Upper(Worker):
    def upper(self, payload):
        return payload.upper()

    def gated(self, payload):
        if payload == os.environ.get("PYLM_TEST_GATED", "").encode():
            _gate().wait(who=str(os.getpid()))
        return payload.upper()


class UpperServer(Server):
    def upper(self, payload):
        return payload.upper()

    def hold(self, payload):
        _gate().wait(who=payload.decode())
        return payload
