"""`kubectl apply -k deploy/`: the one-command install renders to valid manifests whose only
operator settings are the two images and the VNI ranges.

No cluster: deploy/ is rendered by tests/kustomize_lite.py (what the layout uses, as
kustomize does it) and each document is validated against the Kubernetes schema
(kubernetes-validate).  Where a kubectl with kustomize v4+ is on PATH (this machine image
ships kubectl 1.32; Debian's apt has only 1.20, too old for these kustomizations), its own
rendering is compared with ours, and `kubectl apply -k` runs against the fake API server
(tests/vni_k8s/fakeapi.py; no kube-apiserver can be installed here).
"""
import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from coreutil import REPO
from kustomize_lite import KustomizeError, build
from pycxi._version import __version__
from pycxi.vni.manifests import FILES

kv = pytest.importorskip("kubernetes_validate")
K8S_VERSION = kv.latest_version()
DEPLOY = os.path.join(REPO, "deploy")


def rendered():
    return build(DEPLOY)


def _key(d):
    return (d["kind"], d["metadata"].get("namespace") or "", d["metadata"]["name"])


def _container(docs, kind, name):
    [d] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return d["spec"]["template"]["spec"]["containers"][0]


def test_bases_list_every_manifest():
    with open(os.path.join(REPO, "pycxi", "vni", "manifests", "kustomization.yaml")) as f:
        assert yaml.safe_load(f)["resources"] == list(FILES)
    with open(os.path.join(REPO, "cni", "k8s", "kustomization.yaml")) as f:
        assert yaml.safe_load(f)["resources"] == ["daemonset.yaml"]


def test_deploy_renders_the_vni_service_and_the_node_daemonset():
    docs = rendered()
    kinds = {d["kind"] for d in docs}
    assert {"CustomResourceDefinition", "Deployment", "DaemonSet", "ClusterRole",
            "ValidatingAdmissionPolicy"} <= kinds
    assert "ServiceMonitor" not in kinds     # needs the Prometheus Operator: opt-in
    # the CNI's ServiceAccount is the subject of the VNI service's lookup binding
    [sa] = [d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "cxi-cni"]
    [b] = [d for d in docs if d["kind"] == "ClusterRoleBinding"
           and d["roleRef"]["name"] == "pycxi-vni-lookup"]
    assert {"kind": "ServiceAccount", "name": "cxi-cni",
            "namespace": sa["metadata"]["namespace"]} in b["subjects"]


@pytest.mark.parametrize("doc", rendered(), ids=lambda d: "/".join(_key(d)[::2]))
def test_every_rendered_document_validates(doc):
    kv.validate(doc, K8S_VERSION, strict=True)


def test_images_and_ranges_are_the_settings():
    docs = rendered()
    ctl = _container(docs, "Deployment", "pycxi-vni-controller")
    node = _container(docs, "DaemonSet", "cxi-cni")
    assert ctl["image"] == f"ghcr.io/pycxi/pycxi:{__version__}"
    assert node["image"] == f"ghcr.io/pycxi/pycxi-cni:{__version__}"
    env = {e["name"]: e for e in ctl["env"]}
    assert env["PYCXI_VNI_RANGES"] == {"name": "PYCXI_VNI_RANGES", "value": "1024-65535"}
    from pycxi.vni.controller import parse_ranges
    assert parse_ranges(env["PYCXI_VNI_RANGES"]["value"])


def _overlay(tmp_path, images, ranges):
    """deploy/kustomization.yaml with the operator's three settings changed, in another
    directory (bases by relative path: kustomize refuses absolute ones)."""
    with open(os.path.join(DEPLOY, "kustomization.yaml")) as f:
        k = yaml.safe_load(f)
    k["resources"] = [os.path.relpath(os.path.join(DEPLOY, r), str(tmp_path))
                      for r in k["resources"]]
    for rule in k["images"]:
        rule["newName"], rule["newTag"] = images[rule["name"]]
    [p] = k["patches"]
    p["patch"] = p["patch"].replace('value: "1024-65535"', f'value: "{ranges}"')
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(k))
    return str(tmp_path)


def test_an_operator_sets_images_and_ranges_and_nothing_else(tmp_path):
    d = _overlay(tmp_path, {"ghcr.io/pycxi/pycxi": ("reg.example/hpc/vni", "7"),
                            "pycxi-cni": ("reg.example/hpc/cni", "7-shs13.1")}, "4096-8191")
    docs = build(d)
    assert _container(docs, "Deployment", "pycxi-vni-controller")["image"] == "reg.example/hpc/vni:7"
    assert _container(docs, "DaemonSet", "cxi-cni")["image"] == "reg.example/hpc/cni:7-shs13.1"
    env = {e["name"]: e.get("value") for e in
           _container(docs, "Deployment", "pycxi-vni-controller")["env"]}
    assert env["PYCXI_VNI_RANGES"] == "4096-8191"
    # everything else is the same as the defaults' rendering
    base = {_key(x): x for x in rendered()}
    for x in docs:
        if x["kind"] not in ("Deployment", "DaemonSet"):
            assert x == base[_key(x)]


def test_renderer_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "namePrefix: x-\nresources: []\n")
    with pytest.raises(KustomizeError, match="namePrefix"):
        build(str(tmp_path))


def _kubectl_kustomize():
    exe = shutil.which("kubectl")
    if not exe:
        return None
    r = subprocess.run([exe, "version", "--client", "-o", "json"], capture_output=True, text=True)
    m = re.match(r"v(\d+)", json.loads(r.stdout or "{}").get("kustomizeVersion", "")) \
        if r.returncode == 0 else None
    return exe if m and int(m.group(1)) >= 4 else None


@pytest.mark.parametrize("where", [DEPLOY, os.path.join(REPO, "cni", "k3s")],
                         ids=["deploy", "k3s"])
def test_matches_real_kustomize_when_available(where):
    exe = _kubectl_kustomize()
    if not exe:
        pytest.skip("no kubectl with kustomize v4+ on PATH (Debian's kubernetes-client is 1.20): "
                    "the Python rendering is the check")
    r = subprocess.run([exe, "kustomize", where], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    theirs = {_key(d): d for d in yaml.safe_load_all(r.stdout) if d}
    ours = {_key(d): d for d in build(where)}
    assert theirs == ours


def _kubectl(exe, kc, *args):
    return subprocess.run([exe, "--kubeconfig", kc, *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("overlay", ["deploy", "operator-overlay", "k3s"])
def test_kubectl_apply_k_against_the_fake_api_server(tmp_path, overlay):
    """docs/deploy.md step 3 as written (`kubectl apply -k deploy/`), an operator's overlay,
    and cni/k3s/README.md step 4 (`kubectl apply -k cni/k3s/`), with the real kubectl against
    tests/vni_k8s/fakeapi.py: every rendered object is created as rendered, and a second
    apply creates nothing.

    The fake serves no OpenAPI document (so --validate=false; the schema check is
    kubernetes-validate above) and no server-side apply (plain client-side apply only)."""
    exe = _kubectl_kustomize()
    if not exe:
        pytest.skip("no kubectl with kustomize v4+ on PATH (Debian's kubernetes-client is 1.20)")
    pytest.importorskip("kmock")
    import sys
    sys.path.insert(0, os.path.join(REPO, "tests", "vni_k8s"))
    from fakeapi import FakeApiServer, write_kubeconfig

    where = os.path.join(REPO, "cni", "k3s") if overlay == "k3s" else DEPLOY
    if overlay == "operator-overlay":
        (tmp_path / "ov").mkdir()
        where = _overlay(tmp_path / "ov", {"ghcr.io/pycxi/pycxi": ("reg.example/hpc/vni", "7"),
                                          "pycxi-cni": ("reg.example/hpc/cni", "7-shs13.1")},
                         "4096-8191")
    want = {_key(d): d for d in build(where)}
    with FakeApiServer() as srv:
        kc = write_kubeconfig(str(tmp_path / "kubeconfig.json"), srv.url)
        r = _kubectl(exe, kc, "apply", "-k", where, "--validate=false")
        assert r.returncode == 0, r.stdout + r.stderr
        assert len(re.findall(r" created$", r.stdout, re.M)) == len(want), r.stdout
        r = _kubectl(exe, kc, "get", "-k", where, "-o", "json")
        assert r.returncode == 0, r.stderr
        got = {_key(d): d for d in json.loads(r.stdout)["items"]}
        assert set(got) == set(want)
        for key, d in want.items():
            o = got[key]
            for k in set(d) - {"metadata", "status"}:
                assert o[k] == d[k], (key, k)
            assert o["metadata"].get("labels") == d["metadata"].get("labels"), key
            ann = dict(o["metadata"].get("annotations") or {})
            assert json.loads(ann.pop("kubectl.kubernetes.io/last-applied-configuration"))
            assert ann == (d["metadata"].get("annotations") or {}), key
        if overlay == "operator-overlay":
            ctl = got[("Deployment", "pycxi-vni", "pycxi-vni-controller")]
            assert ctl["spec"]["template"]["spec"]["containers"][0]["image"] == \
                "reg.example/hpc/vni:7"
        # again: nothing created; kubectl re-sends a PodDisruptionBudget's selector every
        # time (its patch strategy is "replace"), so that one says "configured"
        r = _kubectl(exe, kc, "apply", "-k", where, "--validate=false")
        assert r.returncode == 0, r.stdout + r.stderr
        changed = [ln for ln in r.stdout.splitlines() if not ln.endswith(" unchanged")]
        assert changed == ["poddisruptionbudget.policy/pycxi-vni-controller configured"], r.stdout


# -- the k3s recipe ----------------------------------------------------------------------
K3S = os.path.join(REPO, "cni", "k3s")
K3S_CONF_DIR = "/var/lib/rancher/k3s/agent/etc/cni/net.d"
K3S_BIN_DIR = "/var/lib/rancher/k3s/data/cni"


def test_k3s_recipe_uses_one_conf_dir_and_one_bin_dir():
    readme = open(os.path.join(K3S, "README.md")).read()
    conf = json.load(open(os.path.join(K3S, "cni-conf.json")))
    kust = yaml.safe_load(open(os.path.join(K3S, "kustomization.yaml")))
    [cxi] = [p for p in conf["plugins"] if p["type"] == "cxi"]
    # the plugin's kubeconfig is where the node component writes it, under the conf dir
    assert cxi["kubernetes"]["kubeconfig"] == f"{K3S_CONF_DIR}/cxi.d/cxi.kubeconfig"
    docs = build(K3S)
    [ds] = [d for d in docs if d["kind"] == "DaemonSet"]
    paths = {v["name"]: v["hostPath"]["path"] for v in ds["spec"]["template"]["spec"]["volumes"]
             if "hostPath" in v}
    assert paths["cni-conf"] == K3S_CONF_DIR and paths["cni-bin"] == K3S_BIN_DIR
    # every CNI path the recipe names is one of the two
    named = set(re.findall(r"/var/lib/rancher/k3s/[\w/.-]*(?:net\.d|bin|cni)\b", readme))
    named |= set(re.findall(r"/var/lib/rancher/k3s/[\w/.-]*(?:net\.d|bin|cni)\b", json.dumps(kust)))
    assert named <= {K3S_CONF_DIR, K3S_BIN_DIR}, named
    assert "data/current/bin" not in readme
    for d in docs:
        kv.validate(d, K8S_VERSION, strict=True)


def test_k3s_conflist_version_lets_the_runtime_send_gc():
    """CNI GC exists from spec 1.1.0: a runtime that can send it does so only to 1.1.0 lists."""
    conf = json.load(open(os.path.join(K3S, "cni-conf.json")))
    assert conf["cniVersion"] == "1.1.0"
    from pycxi.cni.config import parse_conf
    [cxi] = [p for p in conf["plugins"] if p["type"] == "cxi"]
    parse_conf(json.dumps(dict(cxi, cniVersion=conf["cniVersion"], name=conf["name"])).encode())
