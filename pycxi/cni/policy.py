"""The node's own policy for the ``cxi`` plugin: what a network configuration may ask for here.

Under Multus a tenant who may create NetworkAttachmentDefinitions writes this plugin's network
configuration.  So nothing in that configuration may grant a VNI by itself: static ``vnis``, the
local allocator's database, ranges and quarantine, and the kubeconfig of the Kubernetes lookup
(a kubeconfig names the API server that says which VNI a pod has) are allowed only as this
root-owned, node-local file says.

The file is :data:`DEFAULT_PATH`, or ``$PYCXI_CNI_POLICY`` in the plugin's own process
environment (the runtime's: no network configuration or ``CNI_ARGS`` can set it).  JSON::

    {"staticVnis": [[4096, 4199]],
     "localAllocator": {"ranges": [[1024, 4095]], "path": "/var/lib/pycxi/vni.db", "quarantine": 90},
     "kubernetes": {"kubeconfig": "/etc/cni/net.d/cxi.d/cxi.kubeconfig"},
     "logDir": "/var/log"}

* ``staticVnis``: the ranges a network's ``vnis`` must lie in.  Absent: no static VNI at all.
* ``localAllocator``: enables the embedded allocator; ``path`` and ``quarantine`` default to
  :data:`pycxi.vni.store.DEFAULT_DB` / ``DEFAULT_QUARANTINE`` (the ``pycxi vni`` defaults), ``ranges``
  to 1024-65535.  Absent: a network's ``localAllocator`` is refused.  A network may narrow the
  ranges, and may repeat ``path``/``quarantine`` only with the node's values.
* ``kubernetes.kubeconfig``: the only kubeconfig a network may use (``null``: the in-cluster
  account).  Default: :data:`DEFAULT_KUBECONFIGS`, where the DaemonSet writes it
  (``<CNI conf dir>/cxi.d/cxi.kubeconfig`` for the standard and k3s conf dirs, both root's).
* ``logDir``: a network's ``logFile`` must lie in this directory (default ``/var/log``): the
  plugin appends to it as root, with text a tenant partly controls (its unknown keys, say).

A missing file is the Kubernetes default: VNIs only from the VNI service.  Static ranges and
allocator ranges must not overlap (the allocator would hand a static network's VNI to a pod).
Refusals are code 7 (invalid network configuration), naming the key and this file.
"""
import os

from pycxi.cni.errors import CniError, ERR_INVALID_CONFIG, ERR_IO

DEFAULT_PATH = "/etc/pycxi/cni-policy.json"
PATH_ENV = "PYCXI_CNI_POLICY"
# <conf dir>/cxi.d/cxi.kubeconfig for pycxi.cni.install's DEFAULT_CONF_DIR and K3S_CONF_DIR
DEFAULT_KUBECONFIGS = ("/etc/cni/net.d/cxi.d/cxi.kubeconfig",
                       "/var/lib/rancher/k3s/agent/etc/cni/net.d/cxi.d/cxi.kubeconfig")
DEFAULT_KUBECONFIG = DEFAULT_KUBECONFIGS[0]
DEFAULT_LOCAL_RANGES = [(1024, 65535)]
DEFAULT_LOG_DIR = "/var/log"
_KEYS = frozenset(("staticVnis", "localAllocator", "kubernetes", "logDir"))


class NodePolicy:
    __slots__ = ("path", "static", "local", "kubeconfigs", "log_dir")

    def __init__(self, path, static=(), local=None, kubeconfigs=DEFAULT_KUBECONFIGS,
                 log_dir=DEFAULT_LOG_DIR):
        self.path = path
        self.static = list(static)      # [(lo, hi)]; empty: no static VNI allowed
        self.local = local              # None or {"path", "ranges", "quarantine"}
        self.kubeconfigs = tuple(kubeconfigs)   # the ones a network may use
        self.log_dir = log_dir

    @property
    def kubeconfig(self):
        """The kubeconfig of a network that names none: the first one present."""
        for kc in self.kubeconfigs:
            if kc is None or os.path.exists(kc):
                return kc
        return self.kubeconfigs[0]


def policy_path(environ=None):
    return (environ if environ is not None else os.environ).get(PATH_ENV) or DEFAULT_PATH


def _bad(path, why):
    return CniError(ERR_INVALID_CONFIG, f"invalid node policy {path}", why)


def load(path=None):
    """Read and validate the policy file (missing: the defaults)."""
    import json
    from pycxi.cni import config as cfg
    path = path or policy_path()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        return NodePolicy(path)
    except OSError as exc:
        raise CniError(ERR_IO, f"cannot read the node policy {path}",
                       f"{type(exc).__name__}: {exc}") from None
    try:
        st = os.fstat(fd)
        import stat
        if not stat.S_ISREG(st.st_mode):
            raise _bad(path, "not a regular file")
        # like sshd's StrictModes: a policy anyone else may edit grants nothing
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
            raise _bad(path, "must be owned by root and writable by its owner only "
                       f"(uid {st.st_uid}, mode {st.st_mode & 0o777:o})")
        data = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    try:
        doc = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(path, f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _bad(path, "a JSON object is required")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:     # the admin's own file: a typo here must not silently grant or deny
        raise _bad(path, f"unknown key(s) {', '.join(map(repr, unknown))} "
                   f"(known: {', '.join(sorted(_KEYS))})")
    try:
        static = cfg.parse_ranges("staticVnis", doc["staticVnis"]) if "staticVnis" in doc else []
        local = None
        la = doc.get("localAllocator")
        if la is not None:
            if not isinstance(la, dict) or set(la) - {"path", "ranges", "quarantine"}:
                raise cfg._bad("localAllocator", "an object with path, ranges, quarantine is required")
            q = la.get("quarantine")
            if q is not None and (not cfg._number(q) or q < 0):
                raise cfg._bad("localAllocator.quarantine", f"seconds >= 0 required, got {q!r}")
            db = la.get("path")
            if db is not None:
                cfg.abs_path("localAllocator.path", db)
            # path/quarantine None: the store's defaults, filled in by local_settings() when
            # the allocator is used (so the static path never imports pycxi.vni)
            local = {"path": db, "quarantine": q,
                     "ranges": (cfg.parse_ranges("localAllocator.ranges", la["ranges"])
                                if "ranges" in la else list(DEFAULT_LOCAL_RANGES))}
        kubeconfigs = DEFAULT_KUBECONFIGS
        k8s = doc.get("kubernetes")
        if k8s is not None:
            if not isinstance(k8s, dict) or set(k8s) - {"kubeconfig"}:
                raise cfg._bad("kubernetes", "an object with kubeconfig is required")
            if "kubeconfig" in k8s:
                kubeconfigs = (k8s["kubeconfig"],)
                if k8s["kubeconfig"] is not None:
                    cfg.abs_path("kubernetes.kubeconfig", k8s["kubeconfig"])
        log_dir = cfg.abs_path("logDir", doc.get("logDir", DEFAULT_LOG_DIR))
    except CniError as exc:
        raise _bad(path, f"{exc.msg}: {exc.details}" if exc.details else exc.msg) from None
    if local is not None:
        for lo, hi in static:
            for alo, ahi in local["ranges"]:
                if lo <= ahi and alo <= hi:
                    raise _bad(path, f"staticVnis {lo}-{hi} overlaps localAllocator.ranges "
                               f"{alo}-{ahi}: the allocator would hand a static network's VNI "
                               "to another pod")
    return NodePolicy(path, static, local, kubeconfigs, log_dir)


def check_log_file(log_file, policy=None):
    """Code 7 unless ``log_file`` (symlinks resolved) lies in the node's ``logDir``: under
    Multus a tenant writes ``logFile``, and the plugin appends to it as root."""
    policy = policy or load()
    real = os.path.realpath(log_file)
    top = os.path.realpath(policy.log_dir).rstrip("/") + "/"
    if not real.startswith(top):
        raise CniError(ERR_INVALID_CONFIG, f"invalid value for 'logFile': {log_file!r}",
                       f"not in the node's log directory {policy.log_dir} "
                       f"(logDir of the node policy {policy.path})")


def local_settings(policy):
    """The node's local allocator with the defaults filled in (``pycxi vni``'s: one database
    and one quarantine per node), or None when the policy does not enable it."""
    if policy.local is None:
        return None
    from pycxi.vni.store import DEFAULT_DB, DEFAULT_QUARANTINE
    la = policy.local
    return {"path": la["path"] if la["path"] is not None else DEFAULT_DB,
            "ranges": list(la["ranges"]),
            "quarantine": la["quarantine"] if la["quarantine"] is not None else DEFAULT_QUARANTINE}


def _within(lo, hi, ranges):
    return any(a <= lo and hi <= b for a, b in ranges)


def _fmt(ranges):
    return ", ".join(f"{lo}-{hi}" for lo, hi in ranges) or "none"


def apply(conf, policy=None):
    """Check ``conf`` against the node's policy and fill in what the node decides (the local
    allocator's path, ranges and quarantine; the kubeconfig).  Raises code 7 for anything the
    network configuration may not ask for, before anything is created."""
    if conf.vnis is None and conf.local_allocator is None and conf.kubernetes is None:
        return conf                      # nothing to grant: no file read on this path
    policy = policy or load()
    if conf.vnis is not None:
        bad = [v for v in conf.vnis if not _within(v, v, policy.static)]
        if bad:
            raise CniError(ERR_INVALID_CONFIG,
                           f"static VNI(s) {', '.join(map(str, bad))} not allowed on this node",
                           f"the node policy {policy.path} allows static VNIs in: "
                           f"{_fmt(policy.static)} (staticVnis)")
        return conf                      # static wins: the other sources are not consulted
    la = conf.local_allocator
    if la is not None:
        node = local_settings(policy)
        if node is None:
            raise CniError(ERR_INVALID_CONFIG, "localAllocator is not enabled on this node",
                           f"the node policy {policy.path} has no localAllocator section")
        for key in ("path", "quarantine"):
            if la[key] is not None and la[key] != node[key]:
                raise CniError(ERR_INVALID_CONFIG,
                               f"localAllocator.{key} {la[key]!r} differs from the node's",
                               f"the node policy {policy.path} sets it to {node[key]!r}; "
                               "omit it from the network configuration")
        ranges = node["ranges"]
        if la["ranges"] is not None:
            bad = [r for r in la["ranges"] if not _within(r[0], r[1], ranges)]
            if bad:
                raise CniError(ERR_INVALID_CONFIG,
                               f"localAllocator.ranges {_fmt(bad)} not allowed on this node",
                               f"the node policy {policy.path} allows {_fmt(ranges)}")
            ranges = la["ranges"]
        conf.local_allocator = {"path": node["path"], "ranges": list(ranges),
                                "quarantine": node["quarantine"], "key": la["key"]}
        return conf
    k8s = conf.kubernetes
    if k8s["kubeconfig"] is not None:
        if k8s["kubeconfig"] not in policy.kubeconfigs:
            raise CniError(ERR_INVALID_CONFIG,
                           f"kubernetes.kubeconfig {k8s['kubeconfig']!r} is not the node's",
                           f"the node policy {policy.path} allows only "
                           f"{', '.join(map(repr, policy.kubeconfigs))}; "
                           "omit it from the network configuration")
        conf.kubernetes = dict(k8s)
    else:
        conf.kubernetes = dict(k8s, kubeconfig=policy.kubeconfig)
    return conf
