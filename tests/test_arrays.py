"""pylm.arrays: dumps/loads round trips, views and their read-only flag,
garbage refused with DecodeError (hand-made and fuzzed by hypothesis), and
arrays returned by methods through a Server and a Master with Workers in
child processes."""

import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pylm import arrays
from pylm._testing import in_child, running, stop_all, tcp_addresses
from pylm.arrays import dumps, loads
from pylm.clients import Client
from pylm.errors import DecodeError, RemoteError
from pylm.servers import Master, Server, Worker
from pylm_core import PalmMessage

TIMEOUT = 10  # seconds for any call that should answer
MiB = 1 << 20

NUMERIC = ["?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8",
           "f2", "f4", "f8", "g", "c8", "c16"]


def _same(a, b):
    """Same dtype, shape and bytes (NaNs included)."""
    assert b.dtype == a.dtype
    assert b.shape == a.shape
    assert b.tobytes() == a.tobytes()


def _data_of(buf):
    return np.frombuffer(buf, dtype=np.uint8)


def _sample(dtype, shape=(3, 5)):
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * np.dtype(dtype).itemsize,
                       dtype=np.uint8)
    if np.dtype(dtype).kind == "b":
        raw = raw % 2
    return raw.view(dtype).reshape(shape)


@pytest.mark.parametrize("dtype", NUMERIC + ["<f8", ">f8", ">i4", ">c16", ">u2"])
def test_round_trip_of_every_numeric_dtype_and_byte_order(dtype):
    a = _sample(dtype)
    b = loads(dumps(a))
    assert b.dtype == np.dtype(dtype) and b.dtype.byteorder == np.dtype(dtype).byteorder
    _same(a, b)
    assert b.flags.c_contiguous


@pytest.mark.parametrize("a", [
    np.array(2.5),
    np.array(7, dtype=">i8"),
    np.zeros((0,)),
    np.zeros((3, 0, 2), dtype="c8"),
    np.ones((1,) * 32, dtype=np.int16),
    np.arange(2 ** 6, dtype="u1").reshape((2,) * 6),
    np.zeros(4, dtype=[("a", "<i4"), ("b", ">f8", (2,)), ("c", "S3")]),
    np.array(["2020-01-01", "NaT"], dtype="M8[ms]"),
    np.array(["ab", "c"]),
    np.array([b"xy", b""], dtype="S2"),
], ids=["0-d", "0-d-big-endian", "empty", "empty-3d", "ndim-32", "ndim-6",
        "structured", "datetime", "unicode", "bytes"])
def test_round_trip_of_shapes_and_other_dtypes(a):
    _same(a, loads(dumps(a)))


def test_fortran_order_is_kept_and_not_copied():
    a = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    header, data = arrays._parts(a)
    assert np.shares_memory(data, a)
    b = loads(dumps(a))
    assert b.flags.f_contiguous and not b.flags.c_contiguous
    assert np.array_equal(a, b)


def test_non_contiguous_input_is_copied_to_c_order():
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    a = base[::2, 1::3]
    assert not (a.flags.c_contiguous or a.flags.f_contiguous)
    buf = dumps(a)
    assert not np.shares_memory(_data_of(buf), base)
    b = loads(buf)
    assert b.flags.c_contiguous and np.array_equal(a, b)
    header, data = arrays._parts(a)
    assert not np.shares_memory(data, base)


def test_contiguous_parts_share_the_array_memory():
    a = np.arange(1000.0)
    header, data = arrays._parts(a)
    assert np.shares_memory(data, a)
    assert bytes(header) + data.tobytes() == bytes(dumps(a))
    assert len(header) % 16 == 0


@pytest.mark.parametrize("make", [bytes, bytearray, memoryview,
                                  lambda b: memoryview(bytearray(b))],
                         ids=["bytes", "bytearray", "memoryview", "memoryview-bytearray"])
def test_loads_returns_a_read_only_view_of_the_buffer(make):
    a = np.arange(MiB // 8, dtype=np.float64)
    buf = make(bytes(dumps(a)))
    b = loads(buf)
    assert np.array_equal(a, b)
    assert not b.flags.writeable
    assert np.shares_memory(b, _data_of(buf))
    with pytest.raises(ValueError):
        b[0] = 1.0


def test_unaligned_data_is_copied():
    a = np.arange(100, dtype=np.float64)
    buf = memoryview(b"x" + bytes(dumps(a)))[1:]       # data at an odd address
    b = loads(buf)
    assert np.array_equal(a, b)
    assert b.flags.aligned and not b.flags.writeable
    assert not np.shares_memory(b, _data_of(buf))


def test_a_large_decoded_payload_is_loaded_without_a_copy_when_aligned():
    a = np.arange(MiB // 8, dtype=np.float64)
    received = PalmMessage()
    received.ParseFromString(PalmMessage(payload=dumps(a)).SerializeToString())
    view = received.payload_view
    b = loads(view)
    assert np.array_equal(a, b) and not b.flags.writeable
    start = _data_of(view).ctypes.data + len(arrays._parts(a)[0])
    assert np.shares_memory(b, _data_of(view)) == (start % a.dtype.alignment == 0)


@pytest.mark.parametrize("value", [
    np.array([object(), 1]),
    np.zeros(2, dtype=[("a", "i4"), ("o", "O")]),
    [1.0, 2.0], 3.0, np.float64(1.0), b"bytes", None,
    np.ma.masked_array([1, 2], mask=[0, 1]),
], ids=["object", "structured-with-object", "list", "float", "numpy-scalar", "bytes",
        "None", "masked"])
def test_dumps_refuses_objects_and_non_arrays(value):
    with pytest.raises(TypeError):
        dumps(value)


@pytest.mark.parametrize("value", [3, "a str", None, [b"PLMA"]])
def test_loads_refuses_what_is_not_bytes_like(value):
    with pytest.raises(TypeError):
        loads(value)


def test_every_truncation_raises_decode_error():
    for a in (np.arange(6.0).reshape(2, 3), np.array(1, dtype="i2"),
              np.zeros(2, dtype=[("a", "i4"), ("b", "f8")])):
        buf = bytes(dumps(a))
        for n in range(len(buf)):
            with pytest.raises(DecodeError):
                loads(buf[:n])
        with pytest.raises(DecodeError):
            loads(buf + b"\0")


def _with_fixed(buf, **fields):
    """buf with fields of its fixed header part replaced."""
    names = ["magic", "version", "flags", "ndim", "zero", "length", "tlen", "zero2"]
    values = dict(zip(names, arrays._FIXED.unpack_from(buf)))
    values.update(fields)
    return arrays._FIXED.pack(*(values[n] for n in names)) + buf[arrays._FIXED.size:]


def _with_text(a, text, flags=0):
    """A header for `a`'s shape with dtype text `text`, then a's data."""
    fixed = arrays._FIXED.size + 8 * a.ndim + len(text)
    length = -(-fixed // 16) * 16
    return (arrays._FIXED.pack(b"PLMA", 1, flags, a.ndim, 0, length, len(text), 0)
            + struct.pack("<%dQ" % a.ndim, *a.shape) + text + bytes(length - fixed)
            + a.tobytes())


@pytest.mark.parametrize("change", [
    lambda b, a: b"XXXX" + b[4:],
    lambda b, a: _with_fixed(b, version=2),
    lambda b, a: _with_fixed(b, flags=4),
    lambda b, a: _with_fixed(b, zero=1),
    lambda b, a: _with_fixed(b, ndim=65),
    lambda b, a: _with_fixed(b, length=16),
    lambda b, a: _with_fixed(b, length=2 ** 31),
    lambda b, a: _with_fixed(b, tlen=0),
    lambda b, a: _with_fixed(b, tlen=200),
    lambda b, a: b[:arrays._FIXED.size] + struct.pack("<Q", 2 ** 64 - 1) + b[24:],
    lambda b, a: b[:arrays._FIXED.size] + struct.pack("<Q", 7) + b[24:],
    lambda b, a: _with_text(a, b"|O8"),
    lambda b, a: _with_text(a, b"<f8\xff"),
    lambda b, a: _with_text(a, b"not a dtype"),
    lambda b, a: _with_text(a, b"[('a', '|O')]", flags=2),
    lambda b, a: _with_text(a, b"[" * 3000, flags=2),
    lambda b, a: _with_text(a, b"__import__('os')", flags=2),
    lambda b, a: _with_text(a, b"|V0"),
    lambda b, a: _with_text(a, b"<f4"),
], ids=["magic", "version", "flags", "reserved", "ndim", "short-length", "long-length",
        "no-dtype", "dtype-past-end", "huge-dimension", "wrong-dimension", "object",
        "non-ascii", "bad-dtype", "object-descr", "deep-descr", "code-descr", "void-0",
        "dtype-size-mismatch"])
def test_malformed_headers_raise_decode_error(change):
    a = np.arange(4, dtype=np.float64)
    buf = bytes(dumps(a))
    with pytest.raises(DecodeError):
        loads(change(buf, a))


def test_non_zero_padding_is_refused():
    buf = bytearray(dumps(np.arange(4, dtype=np.float64)))
    buf[31] = 1                                     # in the padding of a 1-d header
    with pytest.raises(DecodeError):
        loads(bytes(buf))


# -- hypothesis ------------------------------------------------------------------

_dtypes = (hnp.boolean_dtypes() | hnp.integer_dtypes(endianness="=")
           | hnp.unsigned_integer_dtypes(endianness="=") | hnp.floating_dtypes(endianness="=")
           | hnp.complex_number_dtypes(endianness="=") | hnp.datetime64_dtypes(endianness="=")
           | hnp.byte_string_dtypes(endianness="=") | hnp.unicode_string_dtypes(endianness="="))
_dtypes = _dtypes.flatmap(lambda d: st.sampled_from([d, d.newbyteorder()]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=hnp.arrays(_dtypes, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4)),
       layout=st.sampled_from(["C", "F", "strided"]))
def test_hypothesis_round_trip(a, layout):
    if layout == "F":
        a = np.asfortranarray(a)
    elif layout == "strided" and a.ndim:
        a = a[..., ::2]
    b = loads(dumps(a))
    assert b.dtype == a.dtype and b.shape == a.shape
    assert b.tobytes() == a.tobytes()
    assert not b.flags.writeable


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=hnp.arrays(hnp.scalar_dtypes(), hnp.array_shapes(min_dims=0, max_dims=3, max_side=3)),
       edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 300)))
def test_hypothesis_garbled_headers_raise_decode_error_or_load(a, edits, cut):
    buf = bytearray(dumps(a))
    for at, value in edits:
        if at < len(buf):
            buf[at] = value
    if cut is not None:
        del buf[cut:]
    try:
        b = loads(bytes(buf))
    except DecodeError:
        return
    assert isinstance(b, np.ndarray) and not b.dtype.hasobject


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200), prefix=st.booleans())
def test_hypothesis_random_bytes_raise_decode_error(data, prefix):
    buf = (b"PLMA\x01" + data) if prefix else data
    try:
        b = loads(buf)
    except DecodeError:
        return
    assert isinstance(b, np.ndarray) and not b.dtype.hasobject


# -- through servers ------------------------------------------------------------

class ArrayServer(Server):
    def sqrt(self, payload):
        return np.sqrt(loads(payload))

    def fortran(self, payload):
        return np.asfortranarray(np.arange(12.0).reshape(3, 4))

    def strided(self, payload):
        return np.arange(20, dtype=">i4")[::3]

    def scalar(self, payload):
        return np.array(1.5, dtype=np.float16)

    def objects(self, payload):
        return np.array([object()])

    def raw(self, payload):
        return bytearray(b"raw bytes")


class StreamArrayServer(ArrayServer):
    """handle_stream overridden: it sees the array's payload as one buffer."""

    def handle_stream(self, message):
        self.seen = loads(message.payload)
        return message.client, message


class ArrayWorker(Worker):
    """Runs in a child process: pickled by reference, so module level."""

    def scale(self, payload):
        a = loads(payload)
        return a * 2.0


@pytest.fixture(scope="module")
def server_client():
    pull, pub, db = tcp_addresses(3)
    server = ArrayServer("arrays", pull_address=pull, pub_address=pub, db_address=db)
    with running(server), Client("arrays", db, timeout=TIMEOUT) as client:
        yield client


@pytest.mark.parametrize("size", [3, MiB // 8])
def test_a_method_returning_an_array_through_a_server(server_client, size):
    x = np.random.default_rng(size).random(size)
    b = loads(server_client.eval("arrays.sqrt", dumps(x), timeout=TIMEOUT))
    assert b.dtype == np.float64 and np.array_equal(b, np.sqrt(x))
    replies = list(server_client.job("arrays.sqrt", [dumps(x)] * 3, timeout=TIMEOUT))
    assert len(replies) == 3
    assert all(np.array_equal(loads(r), np.sqrt(x)) for r in replies)


def test_arrays_of_every_layout_through_a_server(server_client):
    f = loads(server_client.eval("arrays.fortran", b"", timeout=TIMEOUT))
    assert f.flags.f_contiguous and np.array_equal(f, np.arange(12.0).reshape(3, 4))
    s = loads(server_client.eval("arrays.strided", b"", timeout=TIMEOUT))
    assert s.dtype == np.dtype(">i4") and np.array_equal(s, np.arange(20)[::3])
    z = loads(server_client.eval("arrays.scalar", b"", timeout=TIMEOUT))
    assert z.shape == () and z.dtype == np.float16 and z == 1.5
    assert server_client.eval("arrays.raw", b"", timeout=TIMEOUT) == b"raw bytes"


def test_a_method_returning_an_object_array_gets_a_type_error(server_client):
    with pytest.raises(RemoteError) as info:
        server_client.eval("arrays.objects", b"", timeout=TIMEOUT)
    assert info.value.remote_type == "TypeError"
    x = np.arange(4.0)
    assert np.array_equal(loads(server_client.eval("arrays.sqrt", dumps(x), timeout=TIMEOUT)),
                          np.sqrt(x))


def test_an_array_through_handle_stream():
    pull, pub, db = tcp_addresses(3)
    server = StreamArrayServer("sarrays", pull_address=pull, pub_address=pub, db_address=db)
    with running(server), Client("sarrays", db, timeout=TIMEOUT) as client:
        x = np.arange(10.0)
        b = loads(client.eval("sarrays.sqrt", dumps(x), timeout=TIMEOUT))
        assert np.array_equal(b, np.sqrt(x)) and np.array_equal(server.seen, b)


def test_arrays_through_a_master_and_two_worker_processes():
    pull, pub, wpull, wpush, db = tcp_addresses(5)
    master = Master("amaster", pull_address=pull, pub_address=pub,
                    worker_pull_address=wpull, worker_push_address=wpush, db_address=db)
    with running(master):
        procs = [in_child(ArrayWorker, "aw%d" % i, db) for i in range(2)]
        try:
            with Client("amaster", db, timeout=TIMEOUT) as client:
                xs = [np.random.default_rng(i).random(MiB // 8) for i in range(8)]
                replies = list(client.job("amaster.scale", (dumps(x) for x in xs),
                                          timeout=30))
                assert len(replies) == len(xs)
                for x, r in zip(xs, replies):
                    assert np.array_equal(loads(r), x * 2.0)
                small = np.arange(5, dtype=np.float32)
                b = loads(client.eval("amaster.scale", dumps(small), timeout=30))
                assert b.dtype == np.float32 and np.array_equal(b, small * 2)
        finally:
            stop_all(procs)


def test_pylm_without_arrays_does_not_import_numpy():
    code = ("import sys, pylm, pylm.servers, pylm.clients, pylm.parts; "
            "sys.exit('numpy' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
