"""The dispatcher, after ``pkg/skel/skel.go``: environment table, validation, version checks,
one stdin read, and any exception turned into the CNI error JSON on stdout with exit 1.

:func:`dispatch` is pure apart from the handlers it calls: it takes an environment dict and a
function returning the stdin bytes, and returns ``(exit_code, stdout_text)``.  So the same
logic could later be served by a node daemon without change.
"""
import json

from pycxi.cni.config import NAME_PATTERN, SUPPORTED_VERSIONS, decode, valid_name, version_tuple
from pycxi.cni.errors import (CniError, ERR_INCOMPATIBLE_VERSION, ERR_INVALID_ENV,
                              from_exception)

ABOUT = "CNI cxi plugin (pycxi): a per-pod CXI service bound to the pod's network namespace"

# verb -> (required variables, minimum cniVersion); per SPEC section 2 (CNI_PATH optional for
# ADD/DEL/CHECK, unlike skel; CNI_NETNS optional for DEL)
VERBS = {
    "ADD": (("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"), (0, 1, 0)),
    "DEL": (("CNI_COMMAND", "CNI_CONTAINERID", "CNI_IFNAME"), (0, 1, 0)),
    "CHECK": (("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"), (0, 4, 0)),
    "GC": (("CNI_COMMAND", "CNI_PATH"), (1, 1, 0)),
    "STATUS": (("CNI_COMMAND",), (1, 1, 0)),
    "VERSION": (("CNI_COMMAND",), None),
}

_LATEST = SUPPORTED_VERSIONS[-1]


def validate_container_id(cid):
    if not valid_name(cid) or len(cid) > 1024:
        raise CniError(ERR_INVALID_ENV, "invalid characters in CNI_CONTAINERID",
                       f"must match {NAME_PATTERN}, got {cid!r}")


def validate_ifname(name):
    if not name:
        raise CniError(ERR_INVALID_ENV, "CNI_IFNAME is empty")
    if len(name) > 15:
        raise CniError(ERR_INVALID_ENV, "CNI_IFNAME is too long", f"{name!r} > 15 characters")
    if name in (".", "..") or any(c in name for c in "/:") or any(c.isspace() for c in name) \
            or "\0" in name:
        raise CniError(ERR_INVALID_ENV, "CNI_IFNAME contains invalid characters", repr(name))


def _error_out(err, version):
    return 1, json.dumps(err.to_dict(version or _LATEST)) + "\n"


def dispatch(env, read_stdin, handlers, log_factory=None):
    """Run one CNI request.  ``handlers`` maps ADD/DEL/CHECK/GC/STATUS to
    ``f(conf, env, log) -> dict | None``; ``log_factory(conf)`` builds the logger."""
    version = None
    try:
        cmd = env.get("CNI_COMMAND", "")
        if cmd == "":
            import sys
            sys.stderr.write(f"{ABOUT}\nCNI protocol versions supported: "
                             f"{', '.join(SUPPORTED_VERSIONS)}\n")
            return 0, ""
        if cmd not in VERBS:
            raise CniError(ERR_INVALID_ENV, f"unknown CNI_COMMAND: {cmd!r}",
                           f"expected one of {', '.join(VERBS)}")
        required, min_version = VERBS[cmd]
        missing = [k for k in required if not env.get(k)]
        if missing:
            raise CniError(ERR_INVALID_ENV, f"required environment variables missing: {', '.join(missing)}",
                           f"{cmd} needs {', '.join(required)}")
        if cmd in ("ADD", "DEL", "CHECK"):
            validate_container_id(env["CNI_CONTAINERID"])
            validate_ifname(env["CNI_IFNAME"])

        data = read_stdin()          # read once, also for VERSION
        if cmd == "VERSION":
            try:
                v = decode(data).get("cniVersion")
            except CniError:
                v = None
            version = v if v in SUPPORTED_VERSIONS else _LATEST
            return 0, json.dumps({"cniVersion": version,
                                  "supportedVersions": list(SUPPORTED_VERSIONS)}) + "\n"

        raw = decode(data)
        v = raw.get("cniVersion")
        if isinstance(v, str) and v in SUPPORTED_VERSIONS:
            version = v
        from pycxi.cni.config import parse_conf
        conf = parse_conf(raw, cmd)
        if version_tuple(conf.cni_version) < min_version:
            raise CniError(ERR_INCOMPATIBLE_VERSION,
                           f"config version {conf.cni_version} does not allow {cmd}",
                           f"{cmd} needs cniVersion >= {'.'.join(map(str, min_version))}")
        log = log_factory(conf) if log_factory else None
        result = handlers[cmd](conf, env, log)
        if result is None:
            return 0, ""
        return 0, json.dumps(result) + "\n"
    except CniError as err:
        return _error_out(err, version)
    except BaseException as exc:   # KeyboardInterrupt/SystemExit too: always a JSON answer
        try:
            err = from_exception(exc)
        except BaseException as exc2:   # pycxi not importable, ...
            err = CniError(999, "internal error", f"{type(exc).__name__}: {exc}; {exc2!r}")
        return _error_out(err, version)
