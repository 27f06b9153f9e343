"""Pure pieces of the Kubernetes half: request parsing, completion, configuration,
kubeconfig loading, and the controller's metrics endpoint."""
from __future__ import annotations

import base64
import json
import socket
import time
import urllib.request

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycxi.vni.kstore import format_time, parse_time
from pycxi.vni.kube import KubeConfig, KubeConfigError
from pycxi.vni.reconciler import Config
from pycxi.vni.rules import (POD, VOLCANO_JOB, WATCHED_KINDS, Kind, is_finished, parse_kinds,
                             parse_request)

JOB = WATCHED_KINDS[0]


@pytest.mark.parametrize("meta,template,own,claims,invalid", [
    ({"vni.pycxi.dev/vni": "true"}, None, True, (), ""),
    ({"vni": "yes"}, None, True, (), ""),                     # the original's key
    (None, {"vni.pycxi.dev/vni": "True"}, True, (), ""),       # pod template only
    ({"vni.pycxi.dev/vni": "shared"}, None, False, ("shared",), ""),
    ({"vni.pycxi.dev/vni": "true, a,b,a"}, None, True, ("a", "b"), ""),
    ({"vni.pycxi.dev/vni": "false"}, None, False, (), ""),
    ({"vni.pycxi.dev/vni": ""}, None, False, (), ""),
    ({"vni.pycxi.dev/vni": "other/claim"}, None, False, (), "ClaimRefused"),
    ({"vni.pycxi.dev/vni": "Bad_Name"}, None, False, (), "InvalidRequest"),
    ({"vni.pycxi.dev/vni": "true,a,b,c,d"}, None, False, (), "InvalidRequest"),
])
def test_parse_request(meta, template, own, claims, invalid):
    obj = {"metadata": {"annotations": meta or {}}}
    if template is not None:
        obj["spec"] = {"template": {"metadata": {"annotations": template}}}
    r = parse_request(obj)
    assert (r.own, r.claims, r.invalid_reason) == (own, claims, invalid)
    assert r.asks == bool(own or claims or invalid)


def test_is_finished():
    assert is_finished(JOB, {"status": {"conditions": [{"type": "Complete", "status": "True"}]}})
    assert is_finished(JOB, {"status": {"conditions": [{"type": "Failed", "status": "True"}]}})
    assert not is_finished(JOB, {"status": {"conditions": [{"type": "Complete", "status": "False"}]}})
    assert not is_finished(JOB, {"status": {"conditions": [{"type": "Suspended", "status": "True"}]}})
    assert is_finished(POD, {"status": {"phase": "Succeeded"}})
    assert not is_finished(POD, {"status": {"phase": "Running"}})
    assert is_finished(VOLCANO_JOB, {"status": {"state": {"phase": "Aborted"}}})
    assert not is_finished(WATCHED_KINDS[1], {"status": {}})  # Deployments never complete


def test_config_from_env():
    c = Config.from_env({"PYCXI_VNI_RANGES": "2000-2999,5000", "PYCXI_VNI_QUARANTINE": "120",
                         "POD_NAMESPACE": "sys", "PYCXI_VNI_EXTRA_KINDS": "example.com/v1/mpijobs/MPIJob",
                         "PYCXI_VNI_VOLCANO": "false", "PYCXI_VNI_LEADER_ELECTION": "no"})
    assert c.ranges == ((2000, 2999), (5000, 5000)) and c.quarantine == 120.0
    assert c.namespace == "sys" and not c.leader_election
    assert VOLCANO_JOB not in c.kinds and Kind("example.com", "v1", "mpijobs", "MPIJob") in c.kinds
    assert Config.from_env({}).ranges == ((1024, 65535),)
    assert parse_kinds("v1/things/Thing") == (Kind("", "v1", "things", "Thing"),)
    with pytest.raises(ValueError):
        parse_kinds("nonsense")


def test_time_roundtrip():
    for t in (0.0, 1_800_000_000.0, 1_800_000_029.9, 1_800_000_001.123456):
        assert parse_time(format_time(t)) == pytest.approx(t, abs=1e-6)
    assert parse_time("garbage") is None and parse_time(None) is None
    # the API's layout only, every field checked
    for bad in ("2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-12-01T24:00:00Z",
                "2026-12-01 10:00:00Z", "2026-1-1T1:2:3Z", "2026-12-01", "", 5):
        assert parse_time(bad) is None, bad


@given(st.floats(0, 4e9), st.sampled_from(["full", "seconds", "no-z"]))
def test_parse_time_reads_what_format_time_and_the_api_write(t, form):
    s = format_time(t)
    if form == "seconds":       # creationTimestamp: whole seconds
        s, t = s[:19] + "Z", float(int(t))
    elif form == "no-z":
        s = s[:-1]
    assert parse_time(s) == pytest.approx(t, abs=1e-6)


def _kubeconfig(tmp_path, user: dict, cluster: dict) -> str:
    p = tmp_path / "kc.json"
    p.write_text(json.dumps({
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "team"}}],
        "clusters": [{"name": "k", "cluster": cluster}],
        "users": [{"name": "u", "user": user}]}))
    return str(p)


def test_kubeconfig_token_and_token_file(tmp_path):
    c = KubeConfig.load(_kubeconfig(tmp_path, {"token": "abc"}, {"server": "https://k:6443",
                                                                  "insecure-skip-tls-verify": True}))
    assert (c.host, c.port, c.scheme, c.bearer(), c.namespace) == ("k", 6443, "https", "abc", "team")
    (tmp_path / "tok").write_text("from-file\n")
    c = KubeConfig.load(_kubeconfig(tmp_path, {"tokenFile": "tok"}, {"server": "http://h"}))
    assert c.bearer() == "from-file" and c.port == 80


def test_kubeconfig_yaml_and_unsupported_auth(tmp_path):
    p = tmp_path / "kc.yaml"
    p.write_text("current-context: c\ncontexts:\n- name: c\n  context: {cluster: k, user: u}\n"
                 "clusters:\n- name: k\n  cluster: {server: 'https://x'}\n"
                 "users:\n- name: u\n  user:\n    exec: {command: aws}\n")
    with pytest.raises(KubeConfigError, match="exec"):
        KubeConfig.load(str(p))
    with pytest.raises(KubeConfigError):
        KubeConfig.load(str(tmp_path / "missing"))


def test_kubeconfig_ca_data(tmp_path):
    # an inline CA that is not a certificate must fail loudly, not fall back to no TLS
    bad = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n").decode()
    c = KubeConfig.load(_kubeconfig(tmp_path, {"token": "t"}, {
        "server": "https://k", "certificate-authority-data": bad}))
    with pytest.raises(Exception):
        c.ssl_context()


def test_in_cluster_config(tmp_path, monkeypatch):
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "namespace").write_text("pycxi-vni")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    c = KubeConfig.in_cluster(str(tmp_path))
    assert c.server == "https://10.0.0.1:443" and c.bearer() == "sa-token"
    assert c.namespace == "pycxi-vni"


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_metrics_endpoint(cluster):
    port = _free_port()
    cluster.start_controller("--metrics-port", str(port), "--ranges", "3000-3009", name="m")
    job = cluster.job("ns1", "j")
    cluster.pod_of(job, "j-0")
    cluster.wait_lookup("ns1", "j-0")
    deadline = time.monotonic() + 20
    text = ""
    while time.monotonic() < deadline:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
        except OSError:
            time.sleep(0.2)
            continue
        if "pycxi_vni_allocated 1.0" in text:
            break
        time.sleep(0.2)
    assert "pycxi_vni_allocated 1.0" in text
    assert "pycxi_vni_free 9.0" in text
    assert "pycxi_vni_allocations_total 1.0" in text
    assert "pycxi_vni_allocation_seconds_count 1.0" in text
    assert "pycxi_vni_errors_total" in text and "pycxi_vni_quarantined" in text


def test_e2e_script_is_valid_bash_and_documented_as_not_run_here():
    """tests/vni_k8s/e2e_kind.sh needs kind/k3s (not installable here): only checked."""
    import pathlib
    import shutil
    import subprocess

    script = pathlib.Path(__file__).with_name("e2e_kind.sh")
    text = script.read_text()
    assert "NOT run by this repository's test suite" in text
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_kopf_logs_in_with_our_kubeconfig(tmp_path):
    """One configuration and authentication path: kopf's credentials are derived from
    the same KubeConfig as the controller's own client."""
    from pycxi.vni.controller import connection_info

    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    kc = tmp_path / "kc.json"
    kc.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://10.0.0.1:6443",
                                               "certificate-authority-data":
                                               base64.b64encode(pem.encode()).decode()}}],
        "users": [{"name": "u", "user": {"token": "s3cret"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "sys"}}]}))
    info = connection_info(KubeConfig.load(str(kc)))
    assert info.server == "https://10.0.0.1:6443" and info.token == "s3cret"
    assert info.scheme == "Bearer" and info.default_namespace == "sys"
    assert info.ca_data == pem.encode() and info.ca_path is None
    assert info.certificate_path is None and info.certificate_data is None


def test_the_wiring_uses_only_level_based_handlers(client):
    """kopf's change-detecting handlers would store progress in (tenant-writable)
    annotations, its daemons and timers put a finalizer on every object: the wiring
    registers neither, only event handlers (one per watched kind and the claims) and
    the operator-level login/startup/cleanup."""
    from pycxi.vni.controller import Lease, build_registry
    from pycxi.vni.reconciler import Reconciler

    rec = Reconciler(Config(leader_election=False, metrics_port=0), client)
    reg = build_registry(rec, Lease(client, "pycxi-vni", "me", 15.0))
    assert not reg._changing.get_all_handlers() and not reg._spawning.get_all_handlers()
    assert not reg._indexing.get_all_handlers() and not reg._webhooks.get_all_handlers()
    events = reg._watching.get_all_handlers()
    assert len(events) == len(rec.config.kinds) + 1
    assert sorted(h.activity.value for h in reg._activities.get_all_handlers()) == [
        "authentication", "cleanup", "startup"]
    assert rec.requeue.__name__ == "requeue" and rec.post_event.__name__ == "post_event"
