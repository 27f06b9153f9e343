"""The few CXI device operations the plugin needs, over pycxi (the only code that touches a NIC)."""
import errno
import os
import time

import pycxi
from pycxi.errors import CxiLibError

from pycxi.cni.errors import CniError, ERR_NO_DEVICE, ERR_NOT_AVAILABLE, ERR_TRY_AGAIN_LATER

SIM_ENV = "PYCXI_SIM_ROOT"


def require_real_or_chosen():
    """A pycxi built on the software CXI device isolates nothing; on a node with a real NIC it
    would silently "succeed".  So the plugin uses it only when asked explicitly: ``PYCXI_SIM_ROOT``
    set in its environment (the demo, tests and recipes do; the library's own default root is
    never used here).  DEL/GC of a record made on it use the root the record remembers."""
    if pycxi.BACKEND == "sim" and not os.environ.get(SIM_ENV):
        raise CniError(ERR_NOT_AVAILABLE, "this pycxi is built on the software CXI device, which "
                       "isolates nothing; refusing to use it",
                       f"set {SIM_ENV} in the plugin's environment to use the software device on "
                       "purpose (tests, demos), or install a pycxi built against libcxi")

# errnos meaning "no such service" (the kernel answers ENOENT for an unknown ID; be lenient)
GONE = (errno.ENOENT, errno.EINVAL, errno.ENODEV)


def device_names():
    require_real_or_chosen()
    return [d.name for d in pycxi.devices()]


def select_devices(wanted):
    """Names of the devices to use: all of them (``wanted`` None) or the configured list."""
    have = device_names()
    if wanted is None:
        return have
    missing = [d for d in wanted if d not in have]
    if missing:
        raise CniError(ERR_NO_DEVICE, f"CXI device(s) not found: {', '.join(missing)}",
                       f"present: {', '.join(have) or 'none'}")
    return list(wanted)


def open_device(name):
    require_real_or_chosen()
    return pycxi.Device(name)


def alloc_svc(dev, inode, vnis, tcs, limits, method):
    """``Device.alloc_netns_svc``; ENOSPC becomes code 11 naming what ran out, once."""
    try:
        return dev.alloc_netns_svc(inode, vnis=vnis, tcs=tcs, limits=limits, method=method)
    except CxiLibError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise CniError(ERR_TRY_AGAIN_LATER, f"{dev.name}: no room for another CXI service: "
                       f"{exhausted(exc.fail_info, limits)}", str(exc)) from None


def exhausted(fi, limits):
    """What ran out, from ``cxi_svc_fail_info`` and the limits asked for."""
    if fi is None:
        return "resources exhausted (the driver gave no details)"
    out = [f"no {name} pool left" for name, flag in (
        ("LE", fi.no_le_pools), ("TLE", fi.no_tle_pools), ("counter", fi.no_cntr_pools)) if flag]
    avail = getattr(fi, "rsrc_avail", None) or {}
    for name, (mx, res) in (limits or {}).items():
        have = avail.get(name)
        if res and have is not None and res > have:
            out.append(f"{name}: {res} to reserve, {have} left")
    return "; ".join(out) or "resources exhausted"


def clamp_limits(dev, limits):
    """Clamp the configured max values to the device's totals (res untouched)."""
    if limits is None:
        return None
    info = getattr(dev, "info", None)
    out = {}
    for k, (mx, res) in limits.items():
        total = getattr(info, "num_" + k.lower() + "s", None) if info is not None else None
        if isinstance(total, int) and total > 0 and mx > total:
            mx = max(total, res)
        out[k] = (mx, res)
    return out


def svc_netns(dev, svc_id, desc=None):
    """The netns inode a service is bound to (0 when none)."""
    try:
        return int(dev.get_netns(svc_id) or 0)
    except (CxiLibError, AttributeError, NotImplementedError):
        pass
    if desc is None:
        desc = dev.get_svc(svc_id)
    for m in getattr(desc, "members", None) or ():
        kind = str(getattr(m, "type", getattr(m, "kind", ""))).upper()
        if "NET" in kind:
            return int(getattr(m, "value", getattr(m, "id", 0)) or 0)
    return 0


def get_svc(dev, svc_id):
    """SvcDesc, or None when the service does not exist."""
    try:
        return dev.get_svc(svc_id)
    except CxiLibError as exc:
        if exc.errno in GONE:
            return None
        raise


def destroy(dev, svc_id, retries, delay, log):
    """Destroy a service.  Returns "destroyed", "gone" or "busy" (still referenced by LNIs
    after ``retries`` attempts ``delay`` seconds apart; the caller disables it)."""
    for attempt in range(retries + 1):
        try:
            dev.destroy_svc(svc_id)
            return "destroyed"
        except CxiLibError as exc:
            if exc.errno == errno.EBUSY:
                if attempt < retries:
                    time.sleep(delay)
                continue
            if exc.errno in GONE and get_svc(dev, svc_id) is None:
                return "gone"
            raise
    log.warning(f"{dev.name}: service {svc_id} still busy after {retries} retries")
    return "busy"


def disable(dev, svc_id, log):
    """Try to disable a busy service; the driver refuses (EBUSY) while LNIs exist."""
    try:
        dev.svc_enable(svc_id, False)
        return True
    except CxiLibError as exc:
        if exc.errno in (errno.EBUSY,) + GONE:
            log.warning(f"{dev.name}: service {svc_id} cannot be disabled while in use ({exc})")
            return False
        raise
