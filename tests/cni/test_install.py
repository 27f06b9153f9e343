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
    (asked from Debian's installed plugins themselves: its bridge 1.1.1 refuses 1.1.0)."""
    from pycxi.cni import policy
    [entry] = [p for p in conflist["plugins"] if p["type"] == "cxi"]
    conf = parse_conf(json.dumps(dict(entry, cniVersion=conflist["cniVersion"],
                                      name=conflist["name"])).encode())
    pol = policy.load(os.path.join(CNI, "examples", "cni-policy.json"))
    policy.apply(conf, pol)
    if name.startswith("k3s/"):
        return          # k3s runs its own bundled plugins (1.1.0), not Debian's
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
    _check_daemonset_hardening(docs)
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


def _host(tmp_path, files, dirs=()):
    for path, text in files.items():
        p = tmp_path / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for d in dirs:
        (tmp_path / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return str(tmp_path)


CRI_V1 = """version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "pause#3"   # a '#' inside a string is not a comment
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"      # Debian's
    conf_dir = '/etc/cni/net.d'
"""
CRI_V2 = """version = 3
[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["/opt/cni/bin", "/usr/libexec/cni"]
"""


@pytest.mark.parametrize("files,dirs,want", [
    ({"/etc/containerd/config.toml": CRI_V1}, (), (["/usr/lib/cni"], "/etc/cni/net.d")),
    ({"/etc/containerd/config.toml": CRI_V2}, (), (["/opt/cni/bin", "/usr/libexec/cni"], "/etc/cni/net.d")),
    # k3s's generated config wins over /etc/containerd's
    ({"/etc/containerd/config.toml": CRI_V1,
      "/var/lib/rancher/k3s/agent/etc/containerd/config.toml":
          '[plugins."io.containerd.grpc.v1.cri".cni]\n  bin_dir = "/var/lib/rancher/k3s/data/cni"\n'
          '  conf_dir = "/var/lib/rancher/k3s/agent/etc/cni/net.d"\n'}, (),
     (["/var/lib/rancher/k3s/data/cni"], "/var/lib/rancher/k3s/agent/etc/cni/net.d")),
    # k3s before it has written its containerd config: its stable CNI dir if present
    ({}, ("/var/lib/rancher/k3s/data/current/bin",),
     (["/var/lib/rancher/k3s/data/current/bin"], "/var/lib/rancher/k3s/agent/etc/cni/net.d")),
    # no config: containerd's defaults, every one that exists (upstream and Debian's)
    ({"/etc/containerd/config.toml": "version = 2\n"}, ("/opt/cni/bin", "/usr/lib/cni"),
     (["/opt/cni/bin", "/usr/lib/cni"], "/etc/cni/net.d")),
    ({}, (), (["/opt/cni/bin"], "/etc/cni/net.d")),
], ids=["containerd1", "containerd2", "k3s-config", "k3s-old", "defaults-both", "nothing"])
def test_find_cni_dirs(tmp_path, files, dirs, want):
    root = _host(tmp_path, files, dirs)
    bins, conf, source = install.find_cni_dirs(root)
    assert (bins, conf) == want, source


def test_install_bin_dir_auto_says_where(tmp_path, capsys):
    root = _host(tmp_path, {"/etc/containerd/config.toml": CRI_V1})
    assert install.main(["--bin-dir", "auto", "--host-root", root, "--python", PY]) == 0
    err = capsys.readouterr().err
    assert "CNI dirs from /etc/containerd/config.toml: bin /usr/lib/cni; conf /etc/cni/net.d" in err
    assert f"installed {root}/usr/lib/cni/cxi" in err
    assert open(f"{root}/usr/lib/cni/cxi").readline() == f"#!{PY} -IS\n"
    assert install.main(["--show-dirs", "--host-root", root]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "binDirs": ["/usr/lib/cni"], "confDir": "/etc/cni/net.d", "source": "/etc/containerd/config.toml"}


def _check_daemonset_hardening(docs):
    """Hardened like the controller's Deployment, as far as a node component can be: PSA labels on
    its namespace, RuntimeDefault seccomp, a read-only root, every capability dropped but
    CAP_SYS_ADMIN (destroying CXI services), only the host paths it needs."""
    [ns] = [d for d in docs if d["kind"] == "Namespace"]
    labels = ns["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert f"pod-security.kubernetes.io/{mode}" in labels
    [ds] = [d for d in docs if d["kind"] == "DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["hostNetwork"] is True and not pod.get("hostPID") and not pod.get("hostIPC")
    assert pod["hostUsers"] is True
    [c] = pod["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    # the API refuses allowPrivilegeEscalation: false together with CAP_SYS_ADMIN
    assert "allowPrivilegeEscalation" not in sc
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert host == {"pycxi-prefix": "/opt/pycxi", "cni-bin": "/opt/cni/bin",
                    "cni-conf": "/etc/cni/net.d", "cxi-state": "/run/cni/cxi", "netns": "/run/netns"}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["netns"]["readOnly"] is True
    assert mounts["netns"]["mountPropagation"] == "HostToContainer"
    env = {e["name"]: e.get("value") for e in c["env"]}
    # the script's defaults are the mounts' container paths
    text = open(os.path.join(CNI, "k8s", "install.sh")).read()
    for var, mount in (("CNI_BIN_DIR", "cni-bin"), ("CNI_CONF_DIR", "cni-conf"),
                       ("PYCXI_PREFIX_DIR", "pycxi-prefix"), ("CXI_DATA_DIR", "cxi-state")):
        assert env[var] == mounts[mount]["mountPath"]
        assert f"${{{var}:-{env[var]}}}" in text
    assert c["ports"] == [{"name": "metrics", "containerPort": int(env["METRICS_PORT"]), "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # image name and entrypoint agree with the Containerfile
    cf = open(os.path.join(CNI, "k8s", "Containerfile")).read()
    assert 'ENTRYPOINT ["/bin/sh", "/install.sh"]' in cf and "COPY cni/k8s/install.sh /install.sh" in cf
    assert "command" not in c and "args" not in c
    assert c["image"].split("/")[-1].startswith("pycxi-cni:")


def test_daemonset_entrypoint_installs_then_sweeps(tmp_path):
    """install.sh as the DaemonSet runs it (paths overridden to a scratch tree; no kubelet here):
    copies the prefix, writes the launcher and the kubeconfig, then becomes ``pycxi node sweep``
    serving metrics; SIGTERM ends it with status 0."""
    import signal
    import socket
    import time
    import urllib.request
    img = tmp_path / "img"
    (img / "venv").mkdir(parents=True)
    (img / "venv" / "marker").write_text("x")
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("tok")
    (sa / "ca.crt").write_text("")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, CNI_BIN_DIR=str(tmp_path / "bin"), CNI_CONF_DIR=str(tmp_path / "net.d"),
               PYCXI_PREFIX_DIR=str(tmp_path / "prefix"), CXI_DATA_DIR=str(tmp_path / "state"),
               PYCXI_IMAGE_PREFIX=str(img), PYCXI_PYTHON=PY, SA_DIR=str(sa), SWEEP_INTERVAL="0.2",
               METRICS_ADDRESS="127.0.0.1", METRICS_PORT=str(port),
               KUBERNETES_SERVICE_HOST="10.43.0.1", KUBERNETES_SERVICE_PORT="443")
    (tmp_path / "prefix" / "venv").mkdir(parents=True)
    (tmp_path / "prefix" / "venv" / "stale").write_text("old")
    p = subprocess.Popen(["/bin/sh", os.path.join(CNI, "k8s", "install.sh")], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        text = None
        while time.monotonic() < deadline and p.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
                if "pycxi_node_sweeps_total" in text and "pycxi_node_sweeps_total 0" not in text:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert p.poll() is None, p.stderr.read().decode()
        assert text and "pycxi_node_sweep_errors_total 0" in text, text
        assert open(tmp_path / "bin" / "cxi").readline() == f"#!{PY} -IS\n"
        assert sorted(os.listdir(tmp_path / "prefix")) == ["venv"]          # replaced, no leftovers
        assert os.listdir(tmp_path / "prefix" / "venv") == ["marker"]
        kc = json.loads((tmp_path / "net.d" / "cxi.d" / "cxi.kubeconfig").read_text())
        assert kc["clusters"][0]["cluster"]["server"] == "https://10.43.0.1:443"
        assert oct(os.stat(tmp_path / "net.d" / "cxi.d" / "token").st_mode & 0o777) == "0o600"
        p.send_signal(signal.SIGTERM)          # the exec'd sweep is the shell's pid
        assert p.wait(20) == 0
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)   # the background kubeconfig refresher
        except ProcessLookupError:
            pass
        p.wait()


def test_systemd_units(tmp_path):
    """The node component's units for nodes without the DaemonSet: systemd accepts them (no
    unknown key, the command exists) and their command lines are valid ``pycxi`` invocations."""
    import shlex
    import shutil
    from pycxi.cli import build_parser
    units = os.path.join(CNI, "systemd")
    names = sorted(os.listdir(units))
    assert names == ["pycxi-node-sweep.service", "pycxi-node-sweep.timer", "pycxi-node.service"]
    for n in names:
        text = open(os.path.join(units, n)).read()
        for line in text.splitlines():
            if line.startswith("ExecStart="):
                argv = shlex.split(line.split("=", 1)[1])
                assert argv[:3] == ["/opt/pycxi/venv/bin/python", "-m", "pycxi.cli"]
                args = build_parser().parse_args(argv[3:])
                assert args.command == "node" and args.data_dir == "/run/cni/cxi"
        (tmp_path / n).write_text(text.replace("/opt/pycxi/venv/bin/python", PY))
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed")
    p = subprocess.run(["systemd-analyze", "verify", "--man=no"] + [str(tmp_path / n) for n in names],
                       capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    out = [line for line in (p.stdout + p.stderr).splitlines() if str(tmp_path) in line]
    assert p.returncode == 0 and out == [], p.stdout + p.stderr
