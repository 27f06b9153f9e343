"""Where a pod's VNIs come from, in this precedence (the first one configured wins):

1. ``vnis`` in the network configuration (static: podman, one network per tenant);
2. ``localAllocator``: pycxi's embedded SQLite VNI store on this node (no Kubernetes); the key
   is ``localAllocator.key`` (one job VNI shared by every container of the network) or else the
   pod's identity from ``CNI_ARGS`` (``K8S_POD_NAMESPACE/K8S_POD_NAME``, or ``K8S_POD_NAME``
   alone as podman passes it), or else the container ID.  Each attachment is recorded as a
   holder of its key (``network/containerID/ifname``); a per-pod VNI goes back to the pool
   (quarantine first) only when its last holder is deleted;
3. ``kubernetes``: the VNI service's lookup contract (:mod:`pycxi.vni.lookup`): at most one API
   request, standard library only, bounded timeout, code 11 while the VNI is not allocated yet.
   The VNI comes only from objects the controller writes, never from the pod's annotations;
4. none of them: the pod gets no VNI, hence no service, and ADD succeeds.

What a network configuration may ask for is checked first against the node's policy file
(:mod:`pycxi.cni.policy`).  The SQLite store and the Kubernetes lookup are imported only on the
path that needs them.
"""
from pycxi.cni.config import parse_cni_args
from pycxi.cni.errors import (CniError, ERR_INVALID_CONFIG, ERR_IO, ERR_TRY_AGAIN_LATER,
                              ERR_VNI_LOOKUP)

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
            vni = store.acquire(key, holder=holder_of(conf.name, env["CNI_CONTAINERID"],
                                                      env["CNI_IFNAME"]))
        except Exception as exc:
            raise store_error(exc, la) from None
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


def holder_of(network, container_id, ifname):
    """The attachment's holder name in the store (none of the three can contain a "/")."""
    return f"{network}/{container_id}/{ifname}"


def store_error(exc, la):
    """The local store's exceptions as CNI errors a user can act on."""
    if isinstance(exc, CniError):
        return exc
    from pycxi.vni.store import VniBusy, VniError, VniExhausted
    det = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, VniExhausted):
        return CniError(ERR_TRY_AGAIN_LATER, "the local VNI allocator has no free VNI", det)
    if isinstance(exc, VniBusy):
        return CniError(ERR_TRY_AGAIN_LATER, "the local VNI database is busy", det)
    if isinstance(exc, (VniError, OSError)):
        return CniError(ERR_IO, f"the local VNI database {la['path']} cannot be used",
                        det + " (localAllocator.path of the node policy)")
    return CniError(ERR_VNI_LOOKUP, "the local VNI allocator failed", det)


def local_store(la):
    from pycxi.vni.sqlite import SqliteStore       # lazily: sqlite3 costs import time
    try:
        return SqliteStore(la["path"], ranges=[tuple(r) for r in la["ranges"]],
                           quarantine=la["quarantine"])
    except Exception as exc:
        raise store_error(exc, la) from None


def release_local(rec, conf, log):
    """Drop the attachment of ``rec`` from its local-allocator key (DEL, GC); a per-pod VNI
    goes to quarantine when no other attachment holds it any more."""
    if rec.get("vniSource") != SOURCE_LOCAL or not rec.get("vniKey"):
        return
    la = rec.get("localAllocator")
    if not la and conf is not None and conf.local_allocator is not None:
        from pycxi.cni import policy        # a record without the store's settings: the node's
        la = policy.apply(conf).local_allocator
    if not la or not la.get("path"):
        log.warning(f"cannot release VNI key {rec.get('vniKey')!r}: no localAllocator configured")
        return
    store = local_store(la)
    try:
        holder = holder_of(rec.get("network"), rec.get("containerID"), rec.get("ifname"))
        if rec.get("vniRelease"):
            if not store.release(rec["vniKey"], holder=holder):
                log.info(f"VNI key {rec['vniKey']!r} kept: other attachments still hold it")
        else:                      # a job key: the job's VNI stays allocated; drop the holder
            store.forget(holder)
    finally:
        _close(store)


def gc_holders(conf, log):
    """GC: holders of this network's attachments that the runtime no longer knows (a record
    lost with a reboot of tmpfs, a crash) are dropped; their per-pod keys released when no
    holder is left.  Only for a network that uses the local allocator."""
    if conf.local_allocator is None or conf.valid_attachments is None:
        return []
    from pycxi.cni import policy
    try:
        policy.apply(conf)
    except CniError as exc:
        log.warning(f"GC: local VNI holders not checked: {exc}")
        return []
    la = conf.local_allocator
    store = local_store(la)
    try:
        keep = {holder_of(conf.name, c, i) for c, i in conf.valid_attachments}
        dropped = store.prune_holders(f"{conf.name}/", keep,
                                      releasable=lambda key: not key.startswith("job/"))
    finally:
        _close(store)
    for h, k, released in dropped:
        log.info(f"GC: dropped stale holder {h} of VNI key {k!r}"
                 + (" (VNI released into quarantine)" if released else ""))
    return dropped


def _close(store):
    close = getattr(store, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            pass
