"""The envelope codec, pylm_core vs protobuf (upb), group "envelope".

What a pipeline stage does to a message it forwards: decode, ``stage += 1``,
encode.  The message has a 100-byte payload, uuid pipeline and client and
function ``server.method``.  Both runs execute the same function, only the
class differs.
"""

import uuid

import pytest

import pylm_core
import palm_reference

FIELDS = dict(pipeline=str(uuid.UUID(int=0x3F2504E04F8941D39A0C0305E82C3301)),
              client=str(uuid.UUID(int=0x9E1B6D3A5C2F4E7B8A0D1C3E5F7A9B2D)),
              function="server.method", stage=0, payload=bytes(range(100)))
DATA = palm_reference.PalmMessage(**FIELDS).SerializeToString()


def forward(cls, data):
    message = cls()
    message.ParseFromString(data)
    message.stage += 1
    return message.SerializeToString()


@pytest.mark.benchmark(group="envelope")
@pytest.mark.parametrize("cls,role", [
    (pylm_core.PalmMessage, "ours"),
    (palm_reference.PalmMessage, "baseline"),
], ids=["pylm_core", "protobuf-upb"])
def test_decode_step_encode(bench, cls, role):
    out = bench(forward, cls, DATA, role=role,
                rounds=200, warmup_rounds=5, iterations=1000)
    assert out == palm_reference.PalmMessage(**dict(FIELDS, stage=1)).SerializeToString()
