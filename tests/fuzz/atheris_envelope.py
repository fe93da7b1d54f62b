"""atheris fuzz target for the envelope decoder (run by tests/test_atheris.py).

Every input must either decode or raise DecodeError; what decodes must encode
to bytes that decode to the same fields (a fixed point after one round).
"""

import sys

import atheris

with atheris.instrument_imports():
    from pylm_core import DecodeError, PalmMessage


def fields(msg):
    return (msg.pipeline, msg.client, msg.stage, msg.function, msg.cache,
            bytes(msg.payload_view), msg.error)


def TestOneInput(data):
    try:
        msg = PalmMessage.FromString(data)
    except DecodeError:
        return
    again = PalmMessage.FromString(msg.SerializeToString())
    if fields(again) != fields(msg):
        raise AssertionError("round trip changed %r into %r" % (fields(msg), fields(again)))


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
