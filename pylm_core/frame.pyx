# A received libzmq message owned by Python.


cdef class Frame:
    """One received libzmq message, exposed read-only through the buffer
    protocol so that large payloads are views, not copies."""

    def __cinit__(self):
        pz_msg_init(&self.msg)

    def __dealloc__(self):
        pz_msg_close(&self.msg)

    def __len__(self):
        return pz_msg_size(&self.msg)

    def __getbuffer__(self, Py_buffer *view, int flags):
        PyBuffer_FillInfo(view, self, pz_msg_data(&self.msg),
                          <Py_ssize_t>pz_msg_size(&self.msg), 1, flags)

    def bytes(self):
        """A copy of the frame as bytes."""
        return PyBytes_FromStringAndSize(<char *>pz_msg_data(&self.msg),
                                         <Py_ssize_t>pz_msg_size(&self.msg))
