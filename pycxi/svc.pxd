from pycxi.libcxi cimport cxi_svc_desc, cxi_svc_fail_info, cxi_rsrc_use


cdef class SvcDesc:
    cdef cxi_svc_desc desc


cdef object fail_info_from(const cxi_svc_fail_info *fi)
cdef object rsrc_use_from(const cxi_rsrc_use *u)
cdef SvcDesc desc_from(const cxi_svc_desc *d)
