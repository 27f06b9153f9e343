"""The stdlib client over TLS, as in a real cluster: CA from the kubeconfig (inline
data), bearer token or client certificate, and refusal of a server it cannot verify."""
from __future__ import annotations

import base64
import http.server
import json
import pathlib
import shutil
import ssl
import subprocess
import tempfile
import threading

import pytest

from pycxi.vni.kube import KubeClient, KubeConfig, KubeError
from pycxi.vni.lookup import VniLookupError, lookup_pod_vnis

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

POD = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
       "status": {"conditions": [{"type": "vni.pycxi.dev/Allocated", "status": "True",
                                  "reason": "Allocated", "message": "vnis=4242"}]}}


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"),
                 "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "1",
                 "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.crt"))
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other",
             "-keyout", str(d / "other.key"), "-out", str(d / "other.crt"))
    return d


@pytest.fixture
def server(pki):
    seen = {}

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen["auth"] = self.headers.get("Authorization")
            seen["cert"] = self.connection.getpeercert()
            body = json.dumps(POD).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "server.crt"), str(pki / "server.key"))
    ctx.verify_mode = ssl.CERT_OPTIONAL  # token clients send no certificate
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"https://127.0.0.1:{srv.server_port}", seen
    srv.shutdown()
    srv.server_close()


def _kc(tmp_path, server_url, ca: bytes, user: dict) -> str:
    p = tmp_path / "kc.json"
    p.write_text(json.dumps({
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": {
            "server": server_url, "certificate-authority-data": base64.b64encode(ca).decode()}}],
        "users": [{"name": "u", "user": user}]}))
    return str(p)


def test_token_over_tls(pki, server, tmp_path):
    url, seen = server
    kc = _kc(tmp_path, url, (pki / "ca.crt").read_bytes(), {"token": "s3cret"})
    assert lookup_pod_vnis("ns", "p", kubeconfig=kc, pod_uid="u1") == [4242]
    assert seen["auth"] == "Bearer s3cret"


def test_client_certificate_over_tls(pki, server, tmp_path):
    url, seen = server
    b64 = lambda f: base64.b64encode((pki / f).read_bytes()).decode()  # noqa: E731
    kc = _kc(tmp_path, url, (pki / "ca.crt").read_bytes(),
             {"client-certificate-data": b64("client.crt"), "client-key-data": b64("client.key")})
    tmpdir = pathlib.Path(tempfile.gettempdir())
    before = set(tmpdir.glob("pycxi-kube-*"))
    assert lookup_pod_vnis("ns", "p", kubeconfig=kc) == [4242]
    subject = dict(x[0] for x in seen["cert"]["subject"])
    assert subject["commonName"] == "client" and seen["auth"] is None
    assert set(tmpdir.glob("pycxi-kube-*")) == before, "the inline key was written and removed"


def test_unverifiable_server_is_refused(pki, server, tmp_path):
    url, _ = server
    kc = _kc(tmp_path, url, (pki / "other.crt").read_bytes(), {"token": "s3cret"})
    with pytest.raises(VniLookupError):
        lookup_pod_vnis("ns", "p", kubeconfig=kc)
    c = KubeConfig.load(kc)
    with pytest.raises(KubeError):
        KubeClient(c, timeout=2).get("/api/v1/namespaces/ns/pods/p")
