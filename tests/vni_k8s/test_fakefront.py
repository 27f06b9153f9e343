"""The fake API server's fast front (fakeapi._Front): it answers as aiohttp's front
does, byte for byte, and hands everything else to aiohttp on the same connection."""
from __future__ import annotations

import http.client
import json
import re
import socket
import urllib.parse
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fakeapi import FakeApiServer

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
VNIS = "/apis/vni.pycxi.dev/v1alpha1/vnis"
UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
STAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)")
DATE = re.compile(rb"\r\nDate: [^\r]*")


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple]:
    """The same fake twice: with the fast front, and aiohttp's alone."""
    with FakeApiServer() as fast, FakeApiServer(fast=False) as slow:
        yield fast, slow


def _port(srv: FakeApiServer) -> int:
    return urllib.parse.urlsplit(srv.url).port


def _request(method: str, path: str, body=None, headers: dict = None, port: int = 0) -> bytes:
    data = b"" if body is None else json.dumps(body).encode()
    h = {"Host": f"127.0.0.1:{port}", "User-Agent": "t", "Accept": "application/json"}
    if body is not None:
        h["Content-Type"] = "application/merge-patch+json" if method == "PATCH" else "application/json"
        h["Content-Length"] = str(len(data))
    h.update(headers or {})
    return (f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
            + "\r\n").encode() + data


def _read_response(f) -> bytes:
    """One Content-Length response, head and body, from a socket file."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = f.readline()
        assert line, "connection closed"
        head += line
    n = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
    return head + f.read(n)


def _norm(resp: bytes, uids: dict) -> bytes:
    """A response with what differs between two servers by design made equal: the Date
    header, uids (numbered in order of appearance) and timestamps."""
    resp = DATE.sub(b"\r\nDate: D", resp)
    resp = UUID.sub(lambda m: b"uid-%032d" % uids.setdefault(m.group(), len(uids)), resp)
    return STAMP.sub(lambda m: b"T" * len(m.group()), resp)


def _rows(srv: FakeApiServer, start: int) -> list:
    port = str(_port(srv))
    out: list = []
    uids: dict = {}
    for r in srv.kube._requests[start:]:
        out.append((r.method, str(r.url).replace(port, "PORT"),
                    r.params, {k: v.replace(port, "PORT") for k, v in r.headers.items()},
                    _norm(r.body, uids), _norm(r.text.encode(), uids), r.action, r.resource,
                    r.namespace, r.name, r.subresource, r.cookies, r._raw_request, r._stream_bus,
                    _norm(json.dumps(r.data).encode(), uids)))
    return out


# one step: (verb, object name, variant)
steps = st.lists(st.tuples(
    st.sampled_from(["create", "get", "patch", "patch-stale", "patch-status", "delete",
                     "delete-uid", "delete-wrong-uid", "list", "list-selected",
                     "create-vni", "patch-vni-status", "delete-finalized"]),
    st.sampled_from(["a", "b"])), min_size=1, max_size=12)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps, data=st.data())
def test_fast_front_answers_byte_for_byte_as_aiohttp(pair, steps, data):
    ns = "ns" + data.draw(st.uuids()).hex[:12]
    fast, slow = pair
    before = fast.kube.fast_served
    starts = [len(s.kube._requests) for s in pair]
    answers = []
    for srv in pair:
        uids: dict = {}
        got = []
        with socket.create_connection(("127.0.0.1", _port(srv))) as sock, \
                sock.makefile("rb") as f:
            state: dict = {}  # name -> last object this server returned
            for verb, name in steps:
                base = LEASES.format(ns=ns)
                obj = state.get(name) or {}
                md = obj.get("metadata", {})
                if verb in ("create", "delete-finalized"):
                    fin = {"finalizers": ["f"]} if verb == "delete-finalized" else {}
                    req = ("POST", base, {
                        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": name, "labels": {"k": name}, **fin},
                        "spec": {"holderIdentity": "h"}})
                elif verb == "create-vni":
                    req = ("POST", VNIS, {"apiVersion": "vni.pycxi.dev/v1alpha1", "kind": "Vni",
                                          "metadata": {"name": f"{ns}-{name}"},
                                          "spec": {"vni": 7}, "status": {"x": "dropped"}})
                elif verb == "patch-vni-status":
                    req = ("PATCH", f"{VNIS}/{ns}-{name}/status",
                           {"status": {"x": "y"}, "spec": {"vni": 9}})
                elif verb == "get":
                    req = ("GET", f"{base}/{name}", None)
                elif verb == "patch":
                    req = ("PATCH", f"{base}/{name}", {
                        "metadata": {"resourceVersion": md.get("resourceVersion")},
                        "spec": {"holderIdentity": "p"}})
                elif verb == "patch-stale":
                    req = ("PATCH", f"{base}/{name}", {"metadata": {"resourceVersion": "1"},
                                                       "spec": {"holderIdentity": "q"}})
                elif verb == "patch-status":
                    req = ("PATCH", f"{base}/{name}/status", {"metadata": {"finalizers": []}})
                elif verb == "delete":
                    req = ("DELETE", f"{base}/{name}", None)
                elif verb == "delete-uid":
                    req = ("DELETE", f"{base}/{name}", {
                        "kind": "DeleteOptions", "apiVersion": "v1",
                        "preconditions": {"uid": md.get("uid", "none")}})
                elif verb == "delete-wrong-uid":
                    req = ("DELETE", f"{base}/{name}", {"preconditions": {"uid": "wrong"}})
                elif verb == "list":
                    req = ("GET", base, None)
                else:
                    req = ("GET", f"{base}?labelSelector=k%3D{name}", None)
                sock.sendall(_request(*req, port=_port(srv)))
                resp = _read_response(f)
                body = json.loads(resp.split(b"\r\n\r\n", 1)[1])
                if resp.startswith(b"HTTP/1.1 20") and body.get("kind") == "Lease":
                    state[name] = body
                got.append(_norm(resp, uids))
        answers.append(got)
    assert answers[0] == answers[1]
    assert fast.kube.fast_served - before == len(steps)  # none of them went to aiohttp
    rows = [_rows(s, n) for s, n in zip(pair, starts)]
    assert rows[0] == rows[1]


def test_a_connection_goes_to_aiohttp_and_back(api):
    """Fast requests, then requests only aiohttp serves (discovery, /version, a watch),
    all on one keep-alive connection."""
    u = urllib.parse.urlsplit(api.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    base = LEASES.format(ns="n")

    def call(method, path, body=None):
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())

    n0 = api.kube.fast_served
    assert call("POST", base, {"metadata": {"name": "a"}})[0] == 201
    status, doc = call("GET", "/apis")
    assert status == 200 and doc["kind"] == "APIGroupList"
    assert call("GET", base + "/a")[1]["metadata"]["name"] == "a"
    assert call("GET", "/version")[0] == 200
    assert call("GET", base)[1]["items"][0]["metadata"]["name"] == "a"
    assert api.kube.fast_served - n0 == 3  # the connection came back to the fast path twice
    conn.request("GET", base + "?watch=true")
    r = conn.getresponse()
    assert r.status == 200
    assert json.loads(r.readline())["object"]["metadata"]["name"] == "a"
    other = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    other.request("POST", base, body=json.dumps({"metadata": {"name": "b"}}))
    assert other.getresponse().status == 201
    ev = json.loads(r.readline())
    assert ev["type"] == "ADDED" and ev["object"]["metadata"]["name"] == "b"
    conn.close()
    other.close()


def test_pipelined_requests_are_answered_in_order(api):
    port = _port(api)
    base = LEASES.format(ns="p")
    reqs = [_request("POST", base, {"metadata": {"name": "a"}}, port=port),
            _request("GET", "/apis/coordination.k8s.io/v1", port=port),  # aiohttp's
            _request("GET", base + "/a", port=port),
            _request("POST", base, {"metadata": {"name": "a"}}, port=port),  # 409
            _request("GET", "/api", port=port),  # aiohttp's
            _request("DELETE", base + "/a", port=port, headers={"Connection": "close"}),
            _request("GET", base + "/a", port=port)]  # after close: never answered
    with socket.create_connection(("127.0.0.1", port)) as sock, sock.makefile("rb") as f:
        sock.sendall(b"".join(reqs))
        got = [_read_response(f) for _ in range(6)]
        assert f.read() == b""  # closed after the DELETE, as it asked
    assert [r.split(b" ", 2)[1] for r in got] == [b"201", b"200", b"200", b"409", b"200", b"200"]
    assert b'"kind": "APIResourceList"' in got[1] and b"Connection: close" in got[5]
    assert json.loads(got[2].split(b"\r\n\r\n", 1)[1])["metadata"]["name"] == "a"


def test_chunked_and_expect_requests_go_to_aiohttp(api):
    u = urllib.parse.urlsplit(api.url)
    base = LEASES.format(ns="c")
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    n0 = api.kube.fast_served
    conn.request("POST", base, body=iter([b'{"metadata": ', b'{"name": "a"}}']),
                 encode_chunked=True, headers={"Content-Type": "application/json"})
    assert conn.getresponse().read() and api.kube.fast_served == n0
    with socket.create_connection(("127.0.0.1", u.port)) as sock, sock.makefile("rb") as f:
        body = b'{"metadata": {"name": "b"}}'
        sock.sendall(_request("POST", base, None, port=u.port, headers={
            "Expect": "100-continue", "Content-Length": str(len(body))}))
        sock.sendall(body)  # aiohttp's low-level server sends no 100 Continue: clients go on
        assert _read_response(f).startswith(b"HTTP/1.1 201")
    assert api.kube.fast_served == n0
    stored = api.kube._store[api.kube._requests[-1].resource].values()
    assert [o["metadata"]["name"] for o in stored] == ["a", "b"]
    conn.close()


def test_faults_are_injected_through_the_fast_front(api):
    u = urllib.parse.urlsplit(api.url)
    base = LEASES.format(ns="f")
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)

    def post(name):
        conn.request("POST", base, body=json.dumps({"metadata": {"name": name}}))
        r = conn.getresponse()
        return r.status, r.read()

    assert post("a")[0] == 201
    api.kube.faults[("POST", "leases")] = 1
    api.kube.lost[("POST", "leases")] = 1
    status, body = post("b")
    assert status == 500 and b"injected fault" in body
    assert post("c")[0] == 500  # lost: committed, answered 500
    assert post("c")[0] == 409
    assert post("d")[0] == 201
    names = {k[1] for k, o in api.kube._store[api.kube._requests[-1].resource].items() if o}
    assert names == {"a", "c", "d"}
    conn.close()
