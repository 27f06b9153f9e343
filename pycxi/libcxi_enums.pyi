import enum

class cxi_traffic_class(enum.IntEnum):
    CXI_TC_DEDICATED_ACCESS: int
    CXI_TC_LOW_LATENCY: int
    CXI_TC_BULK_DATA: int
    CXI_TC_BEST_EFFORT: int
    CXI_TC_ETH: int

class cxi_traffic_class_type(enum.IntEnum):
    CXI_TC_TYPE_DEFAULT: int
    CXI_TC_TYPE_HRP: int
    CXI_TC_TYPE_RESTRICTED: int
    CXI_TC_TYPE_COLL_LEAF: int

class cxi_rsrc_type(enum.IntEnum):
    CXI_RSRC_TYPE_PTE: int
    CXI_RSRC_TYPE_TXQ: int
    CXI_RSRC_TYPE_TGQ: int
    CXI_RSRC_TYPE_EQ: int
    CXI_RSRC_TYPE_CT: int
    CXI_RSRC_TYPE_LE: int
    CXI_RSRC_TYPE_TLE: int
    CXI_RSRC_TYPE_AC: int

class cxi_svc_member_type(enum.IntEnum):
    CXI_SVC_MEMBER_IGNORE: int
    CXI_SVC_MEMBER_UID: int
    CXI_SVC_MEMBER_GID: int
    CXI_SVC_MEMBER_NET_NS: int

class cxi_trig_cp(enum.IntEnum):
    TRIG_LCID: int
    NON_TRIG_LCID: int
    ANY_LCID: int

class cxi_map_flags(enum.IntEnum):
    CXI_MAP_PIN: int
    CXI_MAP_ATS: int
    CXI_MAP_WRITE: int
    CXI_MAP_READ: int
    CXI_MAP_FAULT: int
    CXI_MAP_NOCACHE: int
    CXI_MAP_USER_ADDR: int
    CXI_MAP_ATS_PT: int
    CXI_MAP_ATS_DYN: int
    CXI_MAP_DEVICE: int
    CXI_MAP_ALLOC_MD: int
    CXI_MAP_PREFETCH: int

class cxi_cq_flags(enum.IntEnum):
    CXI_CQ_IS_TX: int
    CXI_CQ_TX_ETHERNET: int
    CXI_CQ_TX_WITH_TRIG_CMDS: int

class cxi_eq_flags(enum.IntEnum):
    CXI_EQ_PASSTHROUGH: int
    CXI_EQ_INIT_LONG: int
    CXI_EQ_TGT_LONG: int
    CXI_EQ_EC_DISABLE: int
    CXI_EQ_REGISTER_PCT: int
