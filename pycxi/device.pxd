from pycxi.libcxi cimport cxil_dev, cxil_lni, cxil_domain, cxi_cp


cdef class Device:
    cdef cxil_dev *dev
    cdef readonly unsigned int dev_id
    cdef readonly object info
    cdef object lnis
    cdef object __weakref__
    cdef int _svc_call_check(self) except -1


cdef class Lni:
    cdef cxil_lni *lni
    cdef readonly Device device
    cdef readonly unsigned int svc_id
    cdef object children
    cdef object __weakref__


cdef class Domain:
    cdef cxil_domain *dom
    cdef readonly Lni lni
    cdef object __weakref__


cdef class Cp:
    cdef cxi_cp *cp
    cdef readonly Lni lni
    cdef object __weakref__
