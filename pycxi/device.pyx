# cython: language_level=3
"""The device handle and the service API (``cxil_*``), plus LNIs, domains and CPs.

Every C call is followed by the same check: a negative return becomes
:class:`pycxi.CxiLibError` through :func:`pycxi.errors.from_rc`.
"""
import errno as _errno

from libc.errno cimport EINVAL, ENOSPC
from libc.stdint cimport uint16_t
from libc.string cimport memset
from cpython.long cimport PyLong_AsLongLongAndOverflow

from pycxi.libcxi cimport *
from pycxi.svc cimport SvcDesc, fail_info_from, rsrc_use_from, desc_from

from pycxi.errors import CxiLibError, CxiUserError, from_rc
from pycxi.svc import SvcMember, TC_NAMES, tc_index, RSRC_TYPES

BACKEND = PYCXI_BACKEND_NAME.decode()
# True: built against pycxi's software device (a model under $PYCXI_SIM_ROOT), not a NIC
SOFTWARE_DEVICE = BACKEND == "sim"
NETNS_METHODS = frozenset(
    (("member",) if PYCXI_HAVE_MEMBER_NETNS_V else ()) +
    (("set_netns",) if PYCXI_HAVE_SET_NETNS_V else ()))

_U32_MAX = 0xFFFFFFFF


def _netns_detail(rc, svc_id):
    if rc == -_errno.EOPNOTSUPP and "set_netns" not in NETNS_METHODS:
        return (f"svc_id {svc_id}: this libcxi has no cxil_svc_set_netns/get_netns "
                f"(SHS <= 13.1 without pycxi's patches)")
    return f"svc_id {svc_id}"


cdef inline unsigned int _svc_id(object svc_id) except? 0:
    cdef int overflow = 0
    cdef long long v
    if type(svc_id) is int:   # the common case, without Python-level comparisons
        v = PyLong_AsLongLongAndOverflow(svc_id, &overflow)
        if not overflow and 1 <= v <= 0x7FFFFFFF:
            return <unsigned int>v
    if isinstance(svc_id, bool) or not isinstance(svc_id, int):
        raise CxiUserError(f"svc_id must be an integer, got {svc_id!r}")
    raise CxiUserError(f"svc_id {svc_id} is out of range 1..{0x7FFFFFFF}")


cdef inline int _vni(object vni) except -1:
    if isinstance(vni, bool) or not isinstance(vni, int) or not 1 <= vni <= 0xFFFF:
        raise CxiUserError(f"VNI {vni!r} is not valid: VNIs are 1..65535")
    return vni


class DevInfo:
    """``struct cxil_devinfo``: identity and resource totals of a device."""

    __slots__ = ("dev_id", "name", "driver", "nid", "pid_bits", "pid_count", "num_ptes",
                 "num_txqs", "num_tgqs", "num_eqs", "num_cts", "num_les", "num_tles",
                 "num_acs", "is_vf")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw[k])

    def to_dict(self):
        return {k: getattr(self, k) for k in self.__slots__}

    def __repr__(self):
        return f"DevInfo(dev_id={self.dev_id}, name={self.name!r})"


cdef object _devinfo(const cxil_devinfo *i):
    return DevInfo(dev_id=i.dev_id, name=i.device_name.decode(), driver=i.driver_name.decode(),
                   nid=i.nid, pid_bits=i.pid_bits, pid_count=i.pid_count,
                   num_ptes=i.num_ptes, num_txqs=i.num_txqs, num_tgqs=i.num_tgqs,
                   num_eqs=i.num_eqs, num_cts=i.num_cts, num_les=i.num_les,
                   num_tles=i.num_tles, num_acs=i.num_acs, is_vf=bool(i.is_vf))


def devices():
    """All CXI devices (``cxil_get_device_list``); an empty list when there are none."""
    cdef cxil_device_list *lst = NULL
    cdef int rc = cxil_get_device_list(&lst)
    if rc < 0:
        raise from_rc(rc, "cxil_get_device_list")
    try:
        return [_devinfo(&lst.info[i]) for i in range(lst.count)]
    finally:
        cxil_free_device_list(lst)


def _dev_id_of(dev):
    if isinstance(dev, bool):
        raise CxiUserError(f"invalid device {dev!r}")
    if isinstance(dev, int):
        if not 0 <= dev <= 0xFFFF:
            raise CxiUserError(f"invalid device id {dev}")
        return dev
    s = str(dev)
    if s.startswith("cxi") and s[3:].isdigit():
        return int(s[3:])
    raise CxiUserError(f"invalid device {dev!r}: expected cxiN or a device number")


cdef class Device:
    """An open CXI device (``cxil_open_device``); use it as a context manager.

    Services are device-wide driver objects: closing the device or dropping this
    handle never destroys one (use :meth:`destroy_svc`).  LNIs, like in the kernel,
    belong to the handle and are released when it closes.
    """

    def __cinit__(self):
        self.dev = NULL

    def __init__(self, dev=0):
        cdef int rc
        self.dev_id = _dev_id_of(dev)
        rc = cxil_open_device(self.dev_id, &self.dev)
        if rc < 0:
            self.dev = NULL
            raise from_rc(rc, "cxil_open_device", detail=f"cxi{self.dev_id}")
        self.info = _devinfo(&self.dev.info)
        self.lnis = None   # a WeakSet once an LNI exists: weakref costs the CNI plugin's start-up

    def __dealloc__(self):
        if self.dev != NULL:
            cxil_close_device(self.dev)
            self.dev = NULL

    @property
    def name(self):
        return f"cxi{self.dev_id}"

    @property
    def closed(self):
        return self.dev == NULL

    def close(self):
        """Release LNIs opened through this handle, then the handle (idempotent)."""
        if self.dev == NULL:
            return
        for lni in list(self.lnis or ()):
            lni.close()
        cxil_close_device(self.dev)
        self.dev = NULL

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<pycxi.Device {self.name}{' closed' if self.dev == NULL else ''}>"

    cdef int _svc_call_check(self) except -1:
        if self.dev == NULL:
            raise CxiUserError("the device is closed")
        return 0

    # -- services ---------------------------------------------------------
    def alloc_svc(self, SvcDesc desc not None):
        """Allocate a service (``cxil_alloc_svc``); returns its ``svc_id``.

        On ``ENOSPC`` the raised error carries ``fail_info``.
        """
        cdef cxi_svc_fail_info fi
        cdef int rc
        self._svc_call_check()
        rc = cxil_alloc_svc(self.dev, &desc.desc, &fi)
        if rc < 0:
            raise from_rc(rc, "cxil_alloc_svc", fail_info_from(&fi) if rc == -ENOSPC else None)
        return rc

    def destroy_svc(self, svc_id):
        """Destroy a service (``cxil_destroy_svc``); ``EBUSY`` while LNIs use it."""
        self._svc_call_check()
        cdef int rc = cxil_destroy_svc(self.dev, _svc_id(svc_id))
        if rc < 0:
            raise from_rc(rc, "cxil_destroy_svc", detail=f"svc_id {svc_id}")

    def update_svc(self, SvcDesc desc not None):
        """Update a service (``cxil_update_svc``; ``desc.svc_id`` selects it)."""
        cdef cxi_svc_fail_info fi
        self._svc_call_check()
        cdef int rc = cxil_update_svc(self.dev, &desc.desc, &fi)
        if rc < 0:
            raise from_rc(rc, "cxil_update_svc", fail_info_from(&fi) if rc == -ENOSPC else None)

    def get_svc(self, svc_id):
        """The stored descriptor of a service (``cxil_get_svc``)."""
        cdef SvcDesc out = SvcDesc.__new__(SvcDesc)
        self._svc_call_check()
        cdef int rc = cxil_get_svc(self.dev, _svc_id(svc_id), &out.desc)
        if rc < 0:
            raise from_rc(rc, "cxil_get_svc", detail=f"svc_id {svc_id}")
        return out

    def svc_list(self):
        """All services' descriptors (``cxil_get_svc_list``)."""
        cdef cxil_svc_list *lst = NULL
        self._svc_call_check()
        cdef int rc = cxil_get_svc_list(self.dev, &lst)
        if rc < 0:
            raise from_rc(rc, "cxil_get_svc_list")
        try:
            return [desc_from(&lst.descs[i]) for i in range(lst.count)]
        finally:
            cxil_free_svc_list(lst)

    def svc_rsrc_use(self, svc_id):
        """Resource use of one service (``cxil_get_svc_rsrc_use``)."""
        cdef cxi_rsrc_use use
        self._svc_call_check()
        cdef int rc = cxil_get_svc_rsrc_use(self.dev, _svc_id(svc_id), &use)
        if rc < 0:
            raise from_rc(rc, "cxil_get_svc_rsrc_use", detail=f"svc_id {svc_id}")
        return rsrc_use_from(&use)

    def svc_rsrc_list(self):
        """Resource use of every service (``cxil_get_svc_rsrc_list``)."""
        cdef cxil_svc_rsrc_list *lst = NULL
        self._svc_call_check()
        cdef int rc = cxil_get_svc_rsrc_list(self.dev, &lst)
        if rc < 0:
            raise from_rc(rc, "cxil_get_svc_rsrc_list")
        try:
            return [rsrc_use_from(&lst.rsrcs[i]) for i in range(lst.count)]
        finally:
            cxil_free_svc_rsrc_list(lst)

    def svc_enable(self, svc_id, enable=True):
        """Enable or disable a service (``cxil_svc_enable``)."""
        self._svc_call_check()
        cdef int rc = cxil_svc_enable(self.dev, _svc_id(svc_id), bool(enable))
        if rc < 0:
            raise from_rc(rc, "cxil_svc_enable", detail=f"svc_id {svc_id}")

    def set_svc_lpr(self, svc_id, lnis_per_rgid):
        """LNIs per RGID (``cxil_set_svc_lpr``; 0..8)."""
        if isinstance(lnis_per_rgid, bool) or not isinstance(lnis_per_rgid, int) \
                or not 0 <= lnis_per_rgid <= _U32_MAX:
            raise CxiUserError(f"lnis_per_rgid must be a non-negative integer, got {lnis_per_rgid!r}")
        self._svc_call_check()
        cdef int rc = cxil_set_svc_lpr(self.dev, _svc_id(svc_id), lnis_per_rgid)
        if rc < 0:
            raise from_rc(rc, "cxil_set_svc_lpr", detail=f"svc_id {svc_id}")

    def get_svc_lpr(self, svc_id):
        self._svc_call_check()
        cdef int rc = cxil_get_svc_lpr(self.dev, _svc_id(svc_id))
        if rc < 0:
            raise from_rc(rc, "cxil_get_svc_lpr", detail=f"svc_id {svc_id}")
        return rc

    def set_exclusive_cp(self, svc_id, exclusive_cp):
        """``cxil_svc_set_exclusive_cp``: after set_vni_range, while disabled."""
        self._svc_call_check()
        cdef int rc = cxil_svc_set_exclusive_cp(self.dev, _svc_id(svc_id), bool(exclusive_cp))
        if rc < 0:
            raise from_rc(rc, "cxil_svc_set_exclusive_cp", detail=f"svc_id {svc_id}")

    def get_exclusive_cp(self, svc_id):
        cdef cbool value = False
        self._svc_call_check()
        cdef int rc = cxil_svc_get_exclusive_cp(self.dev, _svc_id(svc_id), &value)
        if rc < 0:
            raise from_rc(rc, "cxil_svc_get_exclusive_cp", detail=f"svc_id {svc_id}")
        return bool(value)

    def set_vni_range(self, svc_id, vni_min, vni_max):
        """Give a service with ``restricted_vnis=0`` a VNI range (``cxil_svc_set_vni_range``).

        The range size must be a power of two and ``vni_min`` a multiple of it.
        """
        lo, hi = _vni(vni_min), _vni(vni_max)
        size = hi - lo + 1
        if hi < lo or size & (size - 1) or lo % size:
            raise CxiUserError(f"VNI range {lo}-{hi}: its size must be a power of two and its "
                               f"start a multiple of the size")
        self._svc_call_check()
        cdef int rc = cxil_svc_set_vni_range(self.dev, _svc_id(svc_id), lo, hi)
        if rc < 0:
            raise from_rc(rc, "cxil_svc_set_vni_range", detail=f"svc_id {svc_id}")

    def get_vni_range(self, svc_id):
        cdef uint16_t lo = 0, hi = 0
        self._svc_call_check()
        cdef int rc = cxil_svc_get_vni_range(self.dev, _svc_id(svc_id), &lo, &hi)
        if rc < 0:
            raise from_rc(rc, "cxil_svc_get_vni_range", detail=f"svc_id {svc_id}")
        return (lo, hi)

    def set_netns(self, svc_id, netns):
        """Add a network namespace (inode) to a disabled service (``cxil_svc_set_netns``)."""
        if isinstance(netns, bool) or not isinstance(netns, int) or not 0 <= netns <= _U32_MAX:
            raise CxiUserError(f"netns must be an inode number 0..{_U32_MAX}, got {netns!r}")
        self._svc_call_check()
        cdef int rc = pycxi_svc_set_netns(self.dev, _svc_id(svc_id), netns)
        if rc < 0:
            raise from_rc(rc, "cxil_svc_set_netns", detail=_netns_detail(rc, svc_id))

    def get_netns(self, svc_id):
        """The smallest netns of a service (``cxil_svc_get_netns``); EINVAL if none."""
        cdef unsigned int value = 0
        self._svc_call_check()
        cdef int rc = pycxi_svc_get_netns(self.dev, _svc_id(svc_id), &value)
        if rc < 0:
            raise from_rc(rc, "cxil_svc_get_netns", detail=_netns_detail(rc, svc_id))
        return value

    def alloc_netns_svc(self, netns, vnis=None, tcs=None, limits=None, method="auto", *,
                        vni_range=None, exclusive_cp=False):
        """Allocate an enabled service that admits exactly the network namespace ``netns``.

        On ``vnis`` (a list) or on ``vni_range`` (``(lo, hi)``, with ``exclusive_cp``).
        ``method`` "member" puts a NET_NS member in the descriptor (patched 12/13.x);
        "set_netns" allocates with no members, disables, calls set_netns and enables
        again (SHS 14); "auto" picks what the build offers, member first.  A range is set
        before the namespace is bound (range profiles take the members' entries, not the
        ones set_netns adds later).  Any failure after the allocation destroys the service
        before the error propagates.
        """
        if method == "auto":
            method = "member" if "member" in NETNS_METHODS else "set_netns"
        if method not in ("member", "set_netns"):
            raise CxiUserError(f"unknown netns method {method!r}")
        if method not in NETNS_METHODS:
            raise CxiLibError(_errno.EOPNOTSUPP,
                              "cxil_svc_set_netns" if method == "set_netns" else "cxil_alloc_svc",
                              detail=f"this libcxi cannot bind a network namespace ({method})")
        vnis = list(vnis or ())
        if vni_range is not None:
            if vnis:
                raise CxiUserError("give either VNIs or a VNI range, not both")
            lo, hi = vni_range
        elif not vnis:
            raise CxiUserError("a netns service needs at least one VNI or a VNI range")
        elif exclusive_cp:
            raise CxiUserError("exclusive_cp needs a VNI range")
        member = [SvcMember.netns(netns)] if method == "member" else []
        desc = SvcDesc(vnis=vnis or None, members=member, tcs=tcs, limits=limits,
                       restricted_members=True, restricted_vnis=vni_range is None)
        svc_id = self.alloc_svc(desc)
        if method == "member" and vni_range is None:
            return svc_id
        try:
            if vni_range is not None:
                self.set_vni_range(svc_id, lo, hi)
                if exclusive_cp:
                    self.set_exclusive_cp(svc_id, True)
            if method == "set_netns":
                self.svc_enable(svc_id, False)
                self.set_netns(svc_id, netns)
            self.svc_enable(svc_id, True)
        except BaseException:
            try:
                self.destroy_svc(svc_id)
            except CxiLibError:
                pass
            raise
        return svc_id

    # -- LNIs -------------------------------------------------------------
    def alloc_lni(self, svc_id):
        """Allocate an LNI on a service as the calling thread (``cxil_alloc_lni``).

        This is where membership is enforced: ``EPERM`` for a non-member (uid, gid
        or netns), ``EKEYREVOKED`` for a disabled service.
        """
        cdef Lni lni = Lni.__new__(Lni)
        self._svc_call_check()
        cdef int rc = cxil_alloc_lni(self.dev, &lni.lni, _svc_id(svc_id))
        if rc < 0:
            lni.lni = NULL
            raise from_rc(rc, "cxil_alloc_lni", detail=f"svc_id {svc_id}")
        import weakref

        lni.device = self
        lni.svc_id = svc_id
        lni.children = weakref.WeakSet()
        if self.lnis is None:
            self.lnis = weakref.WeakSet()
        self.lnis.add(lni)
        return lni


cdef class Lni:
    """A logical network interface on a service; release it with :meth:`close`."""

    def __cinit__(self):
        self.lni = NULL

    def __init__(self):
        raise TypeError("use Device.alloc_lni()")

    def __dealloc__(self):
        # Children hold references to us, so none are left here.
        if self.lni != NULL:
            cxil_destroy_lni(self.lni)
            self.lni = NULL

    @property
    def id(self):
        if self.lni == NULL:
            raise CxiUserError("the LNI is closed")
        return self.lni.id

    @property
    def closed(self):
        return self.lni == NULL

    def close(self):
        """Release children, then the LNI (``cxil_destroy_lni``; idempotent)."""
        if self.lni == NULL:
            return
        for child in list(self.children):
            child.close()
        cdef int rc = cxil_destroy_lni(self.lni)
        if rc < 0:
            raise from_rc(rc, "cxil_destroy_lni")
        self.lni = NULL

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def alloc_domain(self, vni, pid=None):
        """Allocate a domain on a VNI (``cxil_alloc_domain``): checks VNI access."""
        cdef Domain d = Domain.__new__(Domain)
        cdef unsigned int p = C_PID_ANY if pid is None else pid
        if self.lni == NULL:
            raise CxiUserError("the LNI is closed")
        cdef int rc = cxil_alloc_domain(self.lni, _vni(vni), p, &d.dom)
        if rc < 0:
            d.dom = NULL
            raise from_rc(rc, "cxil_alloc_domain", detail=f"VNI {vni}")
        d.lni = self
        self.children.add(d)
        return d

    def alloc_cp(self, vni, tc="BEST_EFFORT", tc_type=0):
        """Allocate a communication profile (``cxil_alloc_cp``): checks VNI and TC."""
        cdef Cp c = Cp.__new__(Cp)
        if self.lni == NULL:
            raise CxiUserError("the LNI is closed")
        if isinstance(vni, bool) or not isinstance(vni, int) or not 0 <= vni <= _U32_MAX:
            raise CxiUserError(f"VNI {vni!r} is not valid")
        t = tc if isinstance(tc, int) and not isinstance(tc, bool) and 0 <= tc < 8 else tc_index(tc)
        if isinstance(tc_type, bool) or not isinstance(tc_type, int) or not 0 <= tc_type < 4:
            raise CxiUserError(f"tc_type must be 0..3, got {tc_type!r}")
        cdef int rc = cxil_alloc_cp(self.lni, vni, <cxi_traffic_class>t,
                                    <cxi_traffic_class_type>tc_type, &c.cp)
        if rc < 0:
            c.cp = NULL
            raise from_rc(rc, "cxil_alloc_cp", detail=f"VNI {vni}")
        c.lni = self
        self.children.add(c)
        return c

    def __repr__(self):
        return f"<pycxi.Lni svc_id={self.svc_id}{' closed' if self.lni == NULL else ''}>"


cdef class Domain:
    """A domain (VNI, PID) allocated on an LNI."""

    def __cinit__(self):
        self.dom = NULL

    def __init__(self):
        raise TypeError("use Lni.alloc_domain()")

    def __dealloc__(self):
        if self.dom != NULL:
            cxil_destroy_domain(self.dom)
            self.dom = NULL

    @property
    def vni(self):
        return self.dom.vni if self.dom != NULL else None

    @property
    def pid(self):
        return self.dom.pid if self.dom != NULL else None

    def close(self):
        if self.dom == NULL:
            return
        cdef int rc = cxil_destroy_domain(self.dom)
        if rc < 0:
            raise from_rc(rc, "cxil_destroy_domain")
        self.dom = NULL

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


cdef class Cp:
    """A communication profile allocated on an LNI."""

    def __cinit__(self):
        self.cp = NULL

    def __init__(self):
        raise TypeError("use Lni.alloc_cp()")

    def __dealloc__(self):
        if self.cp != NULL:
            cxil_destroy_cp(self.cp)
            self.cp = NULL

    @property
    def vni(self):
        return self.cp.vni if self.cp != NULL else None

    def close(self):
        if self.cp == NULL:
            return
        cdef int rc = cxil_destroy_cp(self.cp)
        if rc < 0:
            raise from_rc(rc, "cxil_destroy_cp")
        self.cp = NULL

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- software device extras (BACKEND == "sim") ------------------------------
def sim_root():
    """The software device's state directory ($PYCXI_SIM_ROOT or /run/pycxi-sim)."""
    return pycxi_sim_root().decode()


def sim_reset(unsigned int ndev=1):
    """Remove every software device and create ``ndev`` fresh ones."""
    cdef int rc = pycxi_sim_reset(ndev)
    if rc < 0:
        raise from_rc(rc, "pycxi_sim_reset")


def sim_status(dev=0):
    """Counters of a software device (LNIs of dead processes are released first)."""
    cdef pycxi_sim_status st
    cdef int rc = pycxi_sim_get_status(_dev_id_of(dev), &st)
    if rc < 0:
        raise from_rc(rc, "pycxi_sim_get_status")
    return {"services": st.services, "enabled_services": st.enabled_services,
            "lnis": st.lnis, "profiles": st.profiles, "rmu_used": st.rmu_used,
            "rgids_used": st.rgids_used, "tle_pools_used": st.tle_pools_used,
            "le_pools_used": st.le_pools_used, "reaped_lnis": st.reaped_lnis,
            "recoveries": st.recoveries,
            "reserved": {RSRC_TYPES[t]: st.reserved[t] for t in range(8)}}


def sim_check(dev=0):
    """Verify the software device's invariants; raises CxiLibError(EUCLEAN) with why."""
    cdef char msg[256]
    msg[0] = 0
    cdef int rc = pycxi_sim_check(_dev_id_of(dev), msg, sizeof(msg))
    if rc < 0:
        raise from_rc(rc, "pycxi_sim_check", detail=msg.decode())
