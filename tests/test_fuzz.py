"""Fuzzing the envelope decoder against protobuf's.

Random byte strings and mutations of valid encodings (bit flips,
truncations, splices, insertions, overwrites with protobuf-significant
bytes) go to pylm_core's decoder and protobuf's (upb), which must agree on
accept/reject and on every value (palm_reference.disagreement).  The short
run is in the default suite; the long one (1,000,000+ inputs) is marked slow
(`make slow`).  The seed is in every failure message; replay one with
PYLM_FUZZ_SEED=<seed>.
"""

import os
import random

import pytest

import palm_reference as ref
from palm_reference import field_bytes, field_varint, group, key, varint

# bytes that mean something to a protobuf parser: continuation bits, wire
# types 3/4/6/7 of small fields, UTF-8 lead and continuation bytes
INTERESTING = bytes([0x00, 0x01, 0x7F, 0x80, 0x81, 0xFF, 0x0A, 0x0B, 0x0C,
                     0x18, 0x32, 0x3B, 0x3C, 0x0E, 0x0F, 0x7A, 0xC0, 0xC2,
                     0xE0, 0xED, 0xF0, 0xF4, 0xF5, 0xBF])
TEXTS = ["", "a", "é", "日本", "😀", "\U0010ffff", "server.method",
         "3f2504e0-4f89-41d3-9a0c-0305e82c3301", "a.b c.d e.f"]


class Rand(random.Random):
    """A seeded random whose repr shows the seed (style.md 13f)."""

    def __init__(self, seed):
        super().__init__(seed)
        self.seed_value = seed

    def __repr__(self):
        return "Rand(seed=%d)  [replay: PYLM_FUZZ_SEED=%d]" % (
            self.seed_value, self.seed_value)


@pytest.fixture
def rand():
    seed = os.environ.get("PYLM_FUZZ_SEED")
    seed = int(seed) if seed else random.SystemRandom().randrange(2**32)
    print("fuzz seed:", seed)          # shown with the output of a failure
    return Rand(seed)


def _valid(r):
    """A valid encoding: protobuf's own for random values (with or without
    the error field), or a hand-made one with reordered, repeated, padded
    and unknown fields."""
    fields = {}
    for name in ("pipeline", "client", "function", "cache", "error"):
        if r.random() < 0.5:
            fields[name] = r.choice(TEXTS)
    if r.random() < 0.5:
        fields["stage"] = r.choice([1, -1, 127, 128, 2**63 - 1, -2**63,
                                    r.randrange(-2**63, 2**63)])
    if r.random() < 0.6:
        fields["payload"] = r.randbytes(r.choice([0, 1, 5, 40, 130, 300]))
    if r.random() < 0.5:
        return ref.PalmMessageWithError(**fields).SerializeToString()
    parts = []
    for name, value in fields.items():
        number = {"pipeline": 1, "client": 2, "stage": 3, "function": 4,
                  "cache": 5, "payload": 6, "error": 15}[name]
        if name == "stage":
            parts.append(field_varint(number, value, r.choice([0, 0, 1])))
        else:
            data = value if name == "payload" else value.encode()
            parts.append(field_bytes(number, data, r.choice([0, 0, 1, 2])))
        if r.random() < 0.2:                     # repeated: the last wins
            parts.append(parts[-1])
    for _ in range(r.choice([0, 0, 1, 2])):
        parts.append(_unknown(r, 0))
    r.shuffle(parts)
    return b"".join(parts)


def _unknown(r, depth):
    number = r.choice([7, 9, 14, 16, 100, 2**29 - 1, 1, 3, 6])
    wire_type = r.choice([0, 1, 2, 5, 3] if depth < 3 else [0, 1, 2, 5])
    if number in (1, 6) and wire_type == 2 or number == 3 and wire_type == 0:
        wire_type = 5                            # a wrong wire type: unknown
    if wire_type == 0:
        return field_varint(number, r.getrandbits(64))
    if wire_type == 1:
        return key(number, 1) + r.randbytes(8)
    if wire_type == 5:
        return key(number, 5) + r.randbytes(4)
    if wire_type == 2:
        return field_bytes(number, r.randbytes(r.randrange(12)))
    return group(number, b"".join(_unknown(r, depth + 1)
                                  for _ in range(r.randrange(3))))


def _mutate(r, data, corpus):
    data = bytearray(data)
    kind = r.randrange(8)
    if kind == 0 and data:                       # bit flips
        for _ in range(r.choice([1, 1, 2, 3])):
            i = r.randrange(len(data))
            data[i] ^= 1 << r.randrange(8)
    elif kind == 1:                              # truncation
        del data[r.randrange(len(data) + 1):]
    elif kind == 2:                              # splice two encodings
        other = r.choice(corpus)
        data = data[:r.randrange(len(data) + 1)] + other[r.randrange(len(other) + 1):]
    elif kind == 3:                              # insert significant bytes
        i = r.randrange(len(data) + 1)
        data[i:i] = bytes(r.choice(INTERESTING) for _ in range(r.randrange(1, 4)))
    elif kind == 4 and data:                     # overwrite one byte
        data[r.randrange(len(data))] = r.choice(INTERESTING)
    elif kind == 5:                              # concatenation = merge
        data += r.choice(corpus)
    elif kind == 6 and data:                     # duplicate or drop a chunk
        i = r.randrange(len(data))
        j = min(len(data), i + r.randrange(1, 8))
        if r.random() < 0.5:
            data[j:j] = data[i:j]
        else:
            del data[i:j]
    else:                                        # an odd tag or varint
        i = r.randrange(len(data) + 1)
        data[i:i] = r.choice([
            key(r.randrange(1, 20), r.randrange(8), r.choice([0, 0, 4, 5])),
            varint(r.getrandbits(r.choice([7, 32, 64])), r.choice([0, 5, 9])),
        ])
    return bytes(data)


def inputs(r, count):
    """`count` fuzz inputs from Rand `r`."""
    corpus = [_valid(r) for _ in range(300)]
    for i in range(count):
        choice = r.random()
        if choice < 0.15:
            yield r.randbytes(r.randrange(48))
        elif choice < 0.25:
            data = _valid(r)
            corpus[i % len(corpus)] = data
            yield data
        else:
            data = r.choice(corpus)
            for _ in range(r.choice([1, 1, 1, 2, 3])):
                data = _mutate(r, data, corpus)
            yield data


def run_fuzz(r, count):
    accepted = 0
    for index, data in enumerate(inputs(r, count)):
        problem = ref.disagreement(data)
        assert problem is None, "%r, input #%d: %s" % (r, index, problem)
        accepted += ref.decode_protobuf(ref.PalmMessageWithError, data) is not None
    # the mix must exercise both outcomes, or the fuzzer tests nothing
    assert 0.1 * count < accepted < 0.9 * count, (r, accepted, count)


def test_fuzz_decoder_short(rand):
    run_fuzz(rand, 20_000)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fuzz_decoder_long(rand):
    run_fuzz(rand, 1_000_000)
