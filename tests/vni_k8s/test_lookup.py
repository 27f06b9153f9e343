"""The pod -> VNI lookup contract (pycxi.vni.lookup), as the CNI plugin sees it."""
from __future__ import annotations

import http.server
import threading
import time

import pytest

from pycxi.vni.kube import KubeClient, KubeConfig, POD_CONDITION
from pycxi.vni.lookup import (VniLookupError, VniNotReady, format_stamp, lookup_pod_vnis,
                              pod_vnis)

PODS = "/api/v1/namespaces/{ns}/pods"


def make_pod(client, ns, name, annotations=None, labels=None, status=None):
    return client.create(PODS.format(ns=ns), {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}, "labels": labels or {}},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
        "status": status or {},
    })


def stamp(client, ns, name, status, reason, message=""):
    client.patch(PODS.format(ns=ns) + f"/{name}/status", {"status": {"conditions": [
        {"type": POD_CONDITION, "status": status, "reason": reason, "message": message}]}})


class CountingClient(KubeClient):
    calls = 0

    def request(self, *a, **kw):
        CountingClient.calls += 1
        return super().request(*a, **kw)


def test_no_request_means_empty(client, kubeconfig):
    make_pod(client, "ns1", "plain")
    assert lookup_pod_vnis("ns1", "plain", kubeconfig=kubeconfig) == []


def test_asked_but_not_stamped_is_not_ready(client, kubeconfig):
    make_pod(client, "ns1", "p", annotations={"vni.pycxi.dev/vni": "true"})
    with pytest.raises(VniNotReady):
        lookup_pod_vnis("ns1", "p", kubeconfig=kubeconfig)
    make_pod(client, "ns1", "legacy", annotations={"vni": "yes"})
    with pytest.raises(VniNotReady):
        lookup_pod_vnis("ns1", "legacy", kubeconfig=kubeconfig)


def test_stamped_pod_gets_its_vnis_with_one_request(client, kubeconfig):
    make_pod(client, "ns1", "p", annotations={"vni.pycxi.dev/vni": "true,shared"})
    stamp(client, "ns1", "p", "True", "Allocated", format_stamp([5001, 4242]))
    c = CountingClient(KubeConfig.load(kubeconfig))
    CountingClient.calls = 0
    assert lookup_pod_vnis("ns1", "p", client=c) == [4242, 5001]
    assert CountingClient.calls == 1


@pytest.mark.parametrize("reason", ["Pending", "Exhausted", "ClaimNotFound", "ApiError"])
def test_false_condition_waiting_reasons(client, kubeconfig, reason):
    make_pod(client, "ns1", "p", annotations={"vni.pycxi.dev/vni": "c"})
    stamp(client, "ns1", "p", "False", reason, "x")
    with pytest.raises(VniNotReady):
        lookup_pod_vnis("ns1", "p", kubeconfig=kubeconfig)


def test_refused_claim_is_an_error_not_a_vni(client, kubeconfig):
    make_pod(client, "ns1", "p", annotations={"vni.pycxi.dev/vni": "other-ns/their-claim"})
    stamp(client, "ns1", "p", "False", "ClaimRefused", "claims are namespace-local")
    with pytest.raises(VniLookupError):
        lookup_pod_vnis("ns1", "p", kubeconfig=kubeconfig)


def test_pod_authored_fields_are_never_read_as_vnis(client, kubeconfig):
    # Everything a pod's author controls says "VNI 4242"; the controller wrote nothing.
    make_pod(client, "ns1", "forger",
             annotations={"vni.pycxi.dev/vni": "4242", "vni.pycxi.dev/vnis": "4242"},
             labels={"vni.pycxi.dev/vni-object": "vni-4242"},
             # the real API server drops status on create; the fake does too
             status={"conditions": [{"type": POD_CONDITION, "status": "True",
                                     "reason": "Allocated", "message": "vnis=4242"}]})
    with pytest.raises(VniNotReady):
        lookup_pod_vnis("ns1", "forger", kubeconfig=kubeconfig)
    # and the pure decision function ignores annotations/labels entirely
    pod = {"metadata": {"name": "x", "namespace": "ns1",
                        "annotations": {"vni.pycxi.dev/vnis": "4242"}}}
    assert pod_vnis(pod) == []


def test_replaced_pod_uid_mismatch(client, kubeconfig):
    p = make_pod(client, "ns1", "p", annotations={"vni.pycxi.dev/vni": "true"})
    stamp(client, "ns1", "p", "True", "Allocated", "vnis=2000")
    assert lookup_pod_vnis("ns1", "p", kubeconfig=kubeconfig, pod_uid=p["metadata"]["uid"]) == [2000]
    with pytest.raises(VniLookupError):
        lookup_pod_vnis("ns1", "p", kubeconfig=kubeconfig, pod_uid="not-this-one")


@pytest.mark.parametrize("message", ["4242", "vnis=", "vnis=0", "vnis=70000", "vnis=a",
                                     "vnis=1,2,3,4,5"])
def test_malformed_stamp_is_an_error(message):
    pod = {"metadata": {"name": "p", "namespace": "n"}, "status": {"conditions": [
        {"type": POD_CONDITION, "status": "True", "reason": "Allocated", "message": message}]}}
    with pytest.raises(VniLookupError):
        pod_vnis(pod)


def test_missing_pod_and_unreachable_api(kubeconfig, tmp_path):
    with pytest.raises(VniLookupError):
        lookup_pod_vnis("ns1", "nope", kubeconfig=kubeconfig)
    bad = tmp_path / "bad.json"
    bad.write_text('{"current-context": "c", "contexts": [{"name": "c", "context": '
                   '{"cluster": "c", "user": "u"}}], "clusters": [{"name": "c", "cluster": '
                   '{"server": "http://127.0.0.1:9"}}], "users": [{"name": "u", "user": {}}]}')
    with pytest.raises(VniLookupError):
        lookup_pod_vnis("ns1", "p", kubeconfig=str(bad))


def test_timeout_is_bounded(tmp_path):
    # a server that accepts and never answers
    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(5)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        kc = tmp_path / "slow.json"
        kc.write_text('{"current-context": "c", "contexts": [{"name": "c", "context": '
                      '{"cluster": "c", "user": "u"}}], "clusters": [{"name": "c", "cluster": '
                      f'{{"server": "http://127.0.0.1:{srv.server_port}"}}}}], '
                      '"users": [{"name": "u", "user": {"token": "t"}}]}')
        t0 = time.monotonic()
        with pytest.raises(VniLookupError):
            lookup_pod_vnis("ns1", "p", kubeconfig=str(kc), timeout=0.3)
        assert time.monotonic() - t0 < 1.5
    finally:
        srv.shutdown()
        srv.server_close()


def test_lookup_imports_only_the_standard_library():
    import subprocess
    import sys
    code = ("import sys; import pycxi.vni.lookup; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('kopf', 'kubernetes', 'yaml', 'aiohttp', 'prometheus_client', 'kmock', "
            # nor http.client and the email package it parses headers with (our own
            # transport), nor ssl for a plain-http API
            "'http', 'email', 'ssl')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("obj", [
    [], "text", {"kind": "Status", "status": "Success"}, {"message": "<html>login</html>"},
    {"metadata": "x"}, {"metadata": {"name": "p"}, "status": []},
    {"metadata": {"name": "p"}, "status": {"conditions": {"type": POD_CONDITION}}},
    {"metadata": {"name": "p"}, "status": {"conditions": ["x"]}},
    {"metadata": {"name": "p"}, "status": {"conditions": [{"type": POD_CONDITION, "status": True}]}},
    {"metadata": {"name": "p"}, "status": {"conditions": [
        {"type": POD_CONDITION, "status": "False", "reason": 5}]}},
])
def test_anything_but_a_well_formed_pod_is_an_error(obj):
    """Never "no VNI" from a mangled answer: a pod that asked must not start without one."""
    with pytest.raises(VniLookupError):
        pod_vnis(obj)
