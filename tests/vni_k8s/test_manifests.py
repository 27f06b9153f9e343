"""The shipped manifests: valid for a current Kubernetes, CRDs that match what the code
writes, and RBAC that covers exactly what the controller does."""
from __future__ import annotations

import copy

import pytest
import yaml

from kcluster import controller_requests, wait_for

from pycxi.vni.manifests import FILES, manifests, read

kv = pytest.importorskip("kubernetes_validate")
K8S_VERSION = kv.latest_version()  # 1.37 with kubernetes-validate 1.37.x
BUILTIN_SKIP = {"ServiceMonitor"}  # a Prometheus Operator CRD: checked by hand below


def docs(servicemonitor: bool = True) -> list:
    return [d for d in yaml.safe_load_all(manifests(servicemonitor)) if d]


def crd(plural: str) -> dict:
    return next(d for d in docs() if d["kind"] == "CustomResourceDefinition"
                and d["spec"]["names"]["plural"] == plural)


def test_manifests_function_and_files():
    text = manifests()
    assert all(read(f).strip() in text for f in FILES)
    assert "ServiceMonitor" not in text and "ServiceMonitor" in manifests(servicemonitor=True)
    assert "image: example/x:1" in manifests(image="example/x:1")
    with pytest.raises(ValueError):
        read("../../etc/passwd")
    kinds = [d["kind"] for d in docs(False)]
    # CRDs first, namespace before anything namespaced
    assert kinds[:2] == ["CustomResourceDefinition"] * 2 and kinds[2] == "Namespace"


@pytest.mark.parametrize("doc", [d for d in docs() if d["kind"] not in BUILTIN_SKIP],
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_builtin_kinds_validate_against_kubernetes_schemas(doc):
    kv.validate(doc, K8S_VERSION, strict=True)


def test_servicemonitor_structure():
    [sm] = [d for d in docs() if d["kind"] == "ServiceMonitor"]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    svc = next(d for d in docs() if d["kind"] == "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    ports = {p["name"] for p in svc["spec"]["ports"]}
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= ports


def test_controller_deployment():
    dep = next(d for d in docs() if d["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "pycxi-vni-controller"
    [c] = pod["containers"]
    assert c["command"][:3] == ["python", "-m", "pycxi.vni.controller"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    env = {e["name"] for e in c["env"]}
    assert {"POD_NAME", "POD_NAMESPACE", "PYCXI_VNI_RANGES", "PYCXI_VNI_QUARANTINE"} <= env


def _structural(schema: dict, path: str = "") -> None:
    """Kubernetes' structural-schema rule: every node says its type (or preserves
    unknown fields)."""
    if not (schema.get("type") or schema.get("x-kubernetes-preserve-unknown-fields")
            or schema.get("x-kubernetes-int-or-string")):
        raise AssertionError(f"{path or '/'}: no type")
    for k, sub in (schema.get("properties") or {}).items():
        _structural(sub, f"{path}/{k}")
    if "items" in schema:
        _structural(schema["items"], f"{path}[]")


@pytest.mark.parametrize("plural,kind,scope", [("vnis", "Vni", "Cluster"),
                                               ("vniclaims", "VniClaim", "Namespaced")])
def test_crd_structure(plural, kind, scope):
    c = crd(plural)
    spec = c["spec"]
    assert c["metadata"]["name"] == f"{plural}.{spec['group']}"
    assert spec["group"] == "vni.pycxi.dev" and not spec["group"].endswith(".k8s.io")
    assert spec["names"]["kind"] == kind and spec["scope"] == scope
    assert spec["names"]["shortNames"] and "pycxi" in spec["names"]["categories"]
    [v] = spec["versions"]
    assert v["name"] == "v1alpha1" and v["served"] and v["storage"]
    assert v["subresources"] == {"status": {}}
    assert v["additionalPrinterColumns"]
    schema = v["schema"]["openAPIV3Schema"]
    _structural(schema)
    cond = schema["properties"]["status"]["properties"]["conditions"]
    assert cond["x-kubernetes-list-type"] == "map" and cond["x-kubernetes-list-map-keys"] == ["type"]


def _jsonschema(schema: dict) -> dict:
    """The CRD's OpenAPI schema as plain JSON Schema (dropping x-kubernetes-*)."""
    s = copy.deepcopy(schema)

    def strip(n):
        if isinstance(n, dict):
            for k in [k for k in n if k.startswith("x-kubernetes")]:
                del n[k]
            for v in n.values():
                strip(v)
        elif isinstance(n, list):
            for v in n:
                strip(v)
    strip(s)
    return s


def test_objects_the_code_writes_match_the_crds(cluster):
    """Run the controller on the fake API, then validate every Vni and VniClaim it
    wrote against the CRD schemas (the fake does not validate), and the CEL rule that
    ties a Vni's name to its number."""
    import jsonschema

    cluster.start_controller()
    cluster.create("VniClaim", "ns1", "c")
    job = cluster.job("ns1", "j", "true,c")
    cluster.pod_of(job, "j-0")
    cluster.wait_lookup("ns1", "j-0")
    cluster.finish_job("ns1", "j")
    cluster.delete("Pod", "ns1", "j-0")  # a released Vni needs its pods gone
    wait_for(cluster.released, what="a released Vni")
    vni_schema = _jsonschema(crd("vnis")["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    claim_schema = _jsonschema(crd("vniclaims")["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    objs = cluster.vnis()
    assert len(objs) == 2 and any((o.get("status") or {}).get("releasedAt") for o in objs)
    for o in objs:
        jsonschema.validate(o, vni_schema, format_checker=jsonschema.FormatChecker())
        assert o["metadata"]["name"] == f"vni-{o['spec']['vni']}"
    claim = cluster.get("VniClaim", "ns1", "c")
    jsonschema.validate(claim, claim_schema, format_checker=jsonschema.FormatChecker())
    assert claim["status"]["vni"] in {o["spec"]["vni"] for o in objs}


def _allowed(rules: list, group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               for r in rules)


def test_rbac_covers_what_the_controller_does_and_no_more(cluster, api):
    """Replay the controller's own API requests (from the fake's request log) against
    the shipped ClusterRole and Role."""
    all_docs = docs()
    crole = next(d for d in all_docs if d["kind"] == "ClusterRole"
                 and d["metadata"]["name"] == "pycxi-vni-controller")["rules"]
    role = next(d for d in all_docs if d["kind"] == "Role"
                and d["metadata"]["name"] == "pycxi-vni-controller")
    ns_rules = role["rules"]
    cluster.start_controller(leader=True)
    cluster.create("VniClaim", "ns1", "c")
    job = cluster.job("ns1", "j", "true,c")
    cluster.pod_of(job, "j-0")
    cluster.job("ns1", "bad", "ns2/x")
    cluster.wait_lookup("ns1", "j-0")
    cluster.finish_job("ns1", "j")
    mark = len(api.kube._requests)
    cluster.delete("VniClaim", "ns1", "c")

    def resyncs() -> int:  # each resync LISTs the Vni objects (nothing else does here)
        return sum(1 for r in controller_requests(api, mark)
                   if r.resource is not None and r.resource.plural == "vnis" and not r.name
                   and str(r.method.value).upper() == "GET" and r.params.get("watch") != "true")
    wait_for(lambda: resyncs() >= 2, what="two resyncs after the claim's deletion")
    seen = set()
    for r in controller_requests(api):
        if r.resource is None or not r.resource.plural:
            continue  # discovery
        verb = {"GET": "get" if r.name else "list", "POST": "create", "PATCH": "patch",
                "PUT": "update", "DELETE": "delete"}[str(r.method.value).upper()]
        if r.params.get("watch") == "true":
            verb = "watch"
        resource = r.resource.plural + (f"/{r.subresource}" if r.subresource else "")
        seen.add((r.resource.group, resource, verb, r.namespace == role["metadata"]["namespace"]))
    verbs = {(g, res, v) for g, res, v, _ in seen}
    assert ("vni.pycxi.dev", "vnis", "create") in verbs, "the controller's own requests"
    assert ("", "pods", "watch") in verbs, "kopf's watches"
    assert ("", "pods/status", "patch") in verbs
    for group, resource, verb, in_ns in sorted(seen):
        ok = _allowed(crole, group, resource, verb) or (in_ns and _allowed(ns_rules, group, resource, verb))
        assert ok, f"RBAC does not allow {verb} {group}/{resource}"
    # least privilege: the controller never writes workloads or reads secrets
    for group, resource, verb, _ in seen:
        if resource in ("jobs", "deployments", "statefulsets", "daemonsets", "replicasets"):
            assert verb in ("get", "list", "watch")
        if resource == "pods":
            assert verb in ("get", "list", "watch")
    lookup = next(d for d in all_docs if d["kind"] == "ClusterRole"
                  and d["metadata"]["name"] == "pycxi-vni-lookup")["rules"]
    assert lookup == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]


def test_tenants_cannot_write_what_the_cni_trusts():
    """Aggregated tenant roles: claims yes; Vni objects, claim status, pod status no."""
    for d in docs():
        if d["kind"] != "ClusterRole":
            continue
        labels = d["metadata"].get("labels") or {}
        if not any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in labels):
            continue
        for r in d["rules"]:
            writes = set(r["verbs"]) - {"get", "list", "watch"}
            if writes:
                assert set(r["resources"]) <= {"vniclaims"}, d["metadata"]["name"]
