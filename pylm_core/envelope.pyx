# The PALM envelope as a Python object (pylm.parts.messages_pb2.PalmMessage).
# Wire work is done by wire.h; this file only moves values between Python
# objects and pz_env slices.

cdef Py_ssize_t VIEW_THRESHOLD = 65536   # payloads this big stay views on decode

cdef dict _DECODE_REASONS = {
    PZ_E_VARINT: "truncated or over-long varint",
    PZ_E_FIELD0: "invalid tag (field number 0 or tag wider than 32 bits)",
    PZ_E_WIRETYPE: "invalid wire type (6 or 7)",
    PZ_E_LENGTH: "length-delimited field runs past the end of the buffer",
    PZ_E_FIXED: "truncated fixed-width field",
    PZ_E_UTF8: "string field is not valid UTF-8",
    PZ_E_GROUP: "unbalanced or mismatched group",
    PZ_E_DEPTH: "groups nested too deeply",
}

cdef str _FIELD_NAMES_BY_NUMBER(int number):
    return {1: "pipeline", 2: "client", 4: "function", 5: "cache",
            15: "error"}.get(number, str(number))


cdef int _raise_decode(int rc, pz_env *env, Py_ssize_t size) except -1:
    reason = _DECODE_REASONS.get(rc, "malformed envelope")
    if rc == PZ_E_UTF8:
        reason = "field %r is not valid UTF-8" % _FIELD_NAMES_BY_NUMBER(env.bad_field)
    raise DecodeError("not a PALM envelope (%d bytes): %s" % (size, reason))


cdef inline int parse_or_raise(const char *buf, size_t n, pz_env *env) except -1:
    cdef int rc
    # Parsing costs about a nanosecond per byte of the string fields (UTF-8
    # checks); releasing and taking back the GIL costs more than that for
    # a typical envelope, so only big inputs parse without it.
    if n >= <size_t>VIEW_THRESHOLD:
        with nogil:
            rc = pz_parse(buf, n, env)
    else:
        rc = pz_parse(buf, n, env)
    if rc != PZ_OK:
        _raise_decode(rc, env, <Py_ssize_t>n)
    return 0


cdef inline str _slice_str(pz_slice s):
    if s.n == 0:
        return ""
    return PyUnicode_DecodeUTF8(s.p, <Py_ssize_t>s.n, NULL)


# Lazy decoding.  from_env keeps the slices of the fields that lie in an
# immutable owner (bytes, or a Frame) and makes a field's str or bytes only
# when it is read; to_env writes the slices of fields never read or set back
# as they came.  The UTF-8 of every string field was checked by pz_parse, so
# decoding later cannot fail.  _client and _error are decoded at once:
# worker_pool.pyx reads those attributes directly (an empty error costs nothing).

cdef inline bint _inside(pz_slice s, const char *base, size_t size) noexcept:
    """s lies within base[0:size] (base NULL: there is no owner)."""
    return (base != NULL and <uintptr_t>s.p >= <uintptr_t>base
            and <uintptr_t>s.p + s.n <= <uintptr_t>base + size)


cdef inline object _lazy_str(pz_slice s, const char *base, size_t size):
    """The str of s, or None to leave it undecoded in the owner."""
    if s.n == 0:
        return ""
    if _inside(s, base, size):
        return None
    return PyUnicode_DecodeUTF8(s.p, <Py_ssize_t>s.n, NULL)


cdef inline const char *_owner_data(object owner, size_t *size) noexcept:
    """The bytes of an owner (bytes or Frame); NULL for anything else."""
    if type(owner) is bytes:
        size[0] = <size_t>PyBytes_GET_SIZE(owner)
        return PyBytes_AS_STRING(owner)
    if type(owner) is Frame:
        size[0] = pz_msg_size(&(<Frame>owner).msg)
        return <const char *>pz_msg_data(&(<Frame>owner).msg)
    size[0] = 0
    return NULL


cdef inline int _out_str(object value, pz_slice *raw, pz_slice *out) except -1:
    """A string field for to_env: its slice as received while undecoded."""
    if value is None:
        out[0] = raw[0]
        return 0
    return _str_slice(value, out)


cdef int _let_go(PalmMessage m) except -1:
    """Decode the string fields still in the owner and drop it, so that a
    big received buffer is not kept alive (the payload must be decoded or
    replaced already)."""
    if m._pipeline is None:
        m._pipeline = _slice_str(m._raw[PZ_F_PIPELINE])
    if m._function is None:
        m._function = _slice_str(m._raw[PZ_F_FUNCTION])
    if m._cache is None:
        m._cache = _slice_str(m._raw[PZ_F_CACHE])
    m._owner = None
    return 0


cdef inline object _check_str(object value, str field):
    if isinstance(value, str):
        # Fail here, as protobuf does, on a str that has no UTF-8 form (lone
        # surrogates), not later in SerializeToString; the UTF-8 form is
        # cached in the str and reused by the encoder.
        PyUnicode_AsUTF8AndSize(value, NULL)
        return value
    if isinstance(value, bytes):
        try:
            return (<bytes>value).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("%s: bytes are not valid UTF-8" % field) from None
    raise TypeError("%s must be str, not %s" % (field, type(value).__name__))


cdef inline int _str_slice(object value, pz_slice *s) except -1:
    cdef Py_ssize_t n
    s.p = PyUnicode_AsUTF8AndSize(value, &n)
    s.n = <size_t>n
    return 0


cdef object check_payload(object value):
    """bytes pass through; other bytes-like objects (memoryview, bytearray,
    numpy arrays) are kept as they are and read through the buffer protocol
    when encoded; anything else is a TypeError."""
    if type(value) is bytes:
        return value
    cdef Py_buffer buf
    if isinstance(value, str) or not PyObject_CheckBuffer(value):
        raise TypeError("payload must be bytes or a bytes-like object, not %s"
                        % type(value).__name__)
    # A buffer that cannot be read as one contiguous block (a strided numpy
    # view) fails here rather than in SerializeToString.
    PyObject_GetBuffer(value, &buf, PyBUF_SIMPLE)
    PyBuffer_Release(&buf)
    return value


cdef inline void _reset(PalmMessage m):
    """Every field back to its default (Clear, and new objects)."""
    m._pipeline = m._client = m._function = m._cache = ""
    m._error = ""
    m._payload = b""
    m._owner = None
    m._stage = 0
    m._flags = 0
    m._call = 0


@cython.freelist(64)
cdef class PalmMessage:
    """The PALM envelope: six protobuf fields (pipeline, client, stage,
    function, cache, payload) plus pylm's own `error`, encoded exactly as
    protobuf encodes `PalmMessage`.

    Drop-in for pylm 0.14's generated class: mutable attributes,
    ``SerializeToString()``, ``ParseFromString(data)``; keyword arguments to
    the constructor set fields.  Decoding is lazy, as protobuf's: a decoded
    message keeps the received buffer and makes the str or bytes of a field
    when it is first read; fields never read are re-encoded from the buffer.
    A decoded payload of 64 KiB or more stays a view of the received buffer
    until ``payload`` is read (``payload_view`` never copies).
    """

    def __init__(self, *, pipeline=None, client=None, stage=None, function=None,
                 cache=None, payload=None, error=None):
        if pipeline is not None: self.pipeline = pipeline
        if client is not None: self.client = client
        if stage is not None: self.stage = stage
        if function is not None: self.function = function
        if cache is not None: self.cache = cache
        if payload is not None: self.payload = payload
        if error is not None: self.error = error

    def __cinit__(self):
        # tp_new left every object field None and _raw zeroed: pipeline,
        # function, cache and payload undecoded and empty, which is their
        # default; _client and _error are always str.
        self._client = self._error = ""

    property pipeline:
        def __get__(self):
            if self._pipeline is None:
                self._pipeline = _slice_str(self._raw[PZ_F_PIPELINE])
            return self._pipeline
        def __set__(self, value): self._pipeline = _check_str(value, "pipeline")

    property client:
        def __get__(self): return self._client
        def __set__(self, value): self._client = _check_str(value, "client")

    property function:
        def __get__(self):
            if self._function is None:
                self._function = _slice_str(self._raw[PZ_F_FUNCTION])
            return self._function
        def __set__(self, value): self._function = _check_str(value, "function")

    property cache:
        def __get__(self):
            if self._cache is None:
                self._cache = _slice_str(self._raw[PZ_F_CACHE])
            return self._cache
        def __set__(self, value): self._cache = _check_str(value, "cache")

    property error:
        """pylm's field 15: a failed call's error, the JSON of
        pylm_core.errors.RemoteError.to_wire (type, message, traceback)."""
        def __get__(self): return self._error
        def __set__(self, value): self._error = _check_str(value, "error")

    property stage:
        def __get__(self): return self._stage
        def __set__(self, value):
            if type(value) is not int:
                # like protobuf: any integer with __index__ (numpy ints), no bool
                if isinstance(value, bool):
                    raise TypeError("stage must be int, not bool")
                try:
                    value = PyNumber_Index(value)
                except TypeError:
                    raise TypeError("stage must be int, not %s"
                                    % type(value).__name__) from None
            try:
                self._stage = value     # C conversion: OverflowError past int64
            except OverflowError:
                raise ValueError("stage %d is out of the int64 range" % value) from None

    property payload:
        def __get__(self):
            cdef pz_slice s
            if self._payload is None:
                s = self._raw[PZ_F_PAYLOAD]
                self._payload = PyBytes_FromStringAndSize(s.p, <Py_ssize_t>s.n)
                if <Py_ssize_t>s.n >= VIEW_THRESHOLD:
                    _let_go(self)       # the view lets go of the buffer
            return self._payload
        def __set__(self, value):
            cdef size_t size
            value = check_payload(value)
            self._payload = value
            if self._owner is not None:
                _owner_data(self._owner, &size)
                if size >= <size_t>VIEW_THRESHOLD:
                    _let_go(self)

    property payload_view:
        """The payload as a read-only memoryview, without a copy."""
        def __get__(self):
            cdef pz_slice s
            cdef size_t size
            cdef Py_ssize_t off
            if self._payload is None:
                s = self._raw[PZ_F_PAYLOAD]
                if <Py_ssize_t>s.n < VIEW_THRESHOLD:
                    return memoryview(self.payload).toreadonly()
                off = s.p - _owner_data(self._owner, &size)
                return memoryview(self._owner)[off:off + <Py_ssize_t>s.n]
            return memoryview(self._payload).toreadonly()

    cdef int to_env(self, pz_env *env, Py_buffer *payload_buf) except -1:
        """Fill env from the fields.  Returns 1 when payload_buf was acquired
        (the caller releases it once env is no longer used), else 0."""
        _out_str(self._pipeline, &self._raw[PZ_F_PIPELINE], &env.f[PZ_F_PIPELINE])
        _str_slice(self._client, &env.f[PZ_F_CLIENT])
        _out_str(self._function, &self._raw[PZ_F_FUNCTION], &env.f[PZ_F_FUNCTION])
        _out_str(self._cache, &self._raw[PZ_F_CACHE], &env.f[PZ_F_CACHE])
        _str_slice(self._error, &env.f[PZ_F_ERROR])
        env.stage = self._stage
        env.flags = self._flags
        env.call = self._call
        env.lost = 0          # the Master's own count, never carried by messages
        if self._payload is None:
            env.f[PZ_F_PAYLOAD] = self._raw[PZ_F_PAYLOAD]
        elif type(self._payload) is bytes:
            env.f[PZ_F_PAYLOAD].p = PyBytes_AS_STRING(self._payload)
            env.f[PZ_F_PAYLOAD].n = <size_t>PyBytes_GET_SIZE(self._payload)
        else:
            PyObject_GetBuffer(self._payload, payload_buf, PyBUF_SIMPLE)
            env.f[PZ_F_PAYLOAD].p = <const char *>payload_buf.buf
            env.f[PZ_F_PAYLOAD].n = <size_t>payload_buf.len
            return 1
        return 0

    cdef int from_env(self, pz_env *env, object owner) except -1:
        """Take the fields of a parsed env.  Slices that lie in owner, when
        it is bytes or a Frame (immutable), are kept undecoded with a
        reference to owner; anything else (owner None: memory that goes
        away) is copied now."""
        cdef size_t size
        cdef const char *base = _owner_data(owner, &size)
        cdef pz_slice s = env.f[PZ_F_PAYLOAD]
        self._raw = env.f
        self._pipeline = _lazy_str(env.f[PZ_F_PIPELINE], base, size)
        self._client = _slice_str(env.f[PZ_F_CLIENT])
        self._function = _lazy_str(env.f[PZ_F_FUNCTION], base, size)
        self._cache = _lazy_str(env.f[PZ_F_CACHE], base, size)
        self._error = _slice_str(env.f[PZ_F_ERROR])
        self._stage = env.stage
        self._flags = env.flags
        self._call = env.call
        if s.n == 0:
            self._payload = b""
        elif type(owner) is bytes and s.p == base and s.n == size:
            self._payload = owner       # the owner is the payload (executor.pyx)
        elif _inside(s, base, size):
            self._payload = None
        else:
            self._payload = PyBytes_FromStringAndSize(s.p, <Py_ssize_t>s.n)
        if (self._payload is None or self._pipeline is None
                or self._function is None or self._cache is None):
            self._owner = owner
        else:
            self._owner = None
        return 0

    def SerializeToString(self, **kwargs):
        """The protobuf encoding of the envelope (fields in number order,
        defaults omitted), as bytes."""
        cdef pz_env env
        cdef Py_buffer pbuf
        cdef bytes out
        cdef int held = self.to_env(&env, &pbuf)
        try:
            out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>pz_encoded_size(&env))
            pz_encode(&env, PyBytes_AS_STRING(out))
        finally:
            if held:
                PyBuffer_Release(&pbuf)
        return out

    def ParseFromString(self, data):
        """Replace every field with those decoded from `data` (any
        bytes-like object); returns the number of bytes read.  Raises
        pylm_core.errors.DecodeError for anything that is not an envelope.
        The message keeps a reference to bytes or a Frame (fields are
        decoded when read); other buffers may change, so they are copied."""
        cdef Py_buffer buf
        cdef pz_env env
        cdef size_t n
        cdef const char *p = _owner_data(data, &n)
        if p != NULL:               # bytes or a Frame: no buffer export
            parse_or_raise(p, n, &env)
            self.from_env(&env, data)
            return <Py_ssize_t>n
        if isinstance(data, str) or not PyObject_CheckBuffer(data):
            raise TypeError("expected a bytes-like object, not %s" % type(data).__name__)
        PyObject_GetBuffer(data, &buf, PyBUF_SIMPLE)
        try:
            if buf.len >= VIEW_THRESHOLD:
                # a big payload would be copied twice (the buffer, then the
                # payload when read): copy the fields alone, now
                parse_or_raise(<const char *>buf.buf, <size_t>buf.len, &env)
                self.from_env(&env, None)
                return buf.len
            data = PyBytes_FromStringAndSize(<const char *>buf.buf, buf.len)
        finally:
            PyBuffer_Release(&buf)
        parse_or_raise(PyBytes_AS_STRING(data), <size_t>PyBytes_GET_SIZE(data), &env)
        self.from_env(&env, data)
        return PyBytes_GET_SIZE(data)

    @classmethod
    def FromString(cls, data):
        """A new envelope decoded from data."""
        msg = cls()
        msg.ParseFromString(data)
        return msg

    def ByteSize(self):
        cdef pz_env env
        cdef Py_buffer pbuf
        if self.to_env(&env, &pbuf):
            PyBuffer_Release(&pbuf)
        return pz_encoded_size(&env)

    def Clear(self):
        _reset(self)

    def CopyFrom(self, PalmMessage other):
        self._pipeline = other._pipeline
        self._client = other._client
        self._function = other._function
        self._cache = other._cache
        self._error = other._error
        self._stage = other._stage
        self._flags = other._flags
        self._call = other._call
        self._payload = other._payload
        self._owner = other._owner
        self._raw = other._raw

    def _fields(self):
        return (self.pipeline, self._client, self._stage, self.function,
                self.cache, bytes(self.payload_view), self._error)

    def __eq__(self, other):
        if not isinstance(other, PalmMessage):
            return NotImplemented
        return self._fields() == (<PalmMessage>other)._fields()

    def __reduce__(self):
        return (type(self).FromString, (self.SerializeToString(),))

    def __repr__(self):
        parts = []
        for name in ("pipeline", "client", "stage", "function", "cache", "error"):
            value = getattr(self, name)
            if value:
                parts.append("%s=%r" % (name, value))
        n = len(self.payload_view)
        if n:
            head = bytes(self.payload_view[:32])
            parts.append("payload=%r%s" % (head, "...(%d bytes)" % n if n > 32 else ""))
        return "PalmMessage(%s)" % ", ".join(parts)

    __hash__ = None
