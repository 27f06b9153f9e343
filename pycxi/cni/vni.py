"""Where a pod's VNIs come from, in this precedence (the first one configured wins):

1. ``vnis`` in the network configuration (static: podman, one network per tenant);
2. ``localAllocator``: pycxi's embedded SQLite VNI store on this node (no Kubernetes); the key
   is ``localAllocator.key`` (one job VNI shared by every container of the network) or else the
   pod's identity from ``CNI_ARGS`` (``K8S_POD_NAMESPACE/K8S_POD_NAME``, or ``K8S_POD_NAME``
   alone as podman passes it), or else the container ID; a per-pod VNI is released on DEL;
3. ``kubernetes``: the VNI service's lookup contract (:mod:`pycxi.vni.lookup`): at most one API
   request, standard library only, bounded timeout, code 11 while the VNI is not allocated yet.
   The VNI comes only from objects the controller writes, never from the pod's annotations;
4. none of them: the pod gets no VNI, hence no service, and ADD succeeds.

The SQLite store and the Kubernetes lookup are imported only on the path that needs them.
"""
from pycxi.cni.config import parse_cni_args
from pycxi.cni.errors import CniError, ERR_TRY_AGAIN_LATER, ERR_VNI_LOOKUP, ERR_INVALID_CONFIG

SOURCE_STATIC = "static"
SOURCE_LOCAL = "local"
SOURCE_K8S = "kubernetes"
SOURCE_NONE = "none"


class VniChoice:
    __slots__ = ("vnis", "source", "key", "release")

    def __init__(self, vnis, source, key=None, release=False):
        self.vnis = vnis
        self.source = source
        self.key = key
        self.release = release


def pod_identity(env):
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    return args.get("K8S_POD_NAMESPACE") or None, args.get("K8S_POD_NAME") or None


def pod_uid(env):
    return parse_cni_args(env.get("CNI_ARGS", "")).get("K8S_POD_UID") or None


def resolve(conf, env, log):
    """-> :class:`VniChoice`.  Raises :class:`CniError` (11 while not ready, 104 on failure)."""
    if conf.vnis is not None:
        return VniChoice(list(conf.vnis), SOURCE_STATIC)
    if conf.local_allocator is not None:
        la = conf.local_allocator
        key, release = local_key(la, env), la["key"] is None
        store = local_store(la)
        try:
            vni = store.acquire(key)
        except CniError:
            raise
        except Exception as exc:   # the store's own exceptions (pool exhausted, DB locked, ...)
            raise CniError(ERR_VNI_LOOKUP, "the local VNI allocator failed",
                           f"{type(exc).__name__}: {exc}") from None
        finally:
            _close(store)
        return VniChoice([int(vni)], SOURCE_LOCAL, key, release)
    if conf.kubernetes is not None:
        ns, pod = pod_identity(env)
        if not ns or not pod:
            log.warning("kubernetes VNI source configured but CNI_ARGS has no "
                        "K8S_POD_NAMESPACE/K8S_POD_NAME: no VNI")
            return VniChoice([], SOURCE_K8S)
        from pycxi.vni import lookup       # lazily: only this path pays for it
        try:
            vnis = lookup.lookup_pod_vnis(ns, pod, kubeconfig=conf.kubernetes["kubeconfig"],
                                          timeout=conf.kubernetes["timeout"], pod_uid=pod_uid(env))
        except lookup.VniNotReady as exc:
            raise CniError(ERR_TRY_AGAIN_LATER, f"the VNI of pod {ns}/{pod} is not allocated yet",
                           str(exc)) from None
        except Exception as exc:          # VniLookupError, and anything unexpected
            raise CniError(ERR_VNI_LOOKUP, f"VNI lookup for pod {ns}/{pod} failed",
                           f"{type(exc).__name__}: {exc}") from None
        vnis = [int(v) for v in vnis or ()]
        if len(vnis) > 4 or any(not 1 <= v <= 65535 for v in vnis):
            raise CniError(ERR_INVALID_CONFIG, f"VNI lookup for pod {ns}/{pod} returned invalid VNIs",
                           repr(vnis))
        return VniChoice(vnis, SOURCE_K8S)
    return VniChoice([], SOURCE_NONE)


def local_key(la, env):
    """The allocator key: the configured job key, else the pod's identity, else the container."""
    if la["key"] is not None:
        return f"job/{la['key']}"
    ns, pod = pod_identity(env)
    if pod:
        return f"pod/{ns}/{pod}" if ns else f"pod/{pod}"
    return f"container/{env.get('CNI_CONTAINERID', '')}"


def local_store(la):
    from pycxi.vni.sqlite import SqliteStore       # lazily: sqlite3 costs import time
    return SqliteStore(la["path"], ranges=[tuple(r) for r in la["ranges"]],
                       quarantine=la["quarantine"])


def release_local(rec, conf, log):
    """Release a per-pod VNI of the local allocator recorded in ``rec`` (DEL, GC)."""
    if rec.get("vniSource") != SOURCE_LOCAL or not rec.get("vniRelease") or not rec.get("vniKey"):
        return
    la = rec.get("localAllocator") or (conf.local_allocator if conf is not None else None)
    if not la:
        log.warning(f"cannot release VNI key {rec.get('vniKey')!r}: no localAllocator configured")
        return
    store = local_store(la)
    try:
        store.release(rec["vniKey"])
    finally:
        _close(store)


def _close(store):
    close = getattr(store, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            pass
