"""Which VNIs does this pod get?  The contract between the VNI controller and the CNI
plugin.  Standard library only: this runs on every pod ADD.

One API request: ``GET /api/v1/namespaces/<ns>/pods/<pod>``.  The answer comes from the
pod's **status** condition ``vni.pycxi.dev/Allocated``, which only the controller writes
(the ``pods/status`` subresource: RBAC grants it to the controller, the kubelet and
admins, not to tenants; the API server drops any ``status`` a pod's author sends on
create).  Annotations and labels are the pod author's and are read only to learn whether
the pod *asked*, never which VNI it gets.  See docs/vni-service.md, "The lookup trust
model".

Condition written by the controller (``reason`` is a CamelCase word)::

    type: vni.pycxi.dev/Allocated
    status: "True"   reason: Allocated      message: "vnis=4242,5001"
    status: "False"  reason: Pending | Exhausted | ClaimNotFound | ApiError   -> not ready
    status: "False"  reason: ClaimRefused | InvalidRequest                    -> refused
    status: "False"  reason: NotRequested                                     -> []
"""
from __future__ import annotations

from typing import List, Optional

from pycxi.vni.kube import (ANNOTATION, LEGACY_ANNOTATION, POD_CONDITION, KubeClient,
                            KubeConfig, KubeConfigError, KubeError)
from pycxi.vni.store import VniError

__all__ = ["VniNotReady", "VniLookupError", "lookup_pod_vnis", "pod_vnis", "pod_asks",
           "VNIS_PREFIX", "format_stamp", "MAX_VNIS_PER_POD", "FALSE_VALUES"]

#: The condition message carries the VNIs as ``vnis=<n>[,<n>...]``.
VNIS_PREFIX = "vnis="
#: A CXI service restricts at most 4 VNIs (``CXI_SVC_MAX_VNIS``).
MAX_VNIS_PER_POD = 4

#: Reasons of a False condition that mean "wait, it may still come".
NOT_READY_REASONS = frozenset({"Pending", "Exhausted", "ClaimNotFound", "ClaimNotReady",
                               "ApiError"})
#: Values that say "no" (annotations, and the VNI service's on/off settings).
FALSE_VALUES = frozenset({"", "false", "no", "0", "off"})


class VniNotReady(VniError):
    """The pod asked for a VNI that is not allocated (or not stamped on the pod) yet.
    The CNI plugin answers ADD with code 11 (try again later)."""


class VniLookupError(VniError):
    """The lookup failed: API unreachable, pod missing, request refused, bad stamp."""


def format_stamp(vnis: List[int]) -> str:
    """The condition message for ``vnis`` (the controller's side of the contract)."""
    return VNIS_PREFIX + ",".join(str(v) for v in sorted(vnis))


def pod_asks(pod: dict) -> bool:
    """Whether the pod itself carries the request annotation (from its template or, for a
    bare pod, its own metadata).  This only decides between "wait" and "nothing"."""
    ann = (pod.get("metadata") or {}).get("annotations") or {}
    for key in (ANNOTATION, LEGACY_ANNOTATION):
        v = ann.get(key)
        if isinstance(v, str) and v.strip().lower() not in FALSE_VALUES:
            return True
    return False


def _parse_vnis(message: str, where: str) -> List[int]:
    if not isinstance(message, str) or not message.startswith(VNIS_PREFIX):
        raise VniLookupError(f"{where}: malformed {POD_CONDITION} message {message!r}")
    out = []
    for part in message[len(VNIS_PREFIX):].split(","):
        part = part.strip()
        if not (part.isascii() and part.isdigit()) or not 1 <= int(part) <= 65535:
            raise VniLookupError(f"{where}: malformed VNI {part!r} in {POD_CONDITION}")
        out.append(int(part))
    if not out or len(out) > MAX_VNIS_PER_POD:
        raise VniLookupError(f"{where}: {len(out)} VNIs in {POD_CONDITION}")
    return sorted(set(out))


def pod_vnis(pod: dict, *, pod_uid: Optional[str] = None) -> List[int]:
    """Decide from a pod object (as returned by the API server).  Pure function."""
    # Whatever is not a well-formed pod is an error, never "no VNI": a pod that asked must
    # not start without its service because a proxy answered or the object was mangled.
    if not isinstance(pod, dict) or pod.get("kind", "Pod") != "Pod":
        raise VniLookupError(f"the API answered no Pod object: {str(pod)[:120]!r}")
    meta = pod.get("metadata")
    status_obj = pod.get("status", {})
    if not isinstance(meta, dict) or not isinstance(status_obj, dict):
        raise VniLookupError("malformed Pod object: metadata or status is not an object")
    where = f"pod {meta.get('namespace')}/{meta.get('name')}"
    if pod_uid and meta.get("uid") and meta.get("uid") != pod_uid:
        raise VniLookupError(f"{where} has uid {meta.get('uid')}, not {pod_uid}: "
                             "the pod was replaced")
    conds = status_obj.get("conditions") or []
    if not isinstance(conds, list):
        raise VniLookupError(f"{where}: malformed status.conditions {conds!r}")
    cond = None
    for c in conds:
        if not isinstance(c, dict):
            raise VniLookupError(f"{where}: malformed condition {c!r}")
        if c.get("type") == POD_CONDITION:
            cond = c
    if cond is None:
        if pod_asks(pod):
            raise VniNotReady(f"{where}: VNI not allocated yet")
        return []
    status, reason = cond.get("status"), cond.get("reason") or ""
    msg = cond.get("message") or ""
    if status not in ("True", "False", "Unknown") or not isinstance(reason, str) \
            or not isinstance(msg, str):
        raise VniLookupError(f"{where}: malformed {POD_CONDITION} condition {cond!r}")
    if status == "True":
        return _parse_vnis(msg, where)
    if reason == "NotRequested":
        return []
    if reason in NOT_READY_REASONS or status == "Unknown":
        raise VniNotReady(f"{where}: VNI not allocated yet ({reason}: {msg})")
    raise VniLookupError(f"{where}: VNI refused ({reason}: {msg})")


def lookup_pod_vnis(namespace: str, pod: str, *, kubeconfig: Optional[str] = None,
                    timeout: float = 2.0, pod_uid: Optional[str] = None,
                    client: Optional[KubeClient] = None) -> List[int]:
    """The VNIs pod ``namespace/pod`` may use; ``[]`` when it asked for none.

    Exactly one API request, bounded by ``timeout`` seconds.  ``pod_uid`` (the CNI's
    ``K8S_POD_UID``), when given, must match, so that a replaced pod of the same name
    never inherits a stale answer.  ``kubeconfig`` as for :meth:`KubeConfig.load`
    (a JSON kubeconfig keeps this path free of PyYAML).

    Raises :class:`VniNotReady` ("not allocated yet": CNI error code 11) and
    :class:`VniLookupError` (anything else).
    """
    if not namespace or not pod:
        raise VniLookupError("namespace and pod name are required")
    try:
        if client is None:
            client = KubeClient(KubeConfig.load(kubeconfig), timeout=timeout)
        obj = client.get(KubeClient.path("", "v1", "pods", namespace, pod), timeout=timeout)
    except KubeConfigError as e:
        raise VniLookupError(f"kubeconfig: {e}") from e
    except KubeError as e:
        if e.not_found:
            raise VniLookupError(f"pod {namespace}/{pod} not found") from e
        raise VniLookupError(f"pod {namespace}/{pod}: {e}") from e
    return pod_vnis(obj, pod_uid=pod_uid)
