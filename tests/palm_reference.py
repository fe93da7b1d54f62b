"""The protobuf reference for the PALM envelope, built at run time.

``message PalmMessage { string pipeline=1; string client=2; int64 stage=3;
string function=4; string cache=5; bytes payload=6; }`` (shared/API.md) is
described with descriptor_pb2 and turned into a class by the installed
protobuf runtime (upb here), without protoc or a generated ``_pb2`` file.
``PalmMessageWithError`` adds pylm's own ``string error=15``, for tests of
that field: to the 6-field class it is an unknown field.

Also here, shared by the tests and the benchmarks: hand-written wire
pieces (varints, keys, fields, groups) for inputs protobuf's encoder never
produces, the batch frame of envelopes our core sends between servers and
workers (`batch`, `unbatch`), and `disagreement(data)`, which decodes with
both runtimes and says how they differ.
"""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError as ProtobufDecodeError

import pylm_core

__all__ = ["PalmMessage", "PalmMessageWithError", "FIELDS", "STRING_FIELDS",
           "make_class", "varint", "key", "field_varint", "field_bytes",
           "group", "batch", "unbatch", "decode_protobuf", "decode_ours", "disagreement"]

# (name, number, type) in the order of the schema
FIELDS = (
    ("pipeline", 1, "string"),
    ("client", 2, "string"),
    ("stage", 3, "int64"),
    ("function", 4, "string"),
    ("cache", 5, "string"),
    ("payload", 6, "bytes"),
)
ERROR_FIELD = ("error", 15, "string")
STRING_FIELDS = tuple(name for name, _, kind in FIELDS if kind == "string")

_TYPES = {
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    "bytes": descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
}


def make_class(fields, *, package="pylm_reference", name="PalmMessage"):
    """A proto3 message class with `fields` ((name, number, type) tuples),
    in a pool of its own so that several variants can coexist."""
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="%s/%s.proto" % (package, name.lower()),
        package=package,
        syntax="proto3",
    )
    msg = file_proto.message_type.add(name=name)
    for field_name, number, kind in fields:
        msg.field.add(
            name=field_name,
            number=number,
            type=_TYPES[kind],
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
            json_name=field_name,
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    descriptor = pool.FindMessageTypeByName("%s.%s" % (package, name))
    return message_factory.GetMessageClass(descriptor)


PalmMessage = make_class(FIELDS)
PalmMessageWithError = make_class(FIELDS + (ERROR_FIELD,),
                                  package="pylm_reference_error")


# --- hand-written wire pieces, for inputs protobuf's encoder never makes ---

MASK64 = (1 << 64) - 1
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1


def varint(value, pad=0):
    """`value` (taken modulo 2**64, so negative int64 works) as a varint,
    with `pad` extra non-canonical 0x80-continued bytes (an overlong but
    valid encoding)."""
    value &= MASK64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    if pad:
        out[-1] |= 0x80
        out += b"\x80" * (pad - 1) + b"\x00"
    return bytes(out)


def key(number, wire_type, pad=0):
    return varint(number << 3 | wire_type, pad)


def field_varint(number, value, pad=0):
    return key(number, 0) + varint(value, pad)


def field_bytes(number, data, pad=0):
    return key(number, 2) + varint(len(data), pad) + data


def group(number, inner=b""):
    return key(number, 3) + inner + key(number, 4)


def batch(envelopes):
    """The batch format (pylm_core wire.h): each envelope after its length
    as a varint."""
    return b"".join(varint(len(env)) + env for env in envelopes)


def unbatch(data):
    """The envelopes of a batch frame (the inverse of `batch`)."""
    out, i = [], 0
    while i < len(data):
        n = shift = 0
        while True:
            byte = data[i]
            i += 1
            n |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        out.append(data[i:i + n])
        i += n
    return out


# --- decoding with both runtimes, for differential tests ---


def decode_protobuf(cls, data):
    """Field values of `data` decoded by protobuf class `cls` (7 values,
    error=None for the 6-field class), or None if protobuf rejects it."""
    m = cls()
    try:
        m.ParseFromString(data)
    except ProtobufDecodeError:
        return None
    return (m.pipeline, m.client, m.stage, m.function, m.cache, m.payload,
            m.error if cls is PalmMessageWithError else None)


def decode_ours(data):
    """(values, None) decoded by pylm_core, or (None, DecodeError message).
    Any exception other than DecodeError propagates: that is a bug."""
    m = pylm_core.PalmMessage()
    try:
        n = m.ParseFromString(data)
    except pylm_core.DecodeError as exc:
        return None, str(exc)
    assert n == len(data), (n, len(data))
    return (m.pipeline, m.client, m.stage, m.function, m.cache, m.payload,
            m.error), None


def disagreement(data):
    """None when pylm_core and protobuf agree on `data`, else a description.

    With ``error=15`` in the schema both must agree exactly (accept/reject
    and every value).  Against the 6-field schema, field 15 is unknown to
    protobuf, so the one allowed difference is that we reject a field 15
    that is not UTF-8; otherwise the six values and accept/reject agree."""
    ours, why = decode_ours(data)
    full = decode_protobuf(PalmMessageWithError, data)
    if ours != full:
        return ("pylm_core %s, protobuf(+error=15) %s on %r"
                % (ours if why is None else "rejects (%s)" % why, full, data))
    six = decode_protobuf(PalmMessage, data)
    if ours is not None:
        if six is None or six[:6] != ours[:6]:
            return "pylm_core %s, protobuf %s on %r" % (ours, six, data)
    elif "'error' is not valid UTF-8" not in why and six is not None:
        return ("pylm_core rejects (%s), protobuf accepts %s on %r"
                % (why, six, data))
    return None
