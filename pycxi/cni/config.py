"""Network configuration: stdin bytes -> :class:`NetConf` (a pure function, no I/O).

Merge order (tuning's ``parseConf``): the plugin's static configuration, then the runtime's
``runtimeConfig`` (nothing is consumed from it today), then ``CNI_ARGS`` (only the pod's
identity, ``K8S_POD_NAMESPACE``/``K8S_POD_NAME``; never a VNI).  ``args`` is accepted and
ignored: with Multus it can carry values the pod's author wrote, so no VNI is taken from it.

Invalid values are rejected with code 7, naming the key.  Unknown keys are ignored with a
warning in the log (``NetConf.warnings``), as the Go plugins' JSON decoding ignores them: a
config written for a newer plugin must not block every sandbox on the node.

What grants a VNI is not decided here: ``vnis``, the local allocator's database, ranges and
quarantine and the Kubernetes kubeconfig are checked against the node's own policy file
(:mod:`pycxi.cni.policy`), because under Multus a tenant writes this configuration.
"""
from pycxi.cni.errors import (CniError, ERR_DECODE, ERR_INCOMPATIBLE_VERSION,
                              ERR_INVALID_CONFIG)
from pycxi.cni.layout import DEFAULT_DATA_DIR  # noqa: F401  (re-exported)

SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")   # = pycxi.cni.plugin._VERSIONS (not imported there)
DEFAULT_TCS = ("LOW_LATENCY", "BEST_EFFORT")
TC_NAMES = ("DEDICATED_ACCESS", "LOW_LATENCY", "BULK_DATA", "BEST_EFFORT", "ETH")
RSRC_NAMES = ("PTE", "TXQ", "TGQ", "EQ", "CT", "LE", "TLE", "AC")
MAX_VNIS = 4
MAX_VNI = 65535

# Per-pod limits (resource_limits=1).  Nothing is reserved (res 0), so admission never
# fails for lack of reserved resources and no LE pool is taken on main; TLE max=res=0 so
# no service takes one of the 4 TLE pools.  The max values are caps on the shared pool,
# clamped to the device's totals at ADD.  See docs/cni.md, "Resource limits".
DEFAULT_LIMITS = {
    "PTE": (2048, 0), "TXQ": (1024, 0), "TGQ": (512, 0), "EQ": (2047, 0),
    "CT": (2047, 0), "LE": (16384, 0), "TLE": (0, 0), "AC": (1022, 0),
}

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_NAME_CHARS = _ALNUM | frozenset("_.-")
NAME_PATTERN = "^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$"   # libcni's network name / container ID rule


def valid_name(s):
    """``NAME_PATTERN`` without compiling a regular expression on every plugin start."""
    return (isinstance(s, str) and s != "" and s[0] in _ALNUM
            and all(c in _NAME_CHARS for c in s))


def _devname(s):
    return isinstance(s, str) and s.startswith("cxi") and s[3:].isdigit() and 1 <= len(s) - 3 <= 4 \
        and s[3:].isascii()

# keys the runtime may put into the request next to ours
_RUNTIME_KEYS = frozenset(("cniVersion", "name", "type", "prevResult", "runtimeConfig", "args",
                           "capabilities"))
_OWN_KEYS = frozenset(("devices", "vnis", "tcs", "limits", "dataDir", "localAllocator",
                       "kubernetes", "logFile", "logLevel", "timeout", "destroyRetries",
                       "destroyRetryDelay", "netnsMethod"))
NETNS_METHODS = ("auto", "member", "set_netns")
_LOCAL_KEYS = frozenset(("path", "ranges", "quarantine", "key"))
_K8S_KEYS = frozenset(("kubeconfig", "timeout"))
LOG_LEVELS = ("error", "warning", "info", "debug")


def version_tuple(v):
    """'1.0.0' -> (1, 0, 0); anything else -> None."""
    if not isinstance(v, str):
        return None
    parts = v.split(".")
    if len(parts) != 3 or not all(p.isdigit() and len(p) < 6 for p in parts):
        return None
    return tuple(int(p) for p in parts)


class NetConf:
    """The parsed configuration of one ``cxi`` plugin invocation (a plain record)."""

    __slots__ = ("cni_version", "name", "type", "prev_result", "runtime_config", "devices",
                 "vnis", "tcs", "limits", "data_dir", "local_allocator", "kubernetes",
                 "log_file", "log_level", "timeout", "destroy_retries", "destroy_retry_delay",
                 "netns_method", "valid_attachments", "warnings", "command", "raw")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))

    def __repr__(self):
        return "NetConf(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__
                                       if k != "raw") + ")"

    def __eq__(self, other):
        return isinstance(other, NetConf) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)


def _bad(key, why):
    return CniError(ERR_INVALID_CONFIG, f"invalid value for {key!r}", why)


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v):
    return (_int(v) or isinstance(v, float)) and v == v and v not in (float("inf"), float("-inf"))


def decode(stdin):
    """stdin bytes -> dict; code 6 when it is not a JSON object."""
    import json
    try:
        if isinstance(stdin, (bytes, bytearray)):
            stdin = bytes(stdin).decode("utf-8")
        conf = json.loads(stdin)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CniError(ERR_DECODE, "failed to decode the network configuration",
                       f"{type(exc).__name__}: {exc}") from None
    if not isinstance(conf, dict):
        raise CniError(ERR_DECODE, "the network configuration is not a JSON object",
                       f"got {type(conf).__name__}")
    return conf


def check_version(conf):
    """Return the request's cniVersion, or raise code 1 (unsupported) / 7 (malformed)."""
    v = conf.get("cniVersion")
    if v is None:
        raise CniError(ERR_INCOMPATIBLE_VERSION, "cniVersion is missing",
                       f"supported versions: {', '.join(SUPPORTED_VERSIONS)}")
    if not isinstance(v, str) or version_tuple(v) is None:
        raise _bad("cniVersion", f"not a version string: {v!r}")
    if v not in SUPPORTED_VERSIONS:
        raise CniError(ERR_INCOMPATIBLE_VERSION, f"incompatible CNI version {v}",
                       f"supported versions: {', '.join(SUPPORTED_VERSIONS)}")
    return v


def _parse_vnis(key, v):
    if not isinstance(v, list) or not v or len(v) > MAX_VNIS:
        raise _bad(key, f"a list of 1 to {MAX_VNIS} VNIs is required, got {v!r}")
    for x in v:
        if not _int(x) or not 1 <= x <= MAX_VNI:
            raise _bad(key, f"VNI {x!r} is not an integer in 1..{MAX_VNI}")
    if len(set(v)) != len(v):
        raise _bad(key, f"duplicate VNIs in {v!r}")
    return list(v)


def _parse_limits(v, warnings):
    if v is None:
        return None     # resource_limits=0: each service takes a TLE pool (3 per NIC!)
    if not isinstance(v, dict):
        raise _bad("limits", f"an object of resource -> {{max, res}} or null is required, got {v!r}")
    out = dict(DEFAULT_LIMITS)
    _unknown("limits", [k for k in v if k not in RSRC_NAMES], RSRC_NAMES, warnings)
    for name, lim in v.items():
        if name not in RSRC_NAMES:
            continue
        if isinstance(lim, list) and len(lim) == 2:
            mx, res = lim
        elif isinstance(lim, dict) and set(lim) <= {"max", "res"} and "max" in lim:
            mx, res = lim["max"], lim.get("res", 0)
        else:
            raise _bad(f"limits.{name}", f"expected {{\"max\": N, \"res\": N}} or [max, res], got {lim!r}")
        if not (_int(mx) and _int(res) and 0 <= res <= mx <= 65535):
            raise _bad(f"limits.{name}", f"need integers 0 <= res <= max <= 65535, got max={mx!r} res={res!r}")
        out[name] = (mx, res)
    return out


def _unknown(where, keys, known, warnings):
    if keys:
        warnings.append(f"ignoring unknown configuration key(s) {', '.join(map(repr, sorted(keys)))}"
                        f"{' in ' + where if where else ''} (known: {', '.join(sorted(known))})")


def _object(key, v, allowed, warnings):
    """A nested config object: a dict; keys other than ``allowed`` are ignored with a warning."""
    if not isinstance(v, dict):
        raise _bad(key, f"an object is required, got {v!r}")
    _unknown(key, [k for k in v if k not in allowed], allowed, warnings)


def parse_ranges(key, ranges):
    """``[[lo, hi], ...]`` -> ``[(lo, hi), ...]`` (code 7 naming ``key``)."""
    if not isinstance(ranges, list) or not ranges:
        raise _bad(key, f"a non-empty list of [lo, hi] is required, got {ranges!r}")
    rr = []
    for r in ranges:
        if not (isinstance(r, list) and len(r) == 2 and _int(r[0]) and _int(r[1])
                and 1 <= r[0] <= r[1] <= MAX_VNI):
            raise _bad(key, f"[lo, hi] with 1 <= lo <= hi <= {MAX_VNI} required, got {r!r}")
        rr.append((r[0], r[1]))
    return rr


def abs_path(key, path):
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise _bad(key, f"an absolute path is required, got {path!r}")
    return path


def _parse_local(v, warnings):
    """``path``, ``ranges`` and ``quarantine`` may be omitted (None): the node's policy file
    sets them, and :func:`pycxi.cni.policy.apply` refuses values that differ from it."""
    _object("localAllocator", v, _LOCAL_KEYS, warnings)
    path = v.get("path")
    if path is not None:
        abs_path("localAllocator.path", path)
    ranges = v.get("ranges")
    rr = None if ranges is None else parse_ranges("localAllocator.ranges", ranges)
    q = v.get("quarantine")
    if q is not None and (not _number(q) or q < 0):
        raise _bad("localAllocator.quarantine", f"seconds >= 0 required, got {q!r}")
    key = v.get("key")
    if key is not None and (not isinstance(key, str) or not key or len(key) > 253):
        raise _bad("localAllocator.key", f"a non-empty string is required, got {key!r}")
    return {"path": path, "ranges": rr, "quarantine": q, "key": key}


def _parse_k8s(v, warnings):
    _object("kubernetes", v, _K8S_KEYS, warnings)
    kc = v.get("kubeconfig")
    if kc is not None and (not isinstance(kc, str) or not kc.startswith("/") or "\0" in kc):
        raise _bad("kubernetes.kubeconfig", f"an absolute path is required, got {kc!r}")
    t = v.get("timeout", 2.0)
    if not _number(t) or not 0 < t <= 30:
        raise _bad("kubernetes.timeout", f"seconds in (0, 30] required, got {t!r}")
    return {"kubeconfig": kc, "timeout": float(t)}


def parse_conf(stdin, command="ADD"):
    """Parse and validate the request.  Raises :class:`CniError` (codes 1, 6, 7)."""
    raw = stdin if isinstance(stdin, dict) else decode(stdin)
    version = check_version(raw)
    name = raw.get("name")
    if not valid_name(name) or len(name) > 253:
        raise _bad("name", f"a network name matching {NAME_PATTERN} is required, got {name!r}")
    typ = raw.get("type")
    if typ is not None and not isinstance(typ, str):
        raise _bad("type", f"a string is required, got {typ!r}")
    warnings = []
    _unknown("", [k for k in raw if k not in _RUNTIME_KEYS and k not in _OWN_KEYS
                  and not k.startswith("cni.dev/")], _OWN_KEYS, warnings)

    prev = raw.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise _bad("prevResult", f"an object is required, got {type(prev).__name__}")
    rc = raw.get("runtimeConfig")
    if rc is not None and not isinstance(rc, dict):
        raise _bad("runtimeConfig", f"an object is required, got {type(rc).__name__}")
    args = raw.get("args")
    if args is not None and not isinstance(args, dict):
        raise _bad("args", f"an object is required, got {type(args).__name__}")

    devices = raw.get("devices", "all")
    if devices == "all" or devices is None:
        devices = None
    elif isinstance(devices, list) and devices and all(_devname(d) for d in devices):
        if len(set(devices)) != len(devices):
            raise _bad("devices", f"duplicate devices in {devices!r}")
        devices = list(devices)
    else:
        raise _bad("devices", f"\"all\" or a non-empty list of names like \"cxi0\" is required, got {devices!r}")

    vnis = raw.get("vnis")
    if vnis is not None:
        vnis = _parse_vnis("vnis", vnis)

    tcs = raw.get("tcs", list(DEFAULT_TCS))
    if tcs == "all":
        tcs = None
    elif isinstance(tcs, list) and tcs and all(isinstance(t, str) and t in TC_NAMES for t in tcs):
        if len(set(tcs)) != len(tcs):
            raise _bad("tcs", f"duplicate traffic classes in {tcs!r}")
        tcs = list(tcs)
    else:
        raise _bad("tcs", f"\"all\" or a non-empty list of {', '.join(TC_NAMES)} is required, got {tcs!r}")

    limits = _parse_limits(raw["limits"], warnings) if "limits" in raw else dict(DEFAULT_LIMITS)

    data_dir = raw.get("dataDir", DEFAULT_DATA_DIR)
    if not isinstance(data_dir, str) or not data_dir.startswith("/") or "\0" in data_dir:
        raise _bad("dataDir", f"an absolute path is required, got {data_dir!r}")

    local = (_parse_local(raw["localAllocator"], warnings)
             if raw.get("localAllocator") is not None else None)
    k8s = _parse_k8s(raw["kubernetes"], warnings) if raw.get("kubernetes") is not None else None

    log_file = raw.get("logFile")
    if log_file is not None and (not isinstance(log_file, str) or not log_file.startswith("/")
                                 or "\0" in log_file):
        raise _bad("logFile", f"an absolute path is required, got {log_file!r}")
    log_level = raw.get("logLevel", "warning")
    if log_level not in LOG_LEVELS:
        raise _bad("logLevel", f"one of {', '.join(LOG_LEVELS)} is required, got {log_level!r}")

    timeout = raw.get("timeout", 30)
    if not _number(timeout) or not 1 <= timeout <= 600:
        raise _bad("timeout", f"seconds in [1, 600] required, got {timeout!r}")
    retries = raw.get("destroyRetries", 5)
    if not _int(retries) or not 0 <= retries <= 100:
        raise _bad("destroyRetries", f"an integer in 0..100 is required, got {retries!r}")
    delay = raw.get("destroyRetryDelay", 0.1)
    if not _number(delay) or not 0 <= delay <= 5:
        raise _bad("destroyRetryDelay", f"seconds in [0, 5] required, got {delay!r}")

    method = raw.get("netnsMethod", "auto")
    if method not in NETNS_METHODS:
        raise _bad("netnsMethod", f"one of {', '.join(NETNS_METHODS)} is required, got {method!r}")

    valid = None
    if command == "GC":
        va = raw.get("cni.dev/valid-attachments", [])
        if not isinstance(va, list):
            raise _bad("cni.dev/valid-attachments", "a list is required")
        valid = set()
        for a in va:
            if not (isinstance(a, dict) and isinstance(a.get("containerID"), str)
                    and isinstance(a.get("ifname"), str)):
                raise _bad("cni.dev/valid-attachments",
                           f"entries must be {{\"containerID\": str, \"ifname\": str}}, got {a!r}")
            valid.add((a["containerID"], a["ifname"]))

    return NetConf(cni_version=version, name=name, type=typ, prev_result=prev,
                   runtime_config=rc or {}, devices=devices, vnis=vnis, tcs=tcs, limits=limits,
                   data_dir=data_dir, local_allocator=local, kubernetes=k8s, log_file=log_file,
                   log_level=log_level, timeout=timeout, destroy_retries=retries,
                   destroy_retry_delay=float(delay), netns_method=method,
                   valid_attachments=valid, warnings=warnings, command=command, raw=raw)


def parse_cni_args(s):
    """``CNI_ARGS`` ("K=V;K=V") -> dict; malformed pairs are ignored (the variable is optional)."""
    out = {}
    if not s:
        return out
    for pair in s.split(";"):
        k, sep, v = pair.partition("=")
        if sep and k:
            out[k] = v
    return out
