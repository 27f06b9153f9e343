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

    cpdef enum cxi_trig_cp:
        TRIG_LCID
        NON_TRIG_LCID
        ANY_LCID

    # the header's flag enums are anonymous; compat.h names them
    cpdef enum cxi_map_flags "pycxi_map_flags":
        CXI_MAP_PIN "PYCXI_MAP_PIN"
        CXI_MAP_ATS "PYCXI_MAP_ATS"
        CXI_MAP_WRITE "PYCXI_MAP_WRITE"
        CXI_MAP_READ "PYCXI_MAP_READ"
        CXI_MAP_FAULT "PYCXI_MAP_FAULT"
        CXI_MAP_NOCACHE "PYCXI_MAP_NOCACHE"
        CXI_MAP_USER_ADDR "PYCXI_MAP_USER_ADDR"
        CXI_MAP_ATS_PT "PYCXI_MAP_ATS_PT"
        CXI_MAP_ATS_DYN "PYCXI_MAP_ATS_DYN"
        CXI_MAP_DEVICE "PYCXI_MAP_DEVICE"
        CXI_MAP_ALLOC_MD "PYCXI_MAP_ALLOC_MD"
        CXI_MAP_PREFETCH "PYCXI_MAP_PREFETCH"

    cpdef enum cxi_cq_flags "pycxi_cq_flags":
        CXI_CQ_IS_TX "PYCXI_CQ_IS_TX"
        CXI_CQ_TX_ETHERNET "PYCXI_CQ_TX_ETHERNET"
        CXI_CQ_TX_WITH_TRIG_CMDS "PYCXI_CQ_TX_WITH_TRIG_CMDS"

    cpdef enum cxi_eq_flags "pycxi_eq_flags":
        CXI_EQ_PASSTHROUGH "PYCXI_EQ_PASSTHROUGH"
        CXI_EQ_INIT_LONG "PYCXI_EQ_INIT_LONG"
        CXI_EQ_TGT_LONG "PYCXI_EQ_TGT_LONG"
        CXI_EQ_EC_DISABLE "PYCXI_EQ_EC_DISABLE"
        CXI_EQ_REGISTER_PCT "PYCXI_EQ_REGISTER_PCT"
