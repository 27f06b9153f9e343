from pycxi.libcxi cimport (cxil_dev, cxil_lni, cxil_domain, cxi_cp, cxi_md, cxi_eq, cxil_pte,
                           cxi_cq, cxi_ct)


cdef class CxiObject:
    """close(), closed and the context manager, once for every object."""
    cdef object __weakref__
    cdef bint _is_closed(self)
    cdef int _destroy(self) except -1


cdef class Device(CxiObject):
    cdef cxil_dev *dev
    cdef readonly unsigned int dev_id
    cdef readonly object info
    cdef object lnis
    cdef int _svc_call_check(self) except -1


cdef class Lni(CxiObject):
    cdef cxil_lni *lni
    cdef readonly Device device
    cdef readonly unsigned int svc_id
    cdef void *_head              # its open objects: an intrusive list, no weakrefs
    cdef cxil_lni *_live(self) except NULL
    cdef object _alloc_trig_cp(self, object vni, object tc, object tc_type, object cp_type)


cdef class LniObject(CxiObject):
    """An object allocated on an LNI; closed before the LNI (``rank`` orders them)."""
    cdef readonly Lni lni
    cdef int rank
    cdef void *_prev
    cdef void *_next
    cdef bint _linked
    cdef void _unlink(self)


cdef class Domain(LniObject):
    cdef cxil_domain *dom


cdef class Cp(LniObject):
    cdef cxi_cp *cp


cdef class Md(LniObject):
    cdef cxi_md *md
    cdef object buf


cdef class Eq(LniObject):
    cdef cxi_eq *eq
    cdef readonly Md md
    cdef object queue


cdef class Pte(LniObject):
    cdef cxil_pte *pte
    cdef readonly Eq eq


cdef class Cq(LniObject):
    cdef cxi_cq *cq
    cdef readonly Eq eq
    cdef readonly bint transmit


cdef class Ct(LniObject):
    cdef cxi_ct *ct
