"""CNI error codes (SPEC section 5 "Error") and the plugin's own (100 and up)."""

# reserved by the specification
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN_LATER = 11
ERR_NOT_AVAILABLE = 50
ERR_LIMITED_CONNECTIVITY = 51

# the plugin's own
ERR_CXI = 100            # a libcxi / device call failed (details: function and errno name)
ERR_VNI_CONFLICT = 101   # a VNI of the pod is owned by another service on the NIC (EEXIST)
ERR_NO_DEVICE = 102      # a configured CXI device does not exist
ERR_STATE = 103          # the state directory cannot be read or written
ERR_VNI_LOOKUP = 104     # the VNI source failed (Kubernetes lookup, local allocator)
ERR_CHECK = 105          # CHECK: a service of this attachment is missing or differs from the record
ERR_GC = 106             # GC: some leftovers could not be removed (all of them in details)
ERR_INTERNAL = 999       # a bug: an unexpected exception (type and message in details)


class CniError(Exception):
    """An error to be reported as the CNI error JSON."""

    def __init__(self, code, msg, details=""):
        super().__init__(msg)
        self.code = int(code)
        self.msg = str(msg)
        self.details = str(details) if details else ""

    def to_dict(self, cni_version):
        out = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def __str__(self):
        return f"[{self.code}] {self.msg}" + (f": {self.details}" if self.details else "")


def from_exception(exc):
    """Translate any exception into a :class:`CniError` (the one translation point).

    * ``CxiUserError`` or ``EINVAL``             -> 7 (invalid network configuration)
    * ``EBUSY``, ``EAGAIN``, ``ENOSPC``            -> 11 (try again later)
    * ``EEXIST`` (VNI owned by another service)  -> 101
    * ``ENODEV``/``ENOENT`` opening a device       -> 102
    * any other libcxi error                     -> 100 with the function and errno name
    * anything else                              -> 999 with the exception type
    """
    if isinstance(exc, CniError):
        return exc
    import errno as _e
    from pycxi.errors import CxiLibError, CxiUserError, errno_name

    if isinstance(exc, CxiUserError):
        return CniError(ERR_INVALID_CONFIG, "invalid CXI service parameters", str(exc))
    if isinstance(exc, CxiLibError):
        err = exc.errno or 0
        func = getattr(exc, "func", "") or "libcxi"
        # "func: strerror (ENAME)[: detail] [fail info]": each part once
        det = str(exc) or f"{func}: {errno_name(err)}"
        if err == _e.EINVAL:
            return CniError(ERR_INVALID_CONFIG, "the device rejected the service parameters", det)
        if err in (_e.EBUSY, _e.EAGAIN, _e.ENOSPC):
            return CniError(ERR_TRY_AGAIN_LATER, "CXI resources temporarily unavailable", det)
        if err == _e.EEXIST:
            return CniError(ERR_VNI_CONFLICT, "a VNI of this pod is already owned by another CXI service", det)
        if err in (_e.ENODEV, _e.ENOENT, _e.ENXIO) and func in ("cxil_open_device", "open"):
            return CniError(ERR_NO_DEVICE, "CXI device not found", det)
        return CniError(ERR_CXI, "CXI device operation failed", det)
    if isinstance(exc, OSError):
        return CniError(ERR_IO, "I/O failure", f"{type(exc).__name__}: {exc}")
    return CniError(ERR_INTERNAL, "internal error", f"{type(exc).__name__}: {exc}")


class PluginTimeout(CniError):
    """The plugin's own deadline (the network configuration's ``timeout``) passed."""

    def __init__(self, seconds):
        super().__init__(ERR_TRY_AGAIN_LATER, f"the cxi plugin timed out after {seconds} s")
