"""The PALM envelope codec (pylm_core.PalmMessage) against protobuf.

Differential property tests: whatever hypothesis builds is encoded and
decoded by pylm_core and by the protobuf runtime (upb) for the schema of
shared/API.md (tests/palm_reference.py), and the two must agree byte for byte
and value for value.  Unit tests then pin the Python-object behaviour, run
against both classes where protobuf defines it (style.md 13a).
"""

import copy
import pickle
import random
import sys
import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import pylm_core
from pylm_core import _core
from pylm_core.errors import DecodeError

import palm_reference as ref
from palm_reference import (INT64_MAX, INT64_MIN, field_bytes, field_varint,
                            group, key, varint)

Ours = pylm_core.PalmMessage
Pb = ref.PalmMessage
PbE = ref.PalmMessageWithError

NAMES = ("pipeline", "client", "stage", "function", "cache", "payload")
NUMBERS = {"pipeline": 1, "client": 2, "stage": 3, "function": 4, "cache": 5,
           "payload": 6, "error": 15}
MiB = 1 << 20


def values(m, error=True):
    """The field values of a message of either class (payload as bytes)."""
    out = (m.pipeline, m.client, m.stage, m.function, m.cache, bytes(m.payload))
    return out + (m.error,) if error else out


# --- strategies ---

# any code point with a UTF-8 form (no lone surrogates), plus hand-picked
# ones: non-BMP, NUL, the 1/2/3/4-byte boundaries
special_text = st.sampled_from([
    "", "a", "\x00", "\x7f", "\x80", "é", "\u07ff", "\u0800", "\uffff",
    "\U00010000", "😀", "\U0010ffff", "日本語", "server.method other.step",
    "a" * 127, "b" * 128, "ü" * 200,
])
text = st.one_of(st.text(st.characters(codec="utf-8"), max_size=40),
                 special_text, st.uuids().map(str))

stages = st.one_of(
    st.sampled_from([0, 1, -1, 127, 128, -128, 2**31 - 1, -2**31, 2**32,
                     -2**32, 2**56, INT64_MIN, INT64_MIN + 1, INT64_MAX,
                     INT64_MAX - 1]),
    st.integers(INT64_MIN, INT64_MAX))


def _random_bytes(size, seed):
    return random.Random(seed).randbytes(size)


payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(_random_bytes,
              st.sampled_from([0, 1, 127, 128, 16383, 16384, 65535, 65536, MiB]),
              st.integers(0, 2**32)))

FIELD_STRATEGIES = {"pipeline": text, "client": text, "stage": stages,
                    "function": text, "cache": text, "payload": payloads}

six_fields = st.fixed_dictionaries({}, optional=FIELD_STRATEGIES)
seven_fields = st.fixed_dictionaries(
    {}, optional=dict(FIELD_STRATEGIES, error=text))

# values that are far from the defaults, for the exhaustive combinations
HARD = {
    "pipeline": "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
    "client": "client-\U0001f600-\u00e9",
    "stage": INT64_MIN,
    "function": "server.method other.step",
    "cache": "\U0010ffff" * 3,
    "payload": _random_bytes(MiB, 1),
    "error": "ValueError: boom\nTraceback (most recent call last):\n",
}

big_settings = settings(deadline=None, max_examples=60,
                        suppress_health_check=[HealthCheck.too_slow])


# --- encoding ---

@big_settings
@given(six_fields)
def test_encode_matches_protobuf(fields):
    ours, pb = Ours(**fields), Pb(**fields)
    data = pb.SerializeToString()
    assert ours.SerializeToString() == data
    assert ours.ByteSize() == pb.ByteSize() == len(data)


@big_settings
@given(seven_fields)
def test_encode_with_error_matches_protobuf(fields):
    ours = Ours()
    for name, value in fields.items():        # attribute assignment this time
        setattr(ours, name, value)
    assert ours.SerializeToString() == PbE(**fields).SerializeToString()


@pytest.mark.parametrize("mask", range(1 << 7))
def test_encode_every_field_combination(mask):
    """All 128 subsets of the seven fields set to far-from-default values;
    an empty error never reaches the wire."""
    chosen = {name: HARD[name] for i, name in enumerate(NUMBERS) if mask >> i & 1}
    data = PbE(**chosen).SerializeToString()
    assert Ours(**chosen).SerializeToString() == data
    if "error" not in chosen:
        assert Pb(**chosen).SerializeToString() == data
    assert Ours.FromString(data) == Ours(**chosen)


@pytest.mark.parametrize("cls", [Ours, Pb], ids=["pylm_core", "protobuf"])
def test_defaults_encode_to_nothing(cls):
    m = cls(pipeline="", client="", stage=0, function="", cache="", payload=b"")
    assert m.SerializeToString() == b""
    assert values(m, error=False) == ("", "", 0, "", "", b"")


def test_empty_error_is_not_on_the_wire():
    m = Ours(pipeline="p", error="")
    assert m.SerializeToString() == Pb(pipeline="p").SerializeToString()
    m.error = "x"
    assert m.SerializeToString().endswith(key(15, 2) + b"\x01x")
    m.error = ""
    assert m.SerializeToString() == Pb(pipeline="p").SerializeToString()


# --- decoding what protobuf encodes ---

@big_settings
@given(seven_fields, st.sampled_from([bytes, bytearray, memoryview]))
def test_decode_protobuf_encoding(fields, container):
    data = PbE(**fields).SerializeToString()
    ours = Ours()
    assert ours.ParseFromString(container(data)) == len(data)
    assert values(ours) == values(PbE.FromString(data))
    assert ours.SerializeToString() == data
    # the 6-field protobuf skips our error field and keeps the rest
    assert values(Pb.FromString(data), error=False) == values(ours, error=False)


@big_settings
@given(six_fields)
def test_protobuf_decodes_our_encoding(fields):
    data = Ours(**fields).SerializeToString()
    assert values(Pb.FromString(data), error=False) == values(Ours(**fields), error=False)


# --- hand-made inputs: order, repeats, padding, unknown fields ---

def _encode_item(item, pad):
    name, value = item
    number = NUMBERS[name]
    if name == "stage":                     # varints: 10 bytes at most
        return field_varint(number, value, min(pad, 10 - len(varint(value))))
    data = value if name == "payload" else value.encode()
    return field_bytes(number, data,        # lengths: 5 bytes at most
                       min(pad, 5 - len(varint(len(data)))))


known_items = st.one_of(*[st.tuples(st.just(name), strategy) for name, strategy in
                          dict(FIELD_STRATEGIES, payload=st.binary(max_size=40),
                               error=text).items()])

any_number = st.one_of(st.integers(1, 20), st.integers(1, 2**29 - 1),
                       st.sampled_from([2**29 - 1, 2**28, 2047, 2048, 16]))
unknown_number = any_number.filter(lambda n: n not in NUMBERS.values())
# inside a skipped group even field number 0 is skipped (upb), not an error
in_group_number = st.one_of(st.just(0), any_number)


@st.composite
def unknown_fields(draw, numbers=unknown_number, depth=0):
    """One field protobuf skips: every wire type, groups nested up to 3 deep
    (inside a group, any field number, 0 too, is just skipped)."""
    number = draw(numbers)
    wire_type = draw(st.sampled_from([0, 1, 2, 3, 5] if depth < 3 else [0, 1, 2, 5]))
    if wire_type == 0:
        return field_varint(number, draw(st.integers(0, 2**64 - 1)))
    if wire_type == 1:
        return key(number, 1) + draw(st.binary(min_size=8, max_size=8))
    if wire_type == 5:
        return key(number, 5) + draw(st.binary(min_size=4, max_size=4))
    if wire_type == 2:
        return field_bytes(number, draw(st.binary(max_size=30)))
    inner = draw(st.lists(unknown_fields(in_group_number, depth + 1), max_size=4))
    return group(number, b"".join(inner))


@st.composite
def wrong_wire_type(draw):
    """A known field number with a wire type the schema does not give it:
    protobuf treats it as unknown."""
    name = draw(st.sampled_from(list(NUMBERS)))
    number = NUMBERS[name]
    allowed = [1, 2, 3, 5] if name == "stage" else [0, 1, 3, 5]
    wire_type = draw(st.sampled_from(allowed))
    if wire_type == 0:
        return field_varint(number, draw(st.integers(0, 2**64 - 1)))
    if wire_type == 1:
        return key(number, 1) + draw(st.binary(min_size=8, max_size=8))
    if wire_type == 5:
        return key(number, 5) + draw(st.binary(min_size=4, max_size=4))
    if wire_type == 2:                      # stage as a length-delimited field
        return field_bytes(number, draw(st.binary(max_size=12)))
    inner = draw(st.lists(unknown_fields(in_group_number, 1), max_size=3))
    return group(number, b"".join(inner))


skipped = st.one_of(unknown_fields(), wrong_wire_type()).map(lambda b: ("skip", b))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(known_items, skipped), max_size=25),
       st.integers(0, 9))
@example([("stage", 5), ("stage", 0)], 0)                   # explicit 0 wins
@example([("pipeline", "a"), ("pipeline", "")], 0)          # explicit "" wins
@example([("skip", group(1, field_bytes(1, b"\xff")))], 0)  # not UTF-8, skipped
def test_decode_reordered_repeated_unknown(items, pad):
    """Fields in any order, repeated (the last wins), padded varints, and
    interleaved with unknown and wrong-wire-type fields (skipped)."""
    data = b"".join(tok if kind == "skip" else _encode_item((kind, tok), pad)
                    for kind, tok in items)
    expected = dict(pipeline="", client="", stage=0, function="", cache="",
                    payload=b"", error="")
    for kind, value in items:
        if kind != "skip":
            expected[kind] = value
    want = tuple(expected[name] for name in NUMBERS)
    ours = Ours.FromString(data)
    assert values(ours) == want
    assert values(PbE.FromString(data)) == want
    assert values(Pb.FromString(data), error=False) == want[:6]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(unknown_fields(), max_size=10))
def test_decode_only_unknown_fields(fields):
    data = b"".join(fields)
    assert Ours.FromString(data) == Ours()
    assert Pb.FromString(data).SerializeToString() == data   # protobuf keeps them


# --- arbitrary input: both decoders agree ---

@st.composite
def wireish(draw):
    """Byte strings that look like protobuf: random tags (any number, any of
    the 8 wire types), varints, short and lying lengths, raw bytes."""
    parts = []
    for _ in range(draw(st.integers(0, 12))):
        choice = draw(st.integers(0, 5))
        if choice == 0:
            parts.append(key(draw(st.integers(0, 20)), draw(st.integers(0, 7)),
                             draw(st.sampled_from([0, 0, 0, 1, 4, 5]))))
        elif choice == 1:
            parts.append(varint(draw(st.integers(0, 2**64 - 1)),
                                draw(st.sampled_from([0, 0, 1, 9]))))
        elif choice == 2:
            parts.append(draw(st.binary(max_size=8)))
        elif choice == 3:
            parts.append(field_bytes(draw(st.sampled_from([1, 2, 4, 5, 6, 15, 9])),
                                     draw(st.sampled_from(
                                         [b"ok", b"\xff", b"\xed\xa0\x80",
                                          b"\xf4\x90\x80\x80", b"\xc0\x80",
                                          "\U0010ffff".encode(), b""]))))
        elif choice == 4:
            parts.append(key(draw(st.integers(1, 20)), 3))
        else:
            parts.append(key(draw(st.integers(1, 20)), 4))
    return b"".join(parts)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=64), wireish()))
def test_arbitrary_bytes_agree_with_protobuf(data):
    problem = ref.disagreement(data)
    assert problem is None, problem


# inputs where the two decoders once disagreed, and boundaries around them
EDGE_CASES = {
    "tag 6 bytes": (b"\x88\x80\x80\x80\x80\x00\x05", False),
    "tag 5 bytes": (b"\x88\x80\x80\x80\x00\x05", True),
    "tag max": (b"\xf8\xff\xff\xff\x0f\x00", True),
    "tag over 32 bits": (b"\xf8\xff\xff\xff\x1f\x00", False),
    "length 6 bytes": (b"\x0a\x81\x80\x80\x80\x80\x00a", False),
    "length 5 bytes": (b"\x0a\x81\x80\x80\x80\x00a", True),
    "unknown length 6 bytes": (b"\x3a\x81\x80\x80\x80\x80\x00a", False),
    "group tag 6 bytes": (b"\x3b\x88\x80\x80\x80\x80\x00\x00\x3c", False),
    "stage 10 bytes": (b"\x18" + b"\xff" * 9 + b"\x7f", True),
    "stage 11 bytes": (b"\x18" + b"\xff" * 10 + b"\x01", False),
    "groups 100 deep": (b"\x3b" * 100 + b"\x3c" * 100, True),
    "groups 101 deep": (b"\x3b" * 101 + b"\x3c" * 101, False),
    "end group at top": (b"\x0c", False),
    "group unterminated": (b"\x3b", False),
    "group mismatched": (b"\x3b\x44", False),
    "field 0": (b"\x00", False),
    "field 0 varint in group": (b"\x3b\x00\x05\x3c", True),
    "field 0 bytes in group": (b"\x3b\x02\x01a\x3c", True),
    "field 0 group in group": (b"\x3b\x03\x04\x3c", True),
    "field 0 end group in group": (b"\x3b\x04\x3c", False),
    "field 0 in wrong-type known group": (b"\x0b\x00\x01\x0c", True),
    "wire type 6": (b"\x0e", False),
    "wire type 7": (b"\x0f", False),
    "surrogate in pipeline": (b"\x0a\x03\xed\xa0\x80", False),
    "overlong in client": (b"\x12\x02\xc0\x80", False),
    "past U+10FFFF in cache": (b"\x2a\x04\xf4\x90\x80\x80", False),
    "not UTF-8 in payload": (b"\x32\x01\xff", True),
    "not UTF-8 in unknown": (b"\x3a\x01\xff", True),
    "length 2**32": (b"\x32\x80\x80\x80\x80\x10", False),
    "truncated fixed64": (b"\x39\x00", False),
    "truncated fixed32 in group": (b"\x3b\x0d\x00", False),
}


@pytest.mark.parametrize("data,accepted", EDGE_CASES.values(), ids=EDGE_CASES.keys())
def test_edge_cases_agree(data, accepted):
    assert (ref.decode_protobuf(PbE, data) is not None) == accepted
    problem = ref.disagreement(data)
    assert problem is None, problem


BAD_UTF8 = [b"\x80", b"\xc0\x80", b"\xc3", b"\xe0\x9f\xbf", b"\xed\xa0\x80",
            b"\xf0\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80",
            b"\xff", b"\xe2\x82"]
GOOD_UTF8 = ["é", "€", "😀", "\U0010ffff", "\ud7ff", "\ue000"]


@pytest.mark.parametrize("prefix", range(0, 18))
@pytest.mark.parametrize("suffix", range(0, 10))
def test_utf8_check_at_every_offset(prefix, suffix):
    """Bad and good sequences at every position around the 8-byte ASCII
    steps of the UTF-8 check, in each string field."""
    for number in (1, 2, 4, 5, 15):
        for bad in BAD_UTF8:
            data = field_bytes(number, b"a" * prefix + bad + b"b" * suffix)
            assert ref.decode_ours(data)[0] is None
            assert ref.disagreement(data) is None
        for good in GOOD_UTF8:
            text = "a" * prefix + good + "b" * suffix
            assert ref.decode_ours(field_bytes(number, text.encode()))[0] is not None


def test_error_field_not_utf8_is_the_one_difference():
    """Field 15 is pylm's `error`: we check its UTF-8, protobuf's 6-field
    class skips it as an unknown field."""
    data = field_bytes(1, b"p") + field_bytes(15, b"\xff")
    with pytest.raises(DecodeError, match="'error' is not valid UTF-8"):
        Ours.FromString(data)
    assert Pb.FromString(data).pipeline == "p"
    with pytest.raises(ref.ProtobufDecodeError):
        PbE.FromString(data)


def test_unknown_fields_are_dropped_on_reencode():
    """A known difference, by design (shared/API.md: unknown fields are
    skipped): protobuf keeps unknown fields and writes them back, we do not."""
    data = field_bytes(1, b"p") + field_varint(9, 7)
    assert Pb.FromString(data).SerializeToString() == data
    assert Ours.FromString(data).SerializeToString() == field_bytes(1, b"p")


# --- the Python object, on both classes ---

@pytest.fixture(params=[Ours, Pb], ids=["pylm_core", "protobuf"])
def cls(request):
    return request.param


@pytest.mark.parametrize("name,value,exc", [
    ("payload", "text", TypeError),
    ("payload", None, TypeError),
    ("payload", 5, TypeError),
    ("stage", "1", TypeError),
    ("stage", 1.0, TypeError),
    ("stage", True, TypeError),
    ("stage", None, TypeError),
    ("stage", 2**63, ValueError),
    ("stage", INT64_MIN - 1, ValueError),
    ("stage", 2**64, ValueError),
    ("stage", np.uint64(2**63), ValueError),
    ("pipeline", 1, TypeError),
    ("pipeline", None, TypeError),
    ("client", b"\xff", ValueError),        # bytes that are not UTF-8
    ("function", "\ud800", ValueError),     # a lone surrogate has no UTF-8
])
def test_attribute_errors(cls, name, value, exc):
    m = cls(pipeline="keep", stage=4, payload=b"keep")
    before = values(m, error=False)
    with pytest.raises(exc):
        setattr(m, name, value)
    assert values(m, error=False) == before
    assert m.SerializeToString() == Pb(pipeline="keep", stage=4,
                                       payload=b"keep").SerializeToString()


def test_constructor_takes_keywords_only(cls):
    with pytest.raises(TypeError):
        cls("pipeline")
    with pytest.raises((TypeError, ValueError)):
        cls(no_such_field="x")
    m = cls(pipeline="p", client="c", stage=-3, function="f", cache="k", payload=b"x")
    assert values(m, error=False) == ("p", "c", -3, "f", "k", b"x")


@pytest.mark.parametrize("value", [np.int64(7), np.uint8(7), np.int32(7)])
def test_stage_takes_any_integer(cls, value):
    m = cls()
    m.stage = value
    assert m.stage == 7 and type(m.stage) is int


def test_string_fields_take_utf8_bytes(cls):
    m = cls()
    m.client = "é".encode()
    assert m.client == "é" and type(m.client) is str


def test_stage_increment(cls):
    m = cls.FromString(Pb(function="a.f b.g", stage=0).SerializeToString())
    m.stage += 1
    assert m.stage == 1
    assert Pb.FromString(m.SerializeToString()).stage == 1
    m.stage = -2
    m.stage += 1
    assert m.SerializeToString() == Pb(function="a.f b.g", stage=-1).SerializeToString()
    m.stage = INT64_MAX
    with pytest.raises(ValueError):
        m.stage += 1
    assert m.stage == INT64_MAX


@pytest.mark.parametrize("container", [bytes, bytearray, memoryview])
def test_parse_returns_length_and_replaces_fields(cls, container):
    data = Pb(client="c", stage=3, payload=b"xyz").SerializeToString()
    m = cls(pipeline="old", function="old", payload=b"old")
    assert m.ParseFromString(container(data)) == len(data)
    assert values(m, error=False) == ("", "c", 3, "", "", b"xyz")
    assert m.ParseFromString(b"") == 0
    assert values(m, error=False) == ("", "", 0, "", "", b"")


@pytest.mark.parametrize("data", ["text", None, 5])
def test_parse_needs_bytes(cls, data):
    with pytest.raises(TypeError):
        cls().ParseFromString(data)


def test_equality(cls):
    a = cls(pipeline="p", stage=2, payload=b"x")
    b = cls.FromString(a.SerializeToString())
    assert a == b and not a != b
    b.stage += 1
    assert a != b
    assert a != "p" and a != None  # noqa: E711
    with pytest.raises(TypeError):
        hash(a)


def test_clear(cls):
    m = cls(pipeline="p", client="c", stage=9, function="f", cache="k", payload=b"x")
    m.Clear()
    assert values(m, error=False) == ("", "", 0, "", "", b"")
    assert m.SerializeToString() == b""


def test_copy_from(cls):
    src = cls(pipeline="p", stage=5, payload=b"y" * 100)
    dst = cls(client="other")
    dst.CopyFrom(src)
    assert dst == src and dst.client == ""


# --- pylm_core only ---

def test_same_class_as_messages_pb2():
    from pylm.parts.messages_pb2 import PalmMessage
    assert PalmMessage is Ours
    assert issubclass(DecodeError, ValueError)
    assert pylm_core.DecodeError is DecodeError


@pytest.mark.parametrize("make", [
    bytearray, memoryview, lambda b: memoryview(b"__" + b + b"__")[2:-2],
    lambda b: np.frombuffer(b, dtype=np.uint8).copy(),
    lambda b: np.frombuffer(b, dtype=np.uint8).reshape(4, -1),
    lambda b: np.frombuffer(b, dtype=np.float64).copy(),
], ids=["bytearray", "memoryview", "memoryview-slice", "numpy-uint8",
        "numpy-2d", "numpy-float64"])
@pytest.mark.parametrize("size", [64, 70000])
def test_bytes_like_payload_encodes_like_bytes(make, size):
    raw = _random_bytes(size, size)
    obj = make(raw)
    m = Ours(pipeline="p", payload=obj)
    expected = Pb(pipeline="p", payload=raw).SerializeToString()
    assert m.SerializeToString() == expected
    assert m.ByteSize() == len(expected)
    assert bytes(m.payload_view) == raw
    assert pickle.loads(pickle.dumps(m)) == Ours(pipeline="p", payload=raw)


def test_strided_payload_rejected_on_assignment():
    m = Ours(payload=b"keep")
    with pytest.raises((ValueError, BufferError)):
        m.payload = np.arange(8, dtype=np.uint8)[::2]
    assert m.payload == b"keep"


def _address(buf):
    return np.frombuffer(buf, dtype=np.uint8).ctypes.data


@pytest.mark.parametrize("size,is_view", [(65535, False), (65536, True), (MiB, True)])
def test_large_payload_is_a_view(size, is_view):
    payload = _random_bytes(size, 7)
    data = Pb(pipeline="p", client="c", payload=payload, stage=1).SerializeToString()
    before = sys.getrefcount(data)
    m = Ours.FromString(data)
    view = m.payload_view
    assert isinstance(view, memoryview) and view.readonly
    assert bytes(view) == payload and len(view) == size
    if is_view:
        assert view.obj is data
        assert _address(view) - _address(data) == len(data) - size
        assert m.SerializeToString() == data          # re-encodes from the view
        assert pickle.loads(pickle.dumps(m)) == m
        assert repr(m).startswith("PalmMessage(pipeline='p'")
        assert m.payload_view.obj is data              # repr did not copy
        copied = Ours()
        copied.CopyFrom(m)
        assert copied.payload_view.obj is data
        del copied
    else:
        assert view.obj is not data
    del view
    materialized = m.payload                           # bytes, copied once
    assert type(materialized) is bytes and materialized == payload
    assert m.payload is materialized
    assert m.payload_view.obj is materialized
    del m, materialized
    assert sys.getrefcount(data) == before             # the view let go


def test_large_payload_from_mutable_buffer_is_copied():
    payload = b"z" * (2 * 65536)
    source = bytearray(Pb(payload=payload).SerializeToString())
    m = Ours.FromString(source)
    source[-1:] = b"!"
    assert m.payload == payload


@pytest.mark.parametrize("data,words", [
    (b"\x0a\x05ab", ["4 bytes", "runs past the end"]),
    (b"\x18\xff", ["varint"]),
    (b"\x88\x80\x80\x80\x80\x00\x05", ["varint"]),
    (b"\x0f", ["wire type"]),
    (b"\x00", ["field number 0"]),
    (b"\x3b", ["group"]),
    (b"\x3b" * 101 + b"\x3c" * 101, ["nested too deeply"]),
    (b"\x39\x00", ["fixed"]),
    (b"\x0a\x01\xff", ["'pipeline'", "UTF-8"]),
    (b"\x12\x01\xff", ["'client'", "UTF-8"]),
    (b"\x22\x01\xff", ["'function'", "UTF-8"]),
    (b"\x2a\x01\xff", ["'cache'", "UTF-8"]),
    (b"\x7a\x01\xff", ["'error'", "UTF-8"]),
])
def test_decode_error_names_the_problem(data, words):
    with pytest.raises(DecodeError) as info:
        Ours.FromString(data)
    assert isinstance(info.value, ValueError)
    for word in words:
        assert word in str(info.value)


def test_refcounts_unchanged_by_encode_and_decode():
    """Cython reference leaks show up as growing refcounts (style.md 13c)."""
    small = Pb(pipeline="p" * 10, client="c", stage=-5, function="s.m",
               cache="k", payload=b"x" * 100).SerializeToString()
    large = Pb(pipeline="p", payload=b"y" * 70000).SerializeToString()
    bad = b"\x0a\x01\xff"
    pipeline, payload, big_payload = "pipé", b"pay" * 10, bytearray(70000)
    inputs = [small, large, bad, pipeline, payload, big_payload]
    before = [sys.getrefcount(x) for x in inputs]
    for _ in range(5000):
        m = Ours.FromString(small)
        m.stage += 1
        m.SerializeToString()
        Ours.FromString(large).SerializeToString()
        m = Ours(pipeline=pipeline, payload=payload, stage=1)
        m.SerializeToString()
        m.payload = big_payload
        m.SerializeToString()
        try:
            Ours.FromString(bad)
        except DecodeError:
            pass
    del m
    assert [sys.getrefcount(x) for x in inputs] == before


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_and_copy(protocol):
    m = Ours(pipeline="p", client="\U0001f600", stage=INT64_MIN, function="a.b",
             cache="k", payload=b"\x00\xff" * 10, error="E: x\ntb")
    for clone in (pickle.loads(pickle.dumps(m, protocol)), copy.copy(m),
                  copy.deepcopy(m)):
        assert type(clone) is Ours and clone == m and clone is not m
        assert clone.SerializeToString() == m.SerializeToString()


def test_repr():
    assert repr(Ours()) == "PalmMessage()"
    m = Ours(pipeline="p", stage=-1, function="a.b", payload=b"abc")
    assert repr(m) == "PalmMessage(pipeline='p', stage=-1, function='a.b', payload=b'abc')"
    m = Ours(payload=bytes(range(100)), error="E: x")
    text = repr(m)
    assert "error='E: x'" in text and "(100 bytes)" in text
    assert len(text) < 250


# --- the calls a job sends ---

@settings(deadline=None, max_examples=40)
@given(pipeline=text, client=text, function=text.filter(bool), cache=text,
       payloads=st.lists(st.one_of(st.binary(max_size=300),
                                   st.binary(max_size=20).map(bytearray)),
                         min_size=1, max_size=4),
       call=st.sampled_from([0, 1, 127, 128, 123456, 2**40, 2**63 - 1]))
def test_job_batch_is_the_reference_encoding(pipeline, client, function, cache,
                                             payloads, call):
    """JobStream writes each call of a batch from a prefix encoded once
    (wire.h pz_batch_add_call); the envelopes must be the canonical
    encoding of the same fields, flags and call id, whatever the payload
    type (bytes take the fast path, others the buffer protocol)."""
    import zmq
    ctx = zmq.Context.instance()
    pull, push, sub = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH), ctx.socket(zmq.SUB)
    try:
        # a name of its own per example: a closed socket's inproc name is
        # released by libzmq later, and id() is reused at once
        address = "inproc://job-batch-%s" % uuid.uuid4().hex
        pull.bind(address)
        push.connect(address)
        stream = _core.JobStream(
            push, _core.ReplyReader(sub), iter(payloads), pipeline.encode(),
            client.encode(), function.encode(), cache.encode(), len(payloads),
            batch=True, timeout=0, call=call)
        with pytest.raises(TimeoutError):   # no server: the calls are sent, no reply
            next(stream)
        assert pull.poll(5000)
        mark, frame = pull.recv_multipart()
        assert mark == _core.BATCH_MARK
        assert ref.unbatch(frame) == [
            Pb(pipeline=pipeline, client=client, function=function, cache=cache,
               payload=bytes(p)).SerializeToString()
            + field_varint(16, 1) + (field_varint(17, call) if call else b"")
            for p in payloads]
    finally:
        for s in (pull, push, sub):
            s.close(linger=0)
