"""Classes that tests/test_cli.py runs with the ``pylm`` command in other
processes (they import this module: PYTHONPATH includes tests/)."""

from pylm.servers import Server, Worker


class Upper(Worker):
    def upper(self, payload):
        return payload.upper()


class UpperServer(Server):
    def upper(self, payload):
        return payload.upper()
