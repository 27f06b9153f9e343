"""The admission guard (pycxi/vni/manifests/admission.yaml): pods -- and workloads whose pods
would get a VNI -- that ask for a VNI are refused unless no container can run as global root.

No kube-apiserver can run here, so the policies' CEL is evaluated with cel-python (a CEL
implementation independent of Kubernetes') the way the API server does it: each variable in
order, then the validation.  The manifests are checked against Kubernetes' schemas, and the
verdicts are compared with a reference model written in Python from the kubelet's rules on
sample pods (the attacks a tenant would try) and on generated ones (hypothesis).
"""
from __future__ import annotations

import copy

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pycxi.vni.manifests import FILES, manifests, read

celpy = pytest.importorskip("celpy")
kv = pytest.importorskip("kubernetes_validate")

POLICIES = {d["metadata"]["name"]: d for d in yaml.safe_load_all(read("admission.yaml"))
            if d["kind"] == "ValidatingAdmissionPolicy"}
_ENV = celpy.Environment()


def _compile(expr: str):
    return _ENV.program(_ENV.compile(expr))


_PROGRAMS = {name: ([(v["name"], _compile(v["expression"])) for v in p["spec"]["variables"]],
                    [_compile(v["expression"]) for v in p["spec"]["validations"]])
             for name, p in POLICIES.items()}


def admitted(policy: str, obj: dict) -> bool:
    """Evaluate ``policy`` on ``obj`` as the API server does (variables lazily in order:
    here eagerly, which is the same for side-effect-free CEL)."""
    variables, validations = _PROGRAMS[policy]
    values: dict = {}
    act = {"object": celpy.json_to_cel(obj)}
    for name, prg in variables:
        act["variables"] = celpy.celtypes.MapType(
            {celpy.celtypes.StringType(k): v for k, v in values.items()})
        values[name] = prg.evaluate(act)
        assert not isinstance(values[name], celpy.CELEvalError), (name, values[name])
    act["variables"] = celpy.celtypes.MapType(
        {celpy.celtypes.StringType(k): v for k, v in values.items()})
    results = [prg.evaluate(act) for prg in validations]
    for r in results:
        assert isinstance(r, celpy.celtypes.BoolType), r
    return all(bool(r) for r in results)


def _matches(policy: str, obj: dict) -> bool:
    kind_to_resource = {"Pod": "pods", "Job": "jobs", "CronJob": "cronjobs",
                        "Deployment": "deployments", "StatefulSet": "statefulsets",
                        "DaemonSet": "daemonsets", "ReplicaSet": "replicasets"}
    rules = POLICIES[policy]["spec"]["matchConstraints"]["resourceRules"]
    return any(kind_to_resource[obj["kind"]] in r["resources"] for r in rules)


def admit(obj: dict) -> bool:
    """What the API server answers on CREATE: every matching policy must allow."""
    return all(admitted(p, obj) for p in POLICIES if _matches(p, obj))


# ---- the reference model: may a container of this pod spec run as global root? ----

def _may_be_root(spec: dict) -> bool:
    if spec.get("hostUsers") is False:
        return False     # container root is an unprivileged uid of the host
    psc = spec.get("securityContext") or {}
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []) + \
            (spec.get("ephemeralContainers") or []):
        sc = c.get("securityContext") or {}
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot", False))
        if sc.get("allowPrivilegeEscalation", True):
            return True  # a setuid-root binary in the image makes it root
        if uid == 0 or (uid is None and not non_root):
            return True  # the image's USER may be root and nothing forbids it
    return False


_OFF = {"", "false", "no", "0", "off", "False", "FALSE", "No", "NO", "Off", "OFF"}


def _asks(meta: dict) -> bool:
    ann = meta.get("annotations") or {}
    return any(k in ("vni.pycxi.dev/vni", "vni") and v not in _OFF for k, v in ann.items())


def pod(ann=None, spec=None) -> dict:
    meta = {"name": "p", "namespace": "t"}
    if ann is not None:
        meta["annotations"] = ann
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": spec or {"containers": [{"name": "c", "image": "busybox"}]}}


SAFE = {"allowPrivilegeEscalation": False, "runAsNonRoot": True}
ASK = {"vni.pycxi.dev/vni": "true"}


def c(name="c", **sc):
    out = {"name": name, "image": "busybox"}
    if sc:
        out["securityContext"] = sc
    return out


# ---- the attacks a tenant would try, and the pods that must keep working ----

@pytest.mark.parametrize("obj,ok", [
    (pod(ASK), False),                                                  # default: image user root
    (pod(), True),                                                      # no VNI asked: not ours
    (pod({"vni.pycxi.dev/vni": "false"}), True),
    (pod({"vni": "true"}), False),                                      # the legacy key counts
    (pod({"vni.pycxi.dev/vni": "shared"}), False),                      # a claim name asks too
    (pod(ASK, {"containers": [c(**SAFE)]}), True),
    (pod(ASK, {"containers": [c(allowPrivilegeEscalation=False, runAsUser=1000)]}), True),
    (pod(ASK, {"containers": [c(runAsUser=1000)]}), False),             # setuid binaries
    (pod(ASK, {"containers": [c(allowPrivilegeEscalation=False)]}), False),
    (pod(ASK, {"securityContext": {"runAsUser": 1000},
               "containers": [c(allowPrivilegeEscalation=False)]}), True),
    (pod(ASK, {"securityContext": {"runAsUser": 1000},                  # container overrides pod
               "containers": [c(allowPrivilegeEscalation=False, runAsUser=0)]}), False),
    (pod(ASK, {"securityContext": {"runAsNonRoot": True},
               "containers": [c(allowPrivilegeEscalation=False, runAsUser=0)]}), False),
    (pod(ASK, {"securityContext": {"runAsNonRoot": True},
               "containers": [c(allowPrivilegeEscalation=False, runAsNonRoot=False)]}), False),
    (pod(ASK, {"containers": [c(**SAFE), c("side")]}), False),          # one root sidecar
    (pod(ASK, {"containers": [c(**SAFE)], "initContainers": [c("init")]}), False),
    (pod(ASK, {"containers": [c(**SAFE)], "ephemeralContainers": [c("dbg")]}), False),
    (pod(ASK, {"hostUsers": False, "containers": [c()]}), True),        # user namespace
    (pod(ASK, {"hostUsers": True, "containers": [c()]}), False),
])
def test_pods(obj, ok):
    assert admit(obj) is ok
    assert (not _asks(obj["metadata"]) or not _may_be_root(obj["spec"])) is ok


def _workload(kind, meta_ann=None, tmpl_ann=None, spec=None, job_ann=None):
    tmpl = {"metadata": {"annotations": tmpl_ann} if tmpl_ann else {},
            "spec": spec or {"containers": [c()], "restartPolicy": "Never"}}
    group = "batch/v1" if kind in ("Job", "CronJob") else "apps/v1"
    meta = {"name": "w", "namespace": "t"}
    if meta_ann:
        meta["annotations"] = meta_ann
    if kind == "CronJob":
        jt = {"spec": {"template": tmpl}}
        if job_ann:
            jt["metadata"] = {"annotations": job_ann}
        body = {"schedule": "* * * * *", "jobTemplate": jt}
    else:
        body = {"template": tmpl}
        if kind != "Job":
            body["selector"] = {"matchLabels": {"a": "b"}}
    return {"apiVersion": group, "kind": kind, "metadata": meta, "spec": body}


@pytest.mark.parametrize("kind", ["Job", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet",
                                  "CronJob"])
def test_workloads(kind):
    # the controller serves a request in the workload's metadata too: checked like the template
    assert not admit(_workload(kind, meta_ann=ASK))
    assert not admit(_workload(kind, tmpl_ann=ASK))
    assert admit(_workload(kind))
    assert admit(_workload(kind, meta_ann=ASK, tmpl_ann=ASK, spec={"containers": [c(**SAFE)]}))
    assert admit(_workload(kind, tmpl_ann=ASK, spec={"hostUsers": False, "containers": [c()]}))
    if kind == "CronJob":
        assert not admit(_workload(kind, job_ann=ASK))


def test_adding_the_annotation_later_is_checked_too():
    # a root Job created without asking, then annotated: UPDATE is matched like CREATE
    for p in POLICIES.values():
        for rule in p["spec"]["matchConstraints"]["resourceRules"]:
            assert {"CREATE", "UPDATE"} <= set(rule["operations"])
    assert "pods/ephemeralcontainers" in \
        POLICIES["pycxi-vni-rootless-pods"]["spec"]["matchConstraints"]["resourceRules"][0]["resources"]


_sc = st.fixed_dictionaries({}, optional={
    "runAsUser": st.sampled_from([0, 1, 1000]),
    "runAsNonRoot": st.booleans(),
    "allowPrivilegeEscalation": st.booleans(),
})
_container = st.builds(lambda n, sc: dict(c(n), **({"securityContext": sc} if sc else {})),
                       st.sampled_from(["a", "b"]), _sc)
_spec = st.fixed_dictionaries(
    {"containers": st.lists(_container, min_size=1, max_size=3)},
    optional={"initContainers": st.lists(_container, max_size=2),
              "ephemeralContainers": st.lists(_container, max_size=1),
              "securityContext": st.fixed_dictionaries({}, optional={
                  "runAsUser": st.sampled_from([0, 1000]), "runAsNonRoot": st.booleans()}),
              "hostUsers": st.booleans()})
_ann = st.one_of(st.none(), st.dictionaries(st.sampled_from(["vni.pycxi.dev/vni", "vni", "x"]),
                                            st.sampled_from(["true", "false", "", "shared", "No"]),
                                            max_size=2))


@settings(max_examples=80, deadline=None)
@given(_ann, _spec)
def test_policy_agrees_with_the_reference_model(ann, spec):
    obj = pod(ann, spec)
    expected = not _asks(obj["metadata"]) or not _may_be_root(spec)
    assert admit(obj) is expected
    job = _workload("Job", tmpl_ann=ann, spec=copy.deepcopy(
        {k: v for k, v in spec.items() if k != "ephemeralContainers"}))
    assert admit(job) is (not _asks(obj["metadata"]) or not _may_be_root(job["spec"]["template"]["spec"]))


def test_shipped_on_by_default_and_valid():
    assert "admission.yaml" in FILES
    on = [d for d in yaml.safe_load_all(manifests()) if d]
    off = [d for d in yaml.safe_load_all(manifests(admission=False)) if d]
    kinds = [d["kind"] for d in on]
    assert kinds.count("ValidatingAdmissionPolicy") == 2
    assert kinds.count("ValidatingAdmissionPolicyBinding") == 2
    assert "ValidatingAdmissionPolicy" not in [d["kind"] for d in off]
    for d in on:
        if d["kind"].startswith("ValidatingAdmissionPolicy"):
            assert d["apiVersion"] == "admissionregistration.k8s.io/v1"
            kv.validate(d, kv.latest_version(), strict=True)
            if d["kind"] == "ValidatingAdmissionPolicyBinding":
                assert d["spec"]["validationActions"] == ["Deny"]
                assert d["spec"]["policyName"] in POLICIES
            else:
                assert d["spec"]["failurePolicy"] == "Fail"
