"""The default handle_stream is written once (pylm._stream) and is the one
every server, BaseMaster and PubService have."""

import pytest

from pylm._stream import DefaultStream
from pylm.parts.messages_pb2 import PalmMessage
from pylm.parts.servers import BaseMaster
from pylm.parts.services import PubService
from pylm.servers import Hub, Master, Pipeline, Server, Sink, Worker


@pytest.mark.parametrize("cls", [Server, Pipeline, Sink, Master, Hub, Worker, BaseMaster,
                                 PubService])
def test_every_default_handle_stream_is_the_one_of_pylm_stream(cls):
    assert cls.handle_stream is DefaultStream.handle_stream
    assert cls.pipelined is False


def test_the_default_route_to_the_client_or_to_the_next_stage():
    server = Server("s", "inproc://db", "inproc://pull", "inproc://pub")
    message = PalmMessage(client="c", stage=0)
    assert server.handle_stream(message) == ("c", message) and message.stage == 0
    server = Server("s", "inproc://db", "inproc://pull", "inproc://pub", pipelined=True)
    assert server.handle_stream(message) == ("s", message) and message.stage == 1
    pub = PubService("Pub", "inproc://pub", pipelined=True, server="up")
    assert pub.handle_stream(message) == ("up", message) and message.stage == 2
