# cython: language_level=3
"""Service descriptors (``struct cxi_svc_desc``) and the small structs around them."""
from libc.string cimport memset, memcpy

from pycxi.libcxi cimport (cxi_svc_desc, cxi_svc_fail_info, cxi_rsrc_use,
                           pycxi_member_value, pycxi_member_type, pycxi_member_set)
from pycxi cimport libcxi as _h

from pycxi.errors import CxiUserError

# cxi_rsrc_type order; names as cxi_service prints them, without the plural "s"
RSRC_TYPES = ("PTE", "TXQ", "TGQ", "EQ", "CT", "LE", "TLE", "AC")
# cxi_traffic_class order
TC_NAMES = ("DEDICATED_ACCESS", "LOW_LATENCY", "BULK_DATA", "BEST_EFFORT", "ETH")
# cxi_svc_member_type order (NET_NS = 3 as in SHS 14 and our patches)
MEMBER_TYPES = ("ignore", "uid", "gid", "netns")
# device resource totals, the upper bound the driver validates limits against
DEVICE_TOTALS = {"PTE": 2048, "TXQ": 1024, "TGQ": 512, "EQ": 2047, "CT": 2047,
                 "LE": 16384, "TLE": 2048, "AC": 1022}
# The header's limits, taken from it at build time
MAX_MEMBERS = _h.CXI_SVC_MAX_MEMBERS
C_PID_ANY = _h.C_PID_ANY      # "any free PID" for alloc_domain
MAX_VNIS = _h.CXI_SVC_MAX_VNIS
DEFAULT_SVC_ID = _h.CXI_DEFAULT_SVC_ID
assert len(RSRC_TYPES) == _h.CXI_RSRC_TYPE_MAX and len(TC_NAMES) == _h.CXI_TC_MAX
VNI_MAX = 0xFFFF
_U32_MAX = 0xFFFFFFFF

_RSRC_INDEX = {n: i for i, n in enumerate(RSRC_TYPES)}
_RSRC_INDEX.update({n + "S": i for i, n in enumerate(RSRC_TYPES)})   # "PTEs" as in YAML
_TC_INDEX = {n: i for i, n in enumerate(TC_NAMES)}
_TC_INDEX["BULK DATA"] = 2      # accepted by cxi_service's YAML


def rsrc_index(name) -> int:
    """Index of a resource type given as "PTE", "PTEs" or its number."""
    if isinstance(name, int) and not isinstance(name, bool) and 0 <= name < 8:
        return name
    key = str(name)
    if key.upper() in _RSRC_INDEX:
        key = key.upper()
    try:
        return _RSRC_INDEX[key]
    except KeyError:
        raise CxiUserError(f"unknown resource type {name!r}; expected one of {', '.join(RSRC_TYPES)}") from None


def tc_index(name) -> int:
    """Index of a traffic class given by name ("BEST_EFFORT") or number."""
    if isinstance(name, int) and not isinstance(name, bool) and 0 <= name < 5:
        return name
    key = str(name).upper()
    if key.startswith("CXI_TC_"):
        key = key[7:]
    try:
        return _TC_INDEX[key]
    except KeyError:
        raise CxiUserError(f"unknown traffic class {name!r}; expected one of {', '.join(TC_NAMES)}") from None


def _check_u32(what, value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U32_MAX:
        raise CxiUserError(f"{what}: expected an integer 0..{_U32_MAX}, got {value!r}")
    return value


class SvcMember:
    """One service member: ``SvcMember("uid", 1000)``, or ``SvcMember.netns(inode)``."""

    __slots__ = ("type", "id")

    def __init__(self, type, id=0):
        if isinstance(type, int) and not isinstance(type, bool):
            if not 0 <= type < len(MEMBER_TYPES):
                raise CxiUserError(f"member type {type} is not one of 0..{len(MEMBER_TYPES) - 1}")
            type = MEMBER_TYPES[type]
        type = str(type).lower()
        if type not in MEMBER_TYPES:
            raise CxiUserError(f"member type {type!r}: expected uid, gid or netns")
        self.type = type
        self.id = _check_u32(f"{type} member id", id)

    @classmethod
    def uid(cls, uid):
        return cls("uid", uid)

    @classmethod
    def gid(cls, gid):
        return cls("gid", gid)

    @classmethod
    def netns(cls, inode):
        return cls("netns", inode)

    @property
    def type_value(self):
        return MEMBER_TYPES.index(self.type)

    def to_dict(self):
        return {"type": self.type, "id": self.id}

    def __eq__(self, other):
        return isinstance(other, SvcMember) and (self.type, self.id) == (other.type, other.id)

    def __hash__(self):
        return hash((self.type, self.id))

    def __repr__(self):
        return f"SvcMember({self.type!r}, {self.id})"


class FailInfo:
    """``struct cxi_svc_fail_info``: why an allocation found no room."""

    __slots__ = ("rsrc_avail", "no_le_pools", "no_tle_pools", "no_cntr_pools")

    def __init__(self, rsrc_avail=None, no_le_pools=False, no_tle_pools=False, no_cntr_pools=False):
        self.rsrc_avail = dict(rsrc_avail or {n: 0 for n in RSRC_TYPES})
        self.no_le_pools = bool(no_le_pools)
        self.no_tle_pools = bool(no_tle_pools)
        self.no_cntr_pools = bool(no_cntr_pools)

    def to_dict(self):
        return {"rsrc_avail": dict(self.rsrc_avail), "no_le_pools": self.no_le_pools,
                "no_tle_pools": self.no_tle_pools, "no_cntr_pools": self.no_cntr_pools}

    def __str__(self):
        parts = [f"no {p} pools" for p, f in (("LE", self.no_le_pools), ("TLE", self.no_tle_pools),
                                               ("counter", self.no_cntr_pools)) if f]
        avail = ", ".join(f"{k}={v}" for k, v in self.rsrc_avail.items() if v)
        if avail:
            parts.append("available: " + avail)
        return "; ".join(parts) or "no resource details"

    def __repr__(self):
        return f"FailInfo({self.to_dict()!r})"


class RsrcUse:
    """``struct cxi_rsrc_use``: a service's TLE pool and objects in use per resource type."""

    __slots__ = ("svc_id", "tle_pool_id", "in_use")

    def __init__(self, svc_id, tle_pool_id, in_use):
        self.svc_id = svc_id
        self.tle_pool_id = tle_pool_id
        self.in_use = in_use

    def to_dict(self):
        return {"svc_id": self.svc_id, "tle_pool_id": self.tle_pool_id, "in_use": dict(self.in_use)}

    def __repr__(self):
        return f"RsrcUse({self.to_dict()!r})"


cdef object fail_info_from(const cxi_svc_fail_info *fi):
    return FailInfo({RSRC_TYPES[t]: fi.rsrc_avail[t] for t in range(_h.CXI_RSRC_TYPE_MAX)},
                    fi.no_le_pools, fi.no_tle_pools, fi.no_cntr_pools)


cdef object rsrc_use_from(const cxi_rsrc_use *u):
    return RsrcUse(u.svc_id, u.tle_pool_id, {RSRC_TYPES[t]: u.in_use[t] for t in range(_h.CXI_RSRC_TYPE_MAX)})


cdef SvcDesc desc_from(const cxi_svc_desc *d):
    cdef SvcDesc out = SvcDesc.__new__(SvcDesc)
    memcpy(&out.desc, d, sizeof(cxi_svc_desc))
    return out


cdef class SvcDesc:
    """A service descriptor, ``struct cxi_svc_desc``, with the C field names.

    The keyword form validates and sets the matching ``restricted_*`` bits::

        SvcDesc(vnis=[4242], members=[SvcMember.netns(ino)], tcs=["BEST_EFFORT"],
                limits={"TLE": (0, 0), "LE": (16, 16)})

    Plain attribute assignment (``desc.num_vld_vnis = 7``) stores the raw value, so
    tests can hand the device descriptors the driver must refuse.
    """

    def __init__(self, *, vnis=None, members=None, tcs=None, limits=None,
                 restricted_members=None, restricted_vnis=None, restricted_tcs=None,
                 resource_limits=None, enable=True, is_system_svc=False, cntr_pool_id=0,
                 svc_id=0):
        memset(&self.desc, 0, sizeof(cxi_svc_desc))
        if vnis is not None:
            self.vnis = vnis
        if members is not None:
            self.members = members
        if tcs is not None:
            self.tcs = tcs
        if limits is not None:
            self.limits = limits
        self.restricted_vnis = vnis is not None if restricted_vnis is None else restricted_vnis
        self.restricted_members = (members is not None if restricted_members is None
                                   else restricted_members)
        self.restricted_tcs = tcs is not None if restricted_tcs is None else restricted_tcs
        self.resource_limits = limits is not None if resource_limits is None else resource_limits
        self.enable = enable
        self.is_system_svc = is_system_svc
        if not 0 <= cntr_pool_id <= 3:
            raise CxiUserError(f"cntr_pool_id must be 0..3, got {cntr_pool_id!r}")
        self.cntr_pool_id = cntr_pool_id
        self.svc_id = _check_u32("svc_id", svc_id)

    # -- bit fields -------------------------------------------------------
    @property
    def restricted_members(self):
        return bool(self.desc.restricted_members)

    @restricted_members.setter
    def restricted_members(self, v):
        self.desc.restricted_members = 1 if v else 0

    @property
    def restricted_vnis(self):
        return bool(self.desc.restricted_vnis)

    @restricted_vnis.setter
    def restricted_vnis(self, v):
        self.desc.restricted_vnis = 1 if v else 0

    @property
    def restricted_tcs(self):
        return bool(self.desc.restricted_tcs)

    @restricted_tcs.setter
    def restricted_tcs(self, v):
        self.desc.restricted_tcs = 1 if v else 0

    @property
    def resource_limits(self):
        return bool(self.desc.resource_limits)

    @resource_limits.setter
    def resource_limits(self, v):
        self.desc.resource_limits = 1 if v else 0

    @property
    def enable(self):
        return bool(self.desc.enable)

    @enable.setter
    def enable(self, v):
        self.desc.enable = 1 if v else 0

    @property
    def is_system_svc(self):
        return bool(self.desc.is_system_svc)

    @is_system_svc.setter
    def is_system_svc(self, v):
        self.desc.is_system_svc = 1 if v else 0

    @property
    def cntr_pool_id(self):
        return self.desc.cntr_pool_id

    @cntr_pool_id.setter
    def cntr_pool_id(self, int v):
        self.desc.cntr_pool_id = v & 3

    @property
    def svc_id(self):
        return self.desc.svc_id

    @svc_id.setter
    def svc_id(self, unsigned int v):
        self.desc.svc_id = v

    # -- VNIs -------------------------------------------------------------
    @property
    def num_vld_vnis(self):
        return self.desc.num_vld_vnis

    @num_vld_vnis.setter
    def num_vld_vnis(self, unsigned char v):
        self.desc.num_vld_vnis = v

    @property
    def vnis(self):
        """The valid VNIs (the first ``num_vld_vnis`` slots, at most 4)."""
        return [self.desc.vnis[i] for i in range(min(self.desc.num_vld_vnis, MAX_VNIS))]

    @vnis.setter
    def vnis(self, vnis):
        vnis = list(vnis)
        if len(vnis) > MAX_VNIS:
            raise CxiUserError(f"a service holds at most {MAX_VNIS} VNIs, got {len(vnis)}")
        for v in vnis:
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= VNI_MAX:
                raise CxiUserError(f"VNI {v!r} is not valid: VNIs are 1..{VNI_MAX}")
        if len(set(vnis)) != len(vnis):
            raise CxiUserError(f"duplicate VNI in {vnis}")
        for i in range(MAX_VNIS):
            self.desc.vnis[i] = vnis[i] if i < len(vnis) else 0
        self.desc.num_vld_vnis = len(vnis)

    def raw_vnis(self):
        """All four VNI slots, valid or not."""
        return [self.desc.vnis[i] for i in range(MAX_VNIS)]

    def set_raw_vni(self, int slot, unsigned short vni):
        if not 0 <= slot < MAX_VNIS:
            raise CxiUserError(f"VNI slot {slot} out of range")
        self.desc.vnis[slot] = vni

    # -- members ----------------------------------------------------------
    @property
    def members(self):
        """Members whose type is not IGNORE."""
        out = []
        for i in range(MAX_MEMBERS):
            t = pycxi_member_type(&self.desc, i)
            if 0 < t < len(MEMBER_TYPES):
                out.append(SvcMember(MEMBER_TYPES[t], pycxi_member_value(&self.desc, i)))
        return out

    @members.setter
    def members(self, members):
        members = [m if isinstance(m, SvcMember) else SvcMember(*m) for m in members]
        if len(members) > MAX_MEMBERS:
            raise CxiUserError(f"a service has at most {MAX_MEMBERS} members, got {len(members)}")
        for i in range(MAX_MEMBERS):
            if i < len(members):
                pycxi_member_set(&self.desc, i, members[i].type_value, members[i].id)
            else:
                pycxi_member_set(&self.desc, i, 0, 0)

    def set_raw_member(self, int slot, int type, unsigned int value):
        """Store a member slot verbatim (any type number), for tests of validation."""
        if not 0 <= slot < MAX_MEMBERS:
            raise CxiUserError(f"member slot {slot} out of range")
        pycxi_member_set(&self.desc, slot, type, value)

    def raw_members(self):
        return [(pycxi_member_type(&self.desc, i), pycxi_member_value(&self.desc, i))
                for i in range(MAX_MEMBERS)]

    # -- traffic classes --------------------------------------------------
    @property
    def tcs(self):
        """Names of the traffic classes whose ``tcs[]`` flag is set."""
        return [TC_NAMES[i] for i in range(_h.CXI_TC_MAX) if self.desc.tcs[i]]

    @tcs.setter
    def tcs(self, tcs):
        idx = {tc_index(t) for t in tcs}
        for i in range(_h.CXI_TC_MAX):
            self.desc.tcs[i] = i in idx

    # -- resource limits --------------------------------------------------
    @property
    def limits(self):
        """``{"PTE": (max, res), ...}`` for all eight resource types."""
        return {RSRC_TYPES[t]: (self.desc.limits.type[t].max, self.desc.limits.type[t].res)
                for t in range(_h.CXI_RSRC_TYPE_MAX)}

    @limits.setter
    def limits(self, limits):
        items = limits.items() if hasattr(limits, "items") else limits
        for name, value in items:
            t = rsrc_index(name)
            if isinstance(value, dict):
                mx, res = value.get("max", 0), value.get("res", 0)
            else:
                mx, res = value
            for what, v in (("max", mx), ("res", res)):
                if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 0xFFFF:
                    raise CxiUserError(f"{RSRC_TYPES[t]} {what}: expected 0..65535, got {v!r}")
            if res > mx:
                raise CxiUserError(f"{RSRC_TYPES[t]}: res {res} exceeds max {mx}")
            if mx > DEVICE_TOTALS[RSRC_TYPES[t]]:
                raise CxiUserError(f"{RSRC_TYPES[t]}: max {mx} exceeds the device total "
                                   f"{DEVICE_TOTALS[RSRC_TYPES[t]]}")
            self.desc.limits.type[t].max = mx
            self.desc.limits.type[t].res = res

    def set_raw_limit(self, int t, unsigned short mx, unsigned short res):
        if not 0 <= t < 8:
            raise CxiUserError(f"resource type {t} out of range")
        self.desc.limits.type[t].max = mx
        self.desc.limits.type[t].res = res

    # -- conversions ------------------------------------------------------
    def to_bytes(self):
        """The 68 bytes the driver sees."""
        return (<char *>&self.desc)[:sizeof(cxi_svc_desc)]

    @classmethod
    def from_bytes(cls, data):
        cdef SvcDesc out = SvcDesc.__new__(SvcDesc)
        cdef bytes raw = bytes(data)   # not a memoryview: its support code imports collections
        if len(raw) != sizeof(cxi_svc_desc):
            raise CxiUserError(f"a descriptor is {sizeof(cxi_svc_desc)} bytes, got {len(raw)}")
        memcpy(&out.desc, <const char *>raw, sizeof(cxi_svc_desc))
        return out

    def copy(self):
        return desc_from(&self.desc)

    def to_dict(self):
        """The JSON form of ``pycxi svc show --json`` (descriptor part)."""
        return {
            "svc_id": self.svc_id,
            "enabled": self.enable,
            "is_system_svc": self.is_system_svc,
            "restricted_members": self.restricted_members,
            "members": [m.to_dict() for m in self.members],
            "restricted_vnis": self.restricted_vnis,
            "vnis": self.vnis,
            "restricted_tcs": self.restricted_tcs,
            "tcs": self.tcs,
            "resource_limits": self.resource_limits,
            "limits": {n: {"max": mx, "res": res} for n, (mx, res) in self.limits.items()},
            "cntr_pool_id": self.cntr_pool_id,
        }

    def __eq__(self, other):
        return isinstance(other, SvcDesc) and self.to_bytes() == other.to_bytes()

    def __hash__(self):
        return hash(self.to_bytes())

    def __reduce__(self):
        return (SvcDesc.from_bytes, (self.to_bytes(),))

    def __repr__(self):
        d = self.to_dict()
        return (f"SvcDesc(svc_id={d['svc_id']}, enabled={d['enabled']}, vnis={d['vnis']}, "
                f"members={self.members!r}, tcs={d['tcs'] if d['restricted_tcs'] else 'all'})")
