# cython: language_level=3
"""libcxi's enums as Python IntEnums, declared from the header (pyverbs' libibverbs_enums).

Members keep their C spellings: ``cxi_rsrc_type.CXI_RSRC_TYPE_EQ``.  Not imported by
``import pycxi`` (the enum module costs the CNI plugin start-up time); the string tables in
:mod:`pycxi.svc` (``RSRC_TYPES``, ``TC_NAMES``, ``MEMBER_TYPES``) follow these values.
"""

cdef extern from "compat.h":
    cpdef enum cxi_traffic_class:
        CXI_TC_DEDICATED_ACCESS
        CXI_TC_LOW_LATENCY
        CXI_TC_BULK_DATA
        CXI_TC_BEST_EFFORT
        CXI_TC_ETH

    cpdef enum cxi_traffic_class_type:
        CXI_TC_TYPE_DEFAULT
        CXI_TC_TYPE_HRP
        CXI_TC_TYPE_RESTRICTED
        CXI_TC_TYPE_COLL_LEAF

    cpdef enum cxi_rsrc_type:
        CXI_RSRC_TYPE_PTE
        CXI_RSRC_TYPE_TXQ
        CXI_RSRC_TYPE_TGQ
        CXI_RSRC_TYPE_EQ
        CXI_RSRC_TYPE_CT
        CXI_RSRC_TYPE_LE
        CXI_RSRC_TYPE_TLE
        CXI_RSRC_TYPE_AC

    # NET_NS has the SHS 14 / patched value 3 even where the header lacks it
    cpdef enum cxi_svc_member_type "pycxi_svc_member_type":
        CXI_SVC_MEMBER_IGNORE "PYCXI_MEMBER_IGNORE"
        CXI_SVC_MEMBER_UID "PYCXI_MEMBER_UID"
        CXI_SVC_MEMBER_GID "PYCXI_MEMBER_GID"
        CXI_SVC_MEMBER_NET_NS "PYCXI_MEMBER_NET_NS"
