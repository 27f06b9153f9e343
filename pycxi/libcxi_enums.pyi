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
