"""numpy arrays as pylm payloads, without pickle.

``dumps(array)`` gives a header (dtype, shape, memory order) followed by
the array's raw data; ``loads(buffer)`` gives the array back as a
read-only view of `buffer` (a copy only when the data is not aligned for
its dtype).  A worker method may return an array directly: the server
sends it in this format with no copy beyond the one every reply gets.

The header, little-endian, a multiple of 16 bytes long so that the data
that follows it keeps the alignment of the buffer (a ``bytes`` object's
data is 16-byte aligned)::

    0   4  magic b"PLMA"
    4   1  version (1)
    5   1  flags: 1 Fortran order, 2 dtype given as a numpy descr literal
    6   1  ndim (at most 64)
    7   1  zero
    8   4  header length (where the data starts)
    12  2  length of the dtype text
    14  2  zero
    16     ndim unsigned 64-bit dimensions, then the dtype text (ASCII:
           ``dtype.str`` with its byte order, or for structured dtypes
           ``repr`` of numpy's descr, read back with ast.literal_eval),
           then zeros up to the header length

This module is the only part of pylm that imports numpy (the ``arrays``
extra: ``pip install 'pylm[arrays]'``).
"""

from __future__ import annotations

import ast
import struct
from typing import Any, Literal, Tuple, Union

try:
    import numpy as np
except ImportError as exc:      # pragma: no cover - numpy is in the test extra
    raise ImportError("pylm.arrays needs numpy: pip install 'pylm[arrays]'") from exc

from pylm.errors import DecodeError

__all__ = ["dumps", "loads"]

MAGIC = b"PLMA"
VERSION = 1
F_ORDER = 1             # flags: the data is in Fortran order
F_DESCR = 2             # flags: the dtype text is a descr literal
ALIGN = 16              # the header length is a multiple of this
MAX_NDIM = 64           # numpy's own limit (NPY_MAXDIMS in numpy 2)
MAX_DTYPE_TEXT = 4096   # a longer dtype text is taken for garbage ...
MAX_NESTING = 100       # ... and so is one with more brackets (literal_eval
                        # must not recurse deeply on garbage)

_FIXED = struct.Struct("<4sBBBBIHH")    # the first 16 bytes above


def _dtype_text(dtype: np.dtype[Any]) -> Tuple[bytes, int]:
    """(text, flags) naming `dtype`: its ``str`` (kind, size and byte
    order), or its descr for a structured dtype, whose ``str`` ('|V16')
    would lose the fields."""
    if dtype.fields is None and dtype.subdtype is None:
        return dtype.str.encode("ascii"), 0
    return repr(np.lib.format.dtype_to_descr(dtype)).encode("ascii"), F_DESCR


def _check(array: object) -> None:
    """TypeError unless dumps can send `array`."""
    if not isinstance(array, np.ndarray):
        raise TypeError("pylm.arrays.dumps takes a numpy array, not %s"
                        % type(array).__name__)
    if isinstance(array, np.ma.MaskedArray):
        raise TypeError("pylm.arrays.dumps: a masked array would lose its mask; "
                        "send its data and mask as two arrays")
    if array.dtype.hasobject:
        raise TypeError("pylm.arrays.dumps: dtype %s holds Python objects, which "
                        "are not sent (no pickle)" % (array.dtype,))
    if array.dtype.itemsize == 0:
        raise TypeError("pylm.arrays.dumps: dtype %s has no size" % (array.dtype,))


def _parts(array: np.ndarray[Any, Any]) -> Tuple[bytes, np.ndarray[Any, np.dtype[np.uint8]]]:
    """The header and data of ``dumps(array)`` as (bytes, C-contiguous
    uint8 array): the data shares `array`'s memory when it is C- or
    Fortran-contiguous, else it is a C-ordered copy.  The server core sends
    the two one after the other when a method returns an array, so that
    they are never joined.  TypeError for what dumps refuses."""
    _check(array)
    flags = 0
    if array.flags.c_contiguous:
        data = array
    elif array.flags.f_contiguous:
        flags = F_ORDER
        data = array.T              # the same memory, C-ordered
    else:
        data = np.ascontiguousarray(array)
    return _header(array.dtype, array.shape, flags), data.reshape(-1).view(np.uint8)


def _header(dtype: np.dtype[Any], shape: Tuple[int, ...], flags: int) -> bytes:
    text, more = _dtype_text(dtype)
    if len(text) > MAX_DTYPE_TEXT:
        raise TypeError("pylm.arrays.dumps: dtype %s is too complex" % (dtype,))
    flags |= more
    fixed = _FIXED.size + 8 * len(shape) + len(text)
    length = -(-fixed // ALIGN) * ALIGN
    return b"".join((_FIXED.pack(MAGIC, VERSION, flags, len(shape), 0, length, len(text), 0),
                     struct.pack("<%dQ" % len(shape), *shape), text,
                     bytes(length - fixed)))


def dumps(array: np.ndarray[Any, Any]) -> Union[bytes, bytearray]:
    """`array` as a bytes-like payload: the header, then its raw data in
    C or Fortran order, whichever it has (any other layout is copied to C
    order).  The data is copied once, into the result; send the array
    from a worker method's return instead and it is not copied at all.
    TypeError for anything but a numpy array, and for dtypes that hold
    Python objects."""
    _check(array)
    if array.flags.c_contiguous or array.flags.f_contiguous:
        header, data = _parts(array)
        return b"".join((header, data.data))
    # one copy, straight from the strided array into the payload
    header = _header(array.dtype, array.shape, 0)
    out = bytearray(len(header) + array.nbytes)
    out[:len(header)] = header
    np.ndarray(array.shape, array.dtype, buffer=out, offset=len(header))[...] = array
    return out


def loads(buffer: Any) -> np.ndarray[Any, Any]:
    """The array in `buffer` (from dumps, or as a worker method's reply):
    a read-only view of `buffer` when its data is aligned for the dtype,
    else a read-only copy.  TypeError when `buffer` is not bytes-like;
    pylm.errors.DecodeError for a malformed or truncated header and for
    data that is not the size the header says."""
    try:
        view = memoryview(buffer)
    except TypeError:
        raise TypeError("pylm.arrays.loads takes a bytes-like object, not %s"
                        % type(buffer).__name__) from None
    try:
        view = view.cast("B")
    except TypeError:
        raise TypeError("pylm.arrays.loads takes a contiguous buffer") from None
    dtype, shape, order, start = _read_header(view)
    count = 1
    for n in shape:
        count *= n
    if len(view) - start != count * dtype.itemsize:
        raise DecodeError("pylm.arrays: %d bytes of data, but the header says %s of %s "
                          "(%d bytes)" % (len(view) - start, shape, dtype,
                                          count * dtype.itemsize))
    try:
        array = np.ndarray(shape, dtype, buffer=view, offset=start, order=order)
    except (ValueError, TypeError) as exc:
        raise DecodeError("pylm.arrays: %s" % (exc,)) from None
    if not array.flags.aligned:
        array = array.copy(order="K")
    array.flags.writeable = False
    return array


def _read_header(view: memoryview) -> Tuple[np.dtype[Any], Tuple[int, ...], Literal["C", "F"],
                                            int]:
    """(dtype, shape, order, data offset) of the header at the start of
    `view` (a byte memoryview); DecodeError when it is not one."""
    if len(view) < _FIXED.size:
        raise DecodeError("pylm.arrays: %d bytes, shorter than a header" % len(view))
    magic, version, flags, ndim, zero, length, tlen, zero2 = _FIXED.unpack_from(view)
    if magic != MAGIC:
        raise DecodeError("pylm.arrays: not an array (magic %r)" % (magic,))
    if version != VERSION:
        raise DecodeError("pylm.arrays: header version %d; this pylm reads %d"
                          % (version, VERSION))
    if flags & ~(F_ORDER | F_DESCR) or zero or zero2:
        raise DecodeError("pylm.arrays: unknown flags in the header")
    if ndim > MAX_NDIM:
        raise DecodeError("pylm.arrays: %d dimensions (at most %d)" % (ndim, MAX_NDIM))
    fixed = _FIXED.size + 8 * ndim + tlen
    if tlen == 0 or tlen > MAX_DTYPE_TEXT or length != -(-fixed // ALIGN) * ALIGN:
        raise DecodeError("pylm.arrays: inconsistent header lengths")
    if length > len(view):
        raise DecodeError("pylm.arrays: truncated header (%d of %d bytes)"
                          % (len(view), length))
    shape = struct.unpack_from("<%dQ" % ndim, view, _FIXED.size)
    if any(n > np.iinfo(np.intp).max for n in shape):
        raise DecodeError("pylm.arrays: a dimension is too large")
    if any(view[fixed:length]):
        raise DecodeError("pylm.arrays: the header's padding is not zero")
    dtype = _read_dtype(bytes(view[fixed - tlen:fixed]), flags)
    return dtype, shape, "F" if flags & F_ORDER else "C", length


def _read_dtype(raw: bytes, flags: int) -> np.dtype[Any]:
    try:
        text = raw.decode("ascii")
        if text.count("(") + text.count("[") > MAX_NESTING:
            raise ValueError("nested too deeply")
        if flags & F_DESCR:
            dtype = np.lib.format.descr_to_dtype(ast.literal_eval(text))
        else:
            dtype = np.dtype(text)
    except Exception as exc:    # whatever the text makes numpy or literal_eval raise
        raise DecodeError("pylm.arrays: bad dtype in the header (%s: %s)"
                          % (type(exc).__name__, exc)) from None
    if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.itemsize == 0:
        raise DecodeError("pylm.arrays: dtype %r cannot be sent" % (text,))
    return dtype
