# cython: language_level=3
"""The device handle and the service API (``cxil_*``), plus LNIs, domains and CPs.

Every C call is followed by the same check: a negative return becomes
:class:`pycxi.CxiLibError` through :func:`pycxi.errors.from_rc`.
"""
import errno as _errno

cimport cython

from libc.errno cimport EINVAL, ENOSPC
from libc.stdint cimport uint16_t, uint32_t
from libc.string cimport memset
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
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


# the order reserve_rsrcs checks the types in; the first reservation larger than what
# is left is the one refused (later types are not looked at: rsrc_avail stays 0)
_RESERVE_ORDER = ("PTE", "TXQ", "TGQ", "EQ", "CT", "LE", "AC")


def _short_of(desc, info):
    """Name the reservation an ENOSPC from cxil_alloc_svc refused, if it was one."""
    if not desc.resource_limits or info.no_le_pools or info.no_tle_pools:
        return ""
    lim = desc.limits
    for name in _RESERVE_ORDER:
        mx, res = lim[name]
        if (mx or res) and res > info.rsrc_avail[name]:
            return f"{name} reservation {res} > {info.rsrc_avail[name]} unreserved"
    return ""


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


cdef class CxiObject:
    """Base of pycxi's handles: ``close()`` (idempotent), ``closed`` and ``with``."""

    cdef bint _is_closed(self):
        return True

    cdef int _destroy(self) except -1:
        return 0

    @property
    def closed(self):
        return self._is_closed()

    def close(self):
        """Release the object (``cxil_destroy_*``); a second call does nothing."""
        if not self._is_closed():
            self._destroy()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


cdef class Device(CxiObject):
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

    cdef bint _is_closed(self):
        return self.dev == NULL

    cdef int _destroy(self) except -1:
        # LNIs opened through this handle first, then the handle
        for lni in list(self.lnis or ()):
            lni.close()
        cxil_close_device(self.dev)
        self.dev = NULL
        return 0

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
            if rc != -ENOSPC:
                raise from_rc(rc, "cxil_alloc_svc")
            info = fail_info_from(&fi)
            raise from_rc(rc, "cxil_alloc_svc", info, detail=_short_of(desc, info))
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
        if self.lnis is None:
            self.lnis = weakref.WeakSet()
        self.lnis.add(lni)
        return lni


cdef class Lni(CxiObject):
    """A logical network interface on a service; release it with :meth:`close`.

    The objects allocated on it (domains, CPs, MDs, EQs, PTEs, CQs, CTs) are charged to
    its service and closed with it, dependents first.
    """

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
        return self._live().id

    cdef cxil_lni *_live(self) except NULL:
        if self.lni == NULL:
            raise CxiUserError("the LNI is closed")
        return self.lni

    cdef bint _is_closed(self):
        return self.lni == NULL

    cdef int _destroy(self) except -1:
        # children, those others refer to last (PTEs/CQs, then EQs, then MDs)
        cdef list kids = []
        cdef void *p = self._head
        while p != NULL:
            kids.append(<LniObject>p)
            p = (<LniObject>p)._next
        for child in sorted(kids, key=_rank):
            child.close()
        cdef int rc = cxil_destroy_lni(self.lni)
        if rc < 0:
            raise from_rc(rc, "cxil_destroy_lni")
        self.lni = NULL
        return 0

    def alloc_domain(self, vni, pid=None):
        """Allocate a domain on a VNI (``cxil_alloc_domain``): checks VNI access."""
        cdef Domain d = Domain.__new__(Domain)
        cdef unsigned int p = C_PID_ANY if pid is None else pid
        cdef int rc = cxil_alloc_domain(self._live(), _vni(vni), p, &d.dom)
        if rc < 0:
            d.dom = NULL
            raise from_rc(rc, "cxil_alloc_domain", detail=f"VNI {vni}")
        return _adopt(self, d, 0)

    def alloc_cp(self, vni, tc="BEST_EFFORT", tc_type=0):
        """Allocate a communication profile (``cxil_alloc_cp``): checks VNI and TC."""
        return self._alloc_trig_cp(vni, tc, tc_type, _ANY_LCID)

    def alloc_trig_cp(self, vni, tc="BEST_EFFORT", tc_type=0, cp_type=_ANY_LCID):
        """``cxil_alloc_trig_cp``: ``cp_type`` 0 (TRIG_LCID) asks for LCID 0, 1
        (NON_TRIG_LCID) for another one, 2 (ANY_LCID) for any, as ``alloc_cp`` does."""
        return self._alloc_trig_cp(vni, tc, tc_type, cp_type)

    cdef object _alloc_trig_cp(self, object vni, object tc, object tc_type, object cp_type):
        cdef Cp c = Cp.__new__(Cp)
        cdef cxil_lni *lni = self._live()
        cdef uint32_t v, t, tt, ct
        # exact ints and TC names take C paths; anything else the general checks
        v = _bounded(vni, _U32_MAX, "VNI {!r} is not valid")
        if type(tc) is str and tc in _TC_BY_NAME:
            t = _TC_BY_NAME[tc]
        elif not (_is_u32(tc, &t) and t < 8):
            t = tc if isinstance(tc, int) and not isinstance(tc, bool) and 0 <= tc < 8 else tc_index(tc)
        tt = _bounded(tc_type, 3, "tc_type must be 0..3, got {!r}")
        ct = _bounded(cp_type, _ANY_LCID,
                      "cp_type must be 0..2 (TRIG_LCID, NON_TRIG_LCID, ANY_LCID), got {!r}")
        cdef int rc = cxil_alloc_trig_cp(lni, v, <cxi_traffic_class>t,
                                         <cxi_traffic_class_type>tt, <cxi_trig_cp>ct, &c.cp)
        if rc < 0:
            c.cp = NULL
            raise from_rc(rc, "cxil_alloc_cp" if ct == <uint32_t>_ANY_LCID else "cxil_alloc_trig_cp",
                          detail=f"VNI {vni}")
        return _adopt(self, c, 0)

    def map(self, buf, flags=None):
        """Map a buffer (``cxil_map``; anything with the buffer protocol, kept alive by the
        returned :class:`Md`).  ``flags`` default PIN|READ|WRITE.  Each distinct set of
        flags (READ/WRITE aside) needs an address context (AC) of the service."""
        cdef Md m = Md.__new__(Md)
        cdef cxil_lni *lni = self._live()
        cdef Py_buffer view
        cdef uint32_t f = _MAP_DEFAULT if flags is None else _u32(flags, "map flags")
        cdef int rc
        PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
        try:
            rc = cxil_map(lni, view.buf, view.len, f, NULL, &m.md)
        finally:
            PyBuffer_Release(&view)
        if rc < 0:
            m.md = NULL
            raise from_rc(rc, "cxil_map", detail=f"AC for flags {f:#x}, svc_id {self.svc_id}")
        m.buf = buf
        return _adopt(self, m, 3)

    def alloc_evtq(self, Md md=None, queue=None, flags=0):
        """Allocate an event queue (``cxil_alloc_evtq``).  Its buffer is ``queue`` (page
        aligned, e.g. an ``mmap``) or, by default, the whole of ``md``'s buffer; with
        ``CXI_EQ_PASSTHROUGH`` in ``flags`` no MD is needed."""
        cdef Eq e = Eq.__new__(Eq)
        cdef cxil_lni *lni = self._live()
        cdef cxi_eq_attr attr
        cdef Py_buffer view
        cdef int rc
        memset(&attr, 0, sizeof(attr))
        attr.flags = _u32(flags, "EQ flags")
        if queue is None:
            if md is None or md.md == NULL:
                raise CxiUserError("alloc_evtq needs an open md or a queue buffer")
            queue = md.buf
        PyObject_GetBuffer(queue, &view, PyBUF_SIMPLE)
        try:
            attr.queue = view.buf
            attr.queue_len = view.len
            rc = cxil_alloc_evtq(lni, md.md if md is not None else NULL, &attr, NULL, NULL,
                                 &e.eq)
        finally:
            PyBuffer_Release(&view)
        if rc < 0:
            e.eq = NULL
            raise from_rc(rc, "cxil_alloc_evtq", detail=f"EQ, svc_id {self.svc_id}")
        e.md = md
        e.queue = queue
        return _adopt(self, e, 2)

    def alloc_pte(self, Eq eq=None, is_matching=False, ethernet=False):
        """Allocate a portal table entry (``cxil_alloc_pte``), with or without an EQ."""
        cdef Pte p = Pte.__new__(Pte)
        cdef cxil_lni *lni = self._live()
        cdef cxi_pt_alloc_opts opts
        memset(&opts, 0, sizeof(opts))
        opts.is_matching = 1 if is_matching else 0
        opts.ethernet = 1 if ethernet else 0
        cdef int rc = cxil_alloc_pte(lni, _eq_ptr(eq), &opts, &p.pte)
        if rc < 0:
            p.pte = NULL
            raise from_rc(rc, "cxil_alloc_pte", detail=f"PTE, svc_id {self.svc_id}")
        p.eq = eq
        return _adopt(self, p, 1)

    def alloc_cmdq(self, Eq eq=None, *, transmit=False, count=1024, lcid=0, flags=0,
                   policy=0, lpe_cdt_thresh_id=0):
        """Allocate a command queue (``cxil_alloc_cmdq``): ``transmit=True`` (or
        ``CXI_CQ_IS_TX`` in ``flags``) takes a TXQ and needs a CP of this LNI holding
        ``lcid``; otherwise a target queue (TGQ)."""
        cdef Cq q = Cq.__new__(Cq)
        cdef cxil_lni *lni = self._live()
        cdef cxi_cq_alloc_opts opts
        memset(&opts, 0, sizeof(opts))
        opts.count = _u32(count, "count")
        opts.flags = _u32(flags, "CQ flags") | (CXI_CQ_IS_TX if transmit else 0)
        opts.lcid = _u32(lcid, "lcid")
        opts.policy = <cxi_cq_update_policy>_u32(policy, "policy")
        opts.lpe_cdt_thresh_id = _u32(lpe_cdt_thresh_id, "lpe_cdt_thresh_id")
        cdef int rc = cxil_alloc_cmdq(lni, _eq_ptr(eq), &opts, &q.cq)
        if rc < 0:
            q.cq = NULL
            raise from_rc(rc, "cxil_alloc_cmdq", detail=("TXQ" if opts.flags & CXI_CQ_IS_TX else "TGQ") + f", svc_id {self.svc_id}")
        q.eq = eq
        q.transmit = (opts.flags & CXI_CQ_IS_TX) != 0
        return _adopt(self, q, 1)

    def alloc_ct(self):
        """Allocate a counting event (``cxil_alloc_ct``, without a write-back buffer)."""
        cdef Ct c = Ct.__new__(Ct)
        cdef int rc = cxil_alloc_ct(self._live(), NULL, &c.ct)
        if rc < 0:
            c.ct = NULL
            raise from_rc(rc, "cxil_alloc_ct", detail=f"CT, svc_id {self.svc_id}")
        return _adopt(self, c, 0)

    def __repr__(self):
        return f"<pycxi.Lni svc_id={self.svc_id}{' closed' if self.lni == NULL else ''}>"


cdef int _ANY_LCID = 2            # enum cxi_trig_cp: TRIG_LCID, NON_TRIG_LCID, ANY_LCID
_TC_BY_NAME = {n: i for i, n in enumerate(TC_NAMES)}   # alloc_cp's common case
cdef uint32_t _MAP_DEFAULT = CXI_MAP_PIN | CXI_MAP_READ | CXI_MAP_WRITE


cdef inline bint _is_u32(object v, uint32_t *out):
    """The common case, without Python-level comparisons: an int 0..2**32-1."""
    cdef int overflow = 0
    cdef long long x
    if type(v) is not int:
        return False
    x = PyLong_AsLongLongAndOverflow(v, &overflow)
    if overflow or (x >> 32) != 0:
        return False
    out[0] = <uint32_t>x
    return True


cdef inline uint32_t _bounded(object v, uint32_t hi, str msg) except? 0xFFFFFFFF:
    """An int 0..hi (not a bool), else CxiUserError(msg.format(v)): exact ints in C."""
    cdef uint32_t x
    if _is_u32(v, &x) and x <= hi:
        return x
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
        raise CxiUserError(msg.format(v))
    return <uint32_t>v


cdef inline uint32_t _u32(object v, str what) except? 0xFFFFFFFF:
    cdef uint32_t x
    if _is_u32(v, &x):
        return x
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _U32_MAX:
        raise CxiUserError(f"{what}: expected an integer 0..{_U32_MAX}, got {v!r}")
    if v == _U32_MAX:
        return 0xFFFFFFFF
    return v


cdef cxi_eq *_eq_ptr(Eq eq) except? NULL:
    if eq is None:
        return NULL
    if eq.eq == NULL:
        raise CxiUserError("the EQ is closed")
    return eq.eq


def _rank(LniObject o):
    return o.rank


cdef object _adopt(Lni lni, LniObject child, int rank):
    child.lni = lni
    child.rank = rank
    child._next = lni._head
    if lni._head != NULL:
        (<LniObject>lni._head)._prev = <void *>child
    lni._head = <void *>child
    child._linked = True
    return child


@cython.no_gc_clear   # its LNI must outlive it: see LniObject._unlink
cdef class LniObject(CxiObject):
    """An object allocated on an :class:`Lni` (created by its ``alloc_*``/``map``)."""

    # No __dealloc__ here: each type's own releases its C object, then unlinks it
    # (one __dealloc__ per object freed, not two: each costs an exception save/restore).

    cdef void _unlink(self):
        # borrowed pointers: an object leaves its LNI's list when closed or freed
        if not self._linked:
            return
        self._linked = False
        if self._prev != NULL:
            (<LniObject>self._prev)._next = self._next
        elif self.lni is not None:
            self.lni._head = self._next
        if self._next != NULL:
            (<LniObject>self._next)._prev = self._prev
        self._prev = self._next = NULL

    def close(self):
        """Release the object (``cxil_destroy_*``/``cxil_unmap``); a second call does nothing."""
        if not self._is_closed():
            self._destroy()
            self._unlink()

    def __init__(self):
        raise TypeError(f"use the Lni's methods to allocate a {type(self).__name__}")

    def __repr__(self):
        return f"<pycxi.{type(self).__name__}{' closed' if self._is_closed() else ''}>"


@cython.no_gc_clear   # its LNI must outlive it: see LniObject._unlink
@cython.final
cdef class Domain(LniObject):
    """A domain (VNI, PID) allocated on an LNI."""

    def __cinit__(self):
        self.dom = NULL

    def __dealloc__(self):
        if self.dom != NULL:
            cxil_destroy_domain(self.dom)
            self.dom = NULL
        self._unlink()

    cdef bint _is_closed(self):
        return self.dom == NULL

    cdef int _destroy(self) except -1:
        cdef int rc = cxil_destroy_domain(self.dom)
        if rc < 0:
            raise from_rc(rc, "cxil_destroy_domain")
        self.dom = NULL
        return 0

    @property
    def vni(self):
        return self.dom.vni if self.dom != NULL else None

    @property
    def pid(self):
        return self.dom.pid if self.dom != NULL else None


@cython.no_gc_clear   # its LNI must outlive it: see LniObject._unlink
@cython.final
cdef class Cp(LniObject):
    """A communication profile allocated on an LNI (``lcid`` is what a TXQ names)."""

    def __cinit__(self):
        self.cp = NULL

    def __dealloc__(self):
        if self.cp != NULL:
            cxil_destroy_cp(self.cp)
            self.cp = NULL
        self._unlink()

    cdef bint _is_closed(self):
        return self.cp == NULL

    cdef int _destroy(self) except -1:
        cdef int rc = cxil_destroy_cp(self.cp)
        if rc < 0:
            raise from_rc(rc, "cxil_destroy_cp")
        self.cp = NULL
        return 0

    @property
    def vni(self):
        return self.cp.vni if self.cp != NULL else None

    @property
    def lcid(self):
        return self.cp.lcid if self.cp != NULL else None


@cython.no_gc_clear   # its LNI must outlive it: see LniObject._unlink
@cython.final
cdef class Md(LniObject):
    """A memory descriptor (``cxil_map``); :meth:`close` is ``cxil_unmap``.  Its AC stays
    charged to the service until the LNI is destroyed, as on the hardware."""

    def __cinit__(self):
        self.md = NULL

    def __dealloc__(self):
        if self.md != NULL:
            cxil_unmap(self.md)
            self.md = NULL
        self._unlink()

    cdef bint _is_closed(self):
        return self.md == NULL

    cdef int _destroy(self) except -1:
        cdef int rc = cxil_unmap(self.md)
        if rc < 0:
            raise from_rc(rc, "cxil_unmap")
        self.md = NULL
        return 0

    def unmap(self):
        self.close()

    @property
    def va(self):
        return self.md.va if self.md != NULL else None

    @property
    def len(self):
        return self.md.len if self.md != NULL else None

    @property
    def iova(self):
        return self.md.iova if self.md != NULL else None

    @property
    def lac(self):
        return self.md.lac if self.md != NULL else None


@cython.no_gc_clear   # its LNI must outlive it: see LniObject._unlink
@cython.final
cdef class Eq(LniObject):
    """An event queue (``cxil_alloc_evtq``); ``EBUSY`` on close while a PTE or CQ uses it."""

    def __cinit__(self):
        self.eq = NULL

    def __dealloc__(self):
        if self.eq != NULL:
            cxil_destroy_evtq(self.eq)
            self.eq = NULL
        self._unlink()

    cdef bint _is_closed(self):
        return self.eq == NULL

    cdef int _destroy(self) except -1:
        cdef int rc = cxil_destroy_evtq(self.eq)
        if rc < 0:
            raise from_rc(rc, "cxil_destroy_evtq")
        self.eq = NULL
        return 0

    @property
    def eqn(self):
        return self.eq.eqn if self.eq != NULL else None


@cython.no_gc_clear   # its LNI must outlive it: see LniObject._unlink
@cython.final
cdef class Pte(LniObject):
    """A portal table entry (``cxil_alloc_pte``)."""

    def __cinit__(self):
        self.pte = NULL

    def __dealloc__(self):
        if self.pte != NULL:
            cxil_destroy_pte(self.pte)
            self.pte = NULL
        self._unlink()

    cdef bint _is_closed(self):
        return self.pte == NULL

    cdef int _destroy(self) except -1:
        cdef int rc = cxil_destroy_pte(self.pte)
        if rc < 0:
            raise from_rc(rc, "cxil_destroy_pte")
        self.pte = NULL
        return 0

    @property
    def ptn(self):
        return self.pte.ptn if self.pte != NULL else None


@cython.no_gc_clear   # its LNI must outlive it: see LniObject._unlink
@cython.final
cdef class Cq(LniObject):
    """A command queue (``cxil_alloc_cmdq``): a TXQ if ``transmit``, else a TGQ."""

    def __cinit__(self):
        self.cq = NULL

    def __dealloc__(self):
        if self.cq != NULL:
            cxil_destroy_cmdq(self.cq)
            self.cq = NULL
        self._unlink()

    cdef bint _is_closed(self):
        return self.cq == NULL

    cdef int _destroy(self) except -1:
        cdef int rc = cxil_destroy_cmdq(self.cq)
        if rc < 0:
            raise from_rc(rc, "cxil_destroy_cmdq")
        self.cq = NULL
        return 0

    @property
    def size(self):
        return self.cq.size if self.cq != NULL else None


@cython.no_gc_clear   # its LNI must outlive it: see LniObject._unlink
@cython.final
cdef class Ct(LniObject):
    """A counting event (``cxil_alloc_ct``)."""

    def __cinit__(self):
        self.ct = NULL

    def __dealloc__(self):
        if self.ct != NULL:
            cxil_destroy_ct(self.ct)
            self.ct = NULL
        self._unlink()

    cdef bint _is_closed(self):
        return self.ct == NULL

    cdef int _destroy(self) except -1:
        cdef int rc = cxil_destroy_ct(self.ct)
        if rc < 0:
            raise from_rc(rc, "cxil_destroy_ct")
        self.ct = NULL
        return 0

    @property
    def ctn(self):
        return self.ct.ctn if self.ct != NULL else None


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
            "reserved": {RSRC_TYPES[t]: st.reserved[t] for t in range(CXI_RSRC_TYPE_MAX)}}


def sim_check(dev=0):
    """Verify the software device's invariants; raises CxiLibError(EUCLEAN) with why."""
    cdef char msg[256]
    msg[0] = 0
    cdef int rc = pycxi_sim_check(_dev_id_of(dev), msg, sizeof(msg))
    if rc < 0:
        raise from_rc(rc, "pycxi_sim_check", detail=msg.decode())


# -- namespace pinning (the CNI plugin keeps a pod's netns alive while its service exists) ----
cdef extern from "<sys/mount.h>" nogil:
    int c_mount "mount"(const char *source, const char *target, const char *fstype,
                        unsigned long flags, const void *data)
    int c_umount2 "umount2"(const char *target, int flags)
    enum: MS_BIND
    enum: MNT_DETACH
    enum: UMOUNT_NOFOLLOW

from libc.errno cimport errno as c_errno
import os as _os


def mount_bind(source, target):
    """``mount --bind source target``; ``source`` may be ``/proc/self/fd/N`` of an nsfs file,
    which pins that namespace until the mount is removed (what ``ip netns add`` does).  Here and
    not in the standard library: Python has no mount(2), and ctypes costs the CNI path ~6 ms."""
    cdef bytes s = _os.fsencode(source)
    cdef bytes t = _os.fsencode(target)
    if c_mount(s, t, NULL, MS_BIND, NULL) != 0:
        err = c_errno
        raise OSError(err, _os.strerror(err), target)


def umount(target):
    """Lazily detach the mount at ``target`` (umount2 MNT_DETACH|UMOUNT_NOFOLLOW)."""
    cdef bytes t = _os.fsencode(target)
    if c_umount2(t, MNT_DETACH | UMOUNT_NOFOLLOW) != 0:
        err = c_errno
        raise OSError(err, _os.strerror(err), target)
