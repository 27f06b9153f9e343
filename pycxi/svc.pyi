from typing import Dict, Iterable, List, Mapping, Optional, Tuple, Union

RSRC_TYPES: Tuple[str, ...]
TC_NAMES: Tuple[str, ...]
MEMBER_TYPES: Tuple[str, ...]
DEVICE_TOTALS: Dict[str, int]
MAX_MEMBERS: int
MAX_VNIS: int
VNI_MAX: int
C_PID_ANY: int
DEFAULT_SVC_ID: int

def rsrc_index(name: Union[str, int]) -> int: ...
def tc_index(name: Union[str, int]) -> int: ...

class SvcMember:
    type: str
    id: int
    def __init__(self, type: Union[str, int], id: int = ...) -> None: ...
    @classmethod
    def uid(cls, uid: int) -> "SvcMember": ...
    @classmethod
    def gid(cls, gid: int) -> "SvcMember": ...
    @classmethod
    def netns(cls, inode: int) -> "SvcMember": ...
    @property
    def type_value(self) -> int: ...
    def to_dict(self) -> Dict[str, object]: ...

class FailInfo:
    rsrc_avail: Dict[str, int]
    no_le_pools: bool
    no_tle_pools: bool
    no_cntr_pools: bool
    def __init__(self, rsrc_avail: Optional[Mapping[str, int]] = ..., no_le_pools: bool = ...,
                 no_tle_pools: bool = ..., no_cntr_pools: bool = ...) -> None: ...
    def to_dict(self) -> Dict[str, object]: ...

class RsrcUse:
    svc_id: int
    tle_pool_id: int
    in_use: Dict[str, int]
    def to_dict(self) -> Dict[str, object]: ...

Limits = Mapping[Union[str, int], Union[Tuple[int, int], Mapping[str, int]]]
MemberLike = Union[SvcMember, Tuple[Union[str, int], int]]

class SvcDesc:
    restricted_members: bool
    restricted_vnis: bool
    restricted_tcs: bool
    resource_limits: bool
    enable: bool
    is_system_svc: bool
    cntr_pool_id: int
    svc_id: int
    num_vld_vnis: int
    vnis: List[int]
    members: List[SvcMember]
    tcs: List[str]
    limits: Dict[str, Tuple[int, int]]
    def __init__(self, *, vnis: Optional[Iterable[int]] = ...,
                 members: Optional[Iterable[MemberLike]] = ...,
                 tcs: Optional[Iterable[Union[str, int]]] = ..., limits: Optional[Limits] = ...,
                 restricted_members: Optional[bool] = ..., restricted_vnis: Optional[bool] = ...,
                 restricted_tcs: Optional[bool] = ..., resource_limits: Optional[bool] = ...,
                 enable: bool = ..., is_system_svc: bool = ..., cntr_pool_id: int = ...,
                 svc_id: int = ...) -> None: ...
    def raw_vnis(self) -> List[int]: ...
    def set_raw_vni(self, slot: int, vni: int) -> None: ...
    def set_raw_member(self, slot: int, type: int, value: int) -> None: ...
    def raw_members(self) -> List[Tuple[int, int]]: ...
    def set_raw_limit(self, t: int, mx: int, res: int) -> None: ...
    def to_bytes(self) -> bytes: ...
    @classmethod
    def from_bytes(cls, data: bytes) -> "SvcDesc": ...
    def copy(self) -> "SvcDesc": ...
    def to_dict(self) -> Dict[str, object]: ...
