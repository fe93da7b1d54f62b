"""Where a result goes by default: the one ``handle_stream`` of every
server (pylm.servers), of BaseMaster and of PubService (pylm.parts).

The core serves the same route in C when a server does not override
``handle_stream`` (pylm_core executor.pyx and publisher.pyx); this is the
method users see, call and override.
"""

from typing import Optional, Tuple

from pylm_core import PalmMessage

__all__ = ["DefaultStream"]


class DefaultStream:
    """Gives ``handle_stream(message) -> (topic, message)``: to the client
    (topic ``message.client``), or, when ``self.pipelined``, to the next
    stage (topic ``self.name``, ``stage += 1``)."""

    #: the server's name: the topic of its results when pipelined
    name: str
    pipelined = False

    def handle_stream(self, message: PalmMessage) -> Optional[Tuple[str, PalmMessage]]:
        """``(topic, message)`` to send the result on; a subclass may
        return None to send nothing."""
        if self.pipelined:
            message.stage += 1
            return self.name, message
        return message.client, message
