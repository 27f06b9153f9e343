"""The install command, the example conflists, the k3s snippet and the DaemonSet manifest."""
import json
import os
import subprocess

import pytest

from cniutil import PY, REPO
from pycxi.cni import install
from pycxi.cni.config import parse_conf

CNI = os.path.join(REPO, "cni")


def test_launcher(tmp_path):
    path = install.install_launcher(str(tmp_path), python=PY)
    text = open(path).read()
    assert text.startswith(f"#!{PY} -IS\n")
    assert os.access(path, os.X_OK)
    # runs from an empty environment (no PYTHONPATH, no venv activation)
    p = subprocess.run([path], input=b'{"cniVersion": "1.0.0"}', env={"CNI_COMMAND": "VERSION"},
                       capture_output=True, cwd="/")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["supportedVersions"] == ["0.4.0", "1.0.0", "1.1.0"]


def test_patch_conflist_cli(tmp_path):
    f = tmp_path / "net.conflist"
    f.write_text(json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}]}))
    for _ in range(2):     # idempotent: the cxi entry is updated, not duplicated
        assert install.main(["--conflist", str(f), "--plugin-conf", '{"vnis": [7]}']) == 0
    conf = json.loads(f.read_text())
    assert conf["plugins"] == [{"type": "bridge"}, {"type": "cxi", "vnis": [7]}]
    with pytest.raises(SystemExit):
        install.patch_conflist({"cniVersion": "1.0.0", "name": "n"})


def test_print_example(capsys):
    assert install.main(["--print", "--plugin-conf", '{"vnis": [9]}']) == 0
    conf = json.loads(capsys.readouterr().out)
    assert conf["plugins"][-1] == {"type": "cxi", "vnis": [9]}


def _cxi_entries():
    out = []
    ex = os.path.join(CNI, "examples")
    for n in sorted(os.listdir(ex)):
        if not n.endswith(".conflist"):
            continue
        with open(os.path.join(ex, n)) as f:
            out.append((n, json.load(f)))
    with open(os.path.join(CNI, "k3s", "cni-conf.json")) as f:
        out.append(("k3s/cni-conf.json", json.load(f)))
    return out


@pytest.mark.parametrize("name,conflist", _cxi_entries(), ids=lambda x: x if isinstance(x, str) else "")
def test_shipped_conflists_parse(name, conflist):
    [entry] = [p for p in conflist["plugins"] if p["type"] == "cxi"]
    assert conflist["plugins"][-1] is entry            # chained last
    conf = parse_conf(json.dumps(dict(entry, cniVersion=conflist["cniVersion"],
                                      name=conflist["name"])).encode())
    assert conf.cni_version in ("1.0.0", "1.1.0")


@pytest.mark.parametrize("name,conflist", _cxi_entries(), ids=lambda x: x if isinstance(x, str) else "")
def test_shipped_conflists_allowed_by_the_example_node_policy(name, conflist):
    """Each example asks only for what cni/examples/cni-policy.json (or, for the Kubernetes ones,
    the default policy: no file) grants, and uses a cniVersion every plugin it chains speaks
    (asked from the installed plugins themselves: Debian's bridge 1.1.1 refuses 1.1.0)."""
    from pycxi.cni import policy
    [entry] = [p for p in conflist["plugins"] if p["type"] == "cxi"]
    conf = parse_conf(json.dumps(dict(entry, cniVersion=conflist["cniVersion"],
                                      name=conflist["name"])).encode())
    pol = policy.load(os.path.join(CNI, "examples", "cni-policy.json"))
    policy.apply(conf, pol)
    for p in conflist["plugins"]:
        exe = os.path.join("/usr/lib/cni", p["type"])
        if p["type"] == "cxi" or not os.access(exe, os.X_OK):
            continue
        out = subprocess.run([exe], input=b'{"cniVersion": "0.4.0"}', env={"CNI_COMMAND": "VERSION"},
                             capture_output=True)
        assert conflist["cniVersion"] in json.loads(out.stdout)["supportedVersions"], p["type"]


def test_daemonset_manifest_schema():
    kv = pytest.importorskip("kubernetes_validate")
    yaml = pytest.importorskip("yaml")
    with open(os.path.join(CNI, "k8s", "daemonset.yaml")) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    assert {d["kind"] for d in docs} == {"Namespace", "ServiceAccount", "DaemonSet"}
    for d in docs:
        kv.validate(d, "1.30.0", strict=True)
    # its one permission lives in the VNI service's manifests: get pods, bound to this account
    from pycxi.vni.manifests import manifests
    [sa] = [d for d in docs if d["kind"] == "ServiceAccount"]
    vni = [d for d in yaml.safe_load_all(manifests()) if d]
    [role] = [d for d in vni if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "pycxi-vni-lookup"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
    [binding] = [d for d in vni if d["kind"] == "ClusterRoleBinding"
                 and d["roleRef"]["name"] == "pycxi-vni-lookup"]
    assert {"kind": "ServiceAccount", "name": sa["metadata"]["name"],
            "namespace": sa["metadata"]["namespace"]} in binding["subjects"]


def test_installer_kubeconfig_loads(tmp_path):
    """The kubeconfig install.sh writes is one pycxi.vni.kube reads (JSON, relative files)."""
    from pycxi.vni.kube import KubeConfig
    text = open(os.path.join(CNI, "k8s", "install.sh")).read()
    kc = text.split("<<KC\n", 1)[1].split("\nKC\n", 1)[0]
    kc = kc.replace("${KUBERNETES_SERVICE_HOST}", "10.43.0.1").replace("${KUBERNETES_SERVICE_PORT}", "443")
    (tmp_path / "cxi.kubeconfig").write_text(kc)
    (tmp_path / "token").write_text("tok")
    (tmp_path / "ca.crt").write_text("")
    cfg = KubeConfig.from_kubeconfig(str(tmp_path / "cxi.kubeconfig"))
    assert cfg.host == "10.43.0.1" and cfg.port == 443 and cfg.scheme == "https"
    assert cfg.token_file == str(tmp_path / "token")


def test_console_script():
    """``pip install .`` provides ``cxi`` (pyproject's console script), so a venv's bin/ can
    serve as a CNI bin dir."""
    exe = os.path.join(os.path.dirname(PY), "cxi")
    if not os.access(exe, os.X_OK):
        pytest.skip("pycxi is not pip-installed into this interpreter's environment")
    p = subprocess.run([exe], input=b'{"cniVersion": "0.4.0"}', env={"CNI_COMMAND": "VERSION"},
                       capture_output=True)
    assert p.returncode == 0 and json.loads(p.stdout)["cniVersion"] == "0.4.0"
