"""The fake API server's own semantics (fakeapi.py), where its short paths bypass kmock's:
the tests elsewhere rely on them, and the benchmark's numbers are only comparable if the
fake answers as the API server would."""
from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
import uuid
from typing import Optional

import kmock
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kmock._internal import enums

from pycxi.vni.kube import FIELD_MANAGER, KubeClient, KubeConfig, KubeError

LEASES = "/apis/coordination.k8s.io/v1/namespaces/ns/leases"
VNIS = "/apis/vni.pycxi.dev/v1alpha1/vnis"


def lease(name: str, holder: str = "x") -> dict:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name}, "spec": {"holderIdentity": holder}}


def test_writes_are_preconditioned_as_on_the_api_server(client):
    a = client.create(LEASES, lease("a"))
    md = a["metadata"]
    assert md["namespace"] == "ns" and md["uid"] and md["resourceVersion"]
    with pytest.raises(KubeError) as e:
        client.create(LEASES, lease("a"))
    assert e.value.status == 409
    b = client.patch(LEASES + "/a", {"metadata": {"resourceVersion": md["resourceVersion"]},
                                     "spec": {"holderIdentity": "y"}})
    assert b["spec"]["holderIdentity"] == "y"
    assert int(b["metadata"]["resourceVersion"]) > int(md["resourceVersion"])
    with pytest.raises(KubeError) as e:  # the version it was read at is gone
        client.patch(LEASES + "/a", {"metadata": {"resourceVersion": md["resourceVersion"]},
                                     "spec": {"holderIdentity": "z"}})
    assert e.value.status == 409
    with pytest.raises(KubeError) as e:
        client.delete(LEASES + "/a", uid="not-its-uid")
    assert e.value.status == 409
    client.delete(LEASES + "/a", uid=md["uid"])
    with pytest.raises(KubeError) as e:
        client.get(LEASES + "/a")
    assert e.value.status == 404


def test_status_subresource_takes_only_status(client):
    v = client.create(VNIS, {"apiVersion": "vni.pycxi.dev/v1alpha1", "kind": "Vni",
                             "metadata": {"name": "vni-5"}, "spec": {"vni": 5},
                             "status": {"releasedAt": "dropped on create"}})
    assert "status" not in v
    client.patch(VNIS + "/vni-5/status", {"spec": {"vni": 6}, "status": {"releasedAt": "t"}})
    client.patch(VNIS + "/vni-5", {"spec": {"key": "k"}, "status": {"releasedAt": "u"}})
    got = client.get(VNIS + "/vni-5")
    assert got["spec"] == {"vni": 5, "key": "k"} and got["status"] == {"releasedAt": "t"}


def _watch(url: str, path: str, **params: str):
    """The events of one watch request, as they arrive."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request("GET", path + "?" + urllib.parse.urlencode({"watch": "true", **params}))
    resp = conn.getresponse()
    assert resp.status == 200
    try:
        while True:
            line = resp.readline()
            if not line:
                return
            yield json.loads(line)
    finally:
        conn.close()


def test_watch_streams_objects_then_changes_and_bookmarks_when_quiet(api, client):
    client.create(LEASES, lease("before"))
    api.kube.bookmark_interval = 0.2
    events = _watch(api.url, LEASES, allowWatchBookmarks="true")
    first = next(events)
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "before")
    client.create(LEASES, lease("after"))
    second = next(events)
    assert (second["type"], second["object"]["metadata"]["name"]) == ("ADDED", "after")
    client.delete(LEASES + "/after")
    assert next(events)["type"] == "DELETED"
    mark = next(events)  # nothing else happens: the stream stays alive with a bookmark
    assert mark["type"] == "BOOKMARK" and mark["object"]["kind"] == "Lease"
    assert int(mark["object"]["metadata"]["resourceVersion"]) >= int(
        second["object"]["metadata"]["resourceVersion"])


CMS = "/api/v1/namespaces/ns/configmaps"


def cm(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}}


def test_writes_with_a_stale_version_or_for_a_missing_object_change_nothing(api, client):
    a = client.create(LEASES, lease("a"))
    with pytest.raises(KubeError) as e:  # a stale version: 409, the lease as it was
        client.patch(LEASES + "/a", {"metadata": {"resourceVersion": "0"},
                                     "spec": {"holderIdentity": "z"}})
    assert e.value.status == 409
    assert client.get(LEASES + "/a") == a
    with pytest.raises(KubeError) as e:
        client.delete(LEASES + "/a", resource_version="0")
    assert e.value.status == 409
    assert client.get(LEASES + "/a") == a
    for call in (lambda: client.patch(LEASES + "/b", {"spec": {}}),
                 lambda: client.delete(LEASES + "/b"), lambda: client.get(LEASES + "/b")):
        with pytest.raises(KubeError) as e:
            call()
        assert e.value.status == 404
    with pytest.raises(KubeError) as e:  # gone is gone: a second delete finds nothing
        client.delete(LEASES + "/a")
        client.delete(LEASES + "/a")
    assert e.value.status == 404
    assert client.create(LEASES, lease("a"))["metadata"]["uid"] != a["metadata"]["uid"]


def test_status_subresource_split_applies_to_every_kind_that_has_one(client):
    """Kinds with a status subresource: the main resource ignores status, /status takes
    only status.  Kinds without (ConfigMap): status is an ordinary field."""
    jobs = "/apis/batch/v1/namespaces/ns/jobs"
    client.create(jobs, {"metadata": {"name": "j"}, "spec": {"parallelism": 1},
                         "status": {"active": 9}})
    client.patch(jobs + "/j/status", {"metadata": {"labels": {"x": "y"}},
                                      "status": {"active": 1}})
    client.patch(jobs + "/j", {"spec": {"parallelism": 2}, "status": {"active": 5}})
    got = client.get(jobs + "/j")
    assert got["spec"] == {"parallelism": 2} and got["status"] == {"active": 1}
    assert "labels" not in got["metadata"]
    assert client.get(jobs + "/j/status") == got
    c = client.create(CMS, {"metadata": {"name": "c"}, "status": {"s": 1}})
    assert c["status"] == {"s": 1}


def test_merge_patch_merges_maps_and_null_removes(client):
    client.create(CMS, {"metadata": {"name": "c", "labels": {"a": "1", "b": "2"}},
                        "data": {"k": "v", "l": "w"}})
    before = client.get(CMS + "/c")
    got = client.patch(CMS + "/c", {"metadata": {"labels": {"a": None, "c": "3"}},
                                    "data": {"k": None, "m": "x"}})
    assert got["metadata"]["labels"] == {"b": "2", "c": "3"}
    assert got["data"] == {"l": "w", "m": "x"}
    assert got["metadata"]["uid"] == before["metadata"]["uid"]
    assert int(got["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    assert client.get(CMS + "/c") == got


_label = st.sampled_from(["a", "b", "c"])
_value = st.sampled_from(["1", "2"])


@st.composite
def _term(draw) -> tuple:
    op = draw(st.sampled_from(["=", "==", "!=", "exists", "!"]))
    k = draw(_label)
    if op in ("exists", "!"):
        return (op, k, None)
    return (op, k, draw(_value))


def _render(term: tuple) -> str:
    op, k, v = term
    return k if op == "exists" else f"!{k}" if op == "!" else f"{k}{op}{v}"


def _selects(labels: dict, terms: list) -> bool:
    """Kubernetes' equality-based selector, term by term (all must hold)."""
    def one(op: str, k: str, v: Optional[str]) -> bool:
        return {"=": lambda: labels.get(k) == v, "==": lambda: labels.get(k) == v,
                "!=": lambda: labels.get(k) != v, "exists": lambda: k in labels,
                "!": lambda: k not in labels}[op]()
    return all(one(*t) for t in terms)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(objs=st.lists(st.dictionaries(_label, _value), min_size=1, max_size=6),
       terms=st.lists(_term(), min_size=1, max_size=3))
def test_list_label_selector_selects_as_kubernetes_does(api, client, objs, terms):
    ns = "sel-" + uuid.uuid4().hex[:8]  # one namespace per example: the fixture is shared
    base = f"/api/v1/namespaces/{ns}/configmaps"
    for i, labels in enumerate(objs):
        client.create(base, cm(f"o{i}", **labels))
    selector = ",".join(_render(t) for t in terms)
    got = [o["metadata"]["name"] for o in client.list(base, label_selector=selector)]
    assert got == [f"o{i}" for i, labels in enumerate(objs) if _selects(labels, terms)]


def test_list_is_at_a_resource_version_no_older_than_its_items(client, kubeconfig):
    client.create(CMS, cm("a"))
    b = client.create(CMS, cm("b"))
    first = client.request("GET", CMS)
    assert first["kind"] == "List" and [o["metadata"]["name"] for o in first["items"]] == ["a", "b"]
    rv = int(first["metadata"]["resourceVersion"])
    assert rv >= max(int(o["metadata"]["resourceVersion"]) for o in first["items"])
    client.patch(CMS + "/b", {"data": {"x": "y"}})
    client.delete(CMS + "/a")
    second = client.request("GET", CMS)
    assert [o["metadata"]["name"] for o in second["items"]] == ["b"]
    assert int(second["metadata"]["resourceVersion"]) > rv
    assert second["items"][0]["metadata"]["uid"] == b["metadata"]["uid"]
    assert [o["metadata"]["name"] for o in client.list("/api/v1/configmaps")] == ["b"]
    assert client.list("/api/v1/namespaces/other/configmaps") == []


def test_watch_order_filters_and_one_encoding_for_every_watcher(api, client):
    """Two watches of one namespace see the same byte-identical events in commit order;
    a watch of another namespace or of one name sees only its own."""
    other = "/api/v1/namespaces/other/configmaps"
    client.create(CMS, cm("old"))
    client.create(CMS, cm("b"))
    client.create(other, cm("x"))
    raw = [_watch_lines(api.url, CMS), _watch_lines(api.url, CMS)]
    theirs = _watch(api.url, other)
    named = _watch(api.url, CMS + "/b")
    for r in raw:  # each starts with the objects there are
        assert [json.loads(next(r))["object"]["metadata"]["name"] for _ in range(2)] == ["old", "b"]
    assert next(theirs)["object"]["metadata"]["name"] == "x"
    assert next(named)["object"]["metadata"]["name"] == "b"
    client.create(CMS, cm("a"))
    client.patch(CMS + "/b", {"data": {"k": "v"}})
    client.create(other, cm("y"))
    client.delete(CMS + "/a")
    client.delete(CMS + "/b")
    want = [("ADDED", "a"), ("MODIFIED", "b"), ("DELETED", "a"), ("DELETED", "b")]
    lines = [[next(r) for _ in want] for r in raw]
    assert lines[0] == lines[1]
    events = [json.loads(ln) for ln in lines[0]]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == want
    assert [json.dumps(e).encode() + b"\n" for e in events] == lines[0]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events[:2]]
    assert rvs == sorted(rvs) and len(set(rvs)) == 2
    assert events[1]["object"]["data"] == {"k": "v"}
    e = next(theirs)
    assert (e["type"], e["object"]["metadata"]["name"]) == ("ADDED", "y")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in (next(named), next(named))] \
        == [("MODIFIED", "b"), ("DELETED", "b")]


def test_a_watch_started_during_writes_sees_each_object_once(api, client, kubeconfig):
    """The objects a watch starts with and the changes it streams after meet exactly:
    whatever is created around the watch's start shows up once, never lost, never twice."""
    n = 60
    done = threading.Event()

    def writer() -> None:
        c = KubeClient(KubeConfig.load(kubeconfig), timeout=10)
        try:
            for i in range(n):
                c.create(CMS, cm(f"w{i}"))
        finally:
            c.close()
            done.set()
    t = threading.Thread(target=writer)
    t.start()
    while not client.list(CMS):
        pass  # the writer is under way
    events = _watch(api.url, CMS)
    done.wait(30)
    t.join()
    seen = [next(events)["object"]["metadata"]["name"] for _ in range(n)]
    assert sorted(seen) == sorted(f"w{i}" for i in range(n))


def test_deleting_an_object_with_finalizers_marks_it_and_removing_them_deletes_it(api, client):
    client.create(CMS, {"metadata": {"name": "f", "finalizers": ["x/y"]}})
    events = _watch(api.url, CMS + "/f")
    assert next(events)["type"] == "ADDED"
    marked = client.delete(CMS + "/f")
    assert marked["metadata"]["deletionTimestamp"] and marked["metadata"]["finalizers"] == ["x/y"]
    e = next(events)
    assert e["type"] == "MODIFIED" and e["object"]["metadata"]["deletionTimestamp"]
    assert client.get(CMS + "/f") == marked
    assert client.delete(CMS + "/f") == marked  # already being deleted: nothing changes
    last = client.patch(CMS + "/f", {"metadata": {"finalizers": None}})
    assert "finalizers" not in last["metadata"]
    assert [next(events)["type"] for _ in range(2)] == ["MODIFIED", "DELETED"]
    with pytest.raises(KubeError) as err:
        client.get(CMS + "/f")
    assert err.value.status == 404


def test_listeners_see_each_committed_write(api, client):
    seen: list = []
    api.kube.listeners.append(lambda plural, obj, name: seen.append(
        (plural, name, None if obj is None else obj["metadata"]["resourceVersion"])))
    a = client.create(LEASES, lease("a"))
    b = client.patch(LEASES + "/a", {"spec": {"holderIdentity": "b"}})
    with pytest.raises(KubeError):
        client.create(LEASES, lease("a"))  # refused: no write, no call
    client.delete(LEASES + "/a")
    assert seen == [("leases", "a", a["metadata"]["resourceVersion"]),
                    ("leases", "a", b["metadata"]["resourceVersion"]), ("leases", "a", None)]


def _watch_lines(url: str, path: str, **params: str):
    """The raw lines of one watch request, as they arrive."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request("GET", path + "?" + urllib.parse.urlencode({"watch": "true", **params}))
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("application/json")
    try:
        while True:
            line = resp.readline()
            if not line:
                return
            yield line
    finally:
        conn.close()


def test_the_request_log_holds_what_kmocks_parser_would(api, client):
    """srv.kube._requests, which the benchmark and the controller tests read."""
    client.create(VNIS, {"metadata": {"name": "vni-7"}, "spec": {"vni": 7}})
    n = len(api.kube._requests)
    client.patch(VNIS + "/vni-7/status", {"status": {"releasedAt": "t"}})
    client.list("/api/v1/namespaces/ns/configmaps", label_selector="a=b")
    patch, lst = api.kube._requests[n:]
    assert patch.id == n and lst.id == n + 1
    assert (patch.method.value.upper(), patch.url.path, patch.resource.plural,
            patch.subresource, patch.name, patch.namespace, patch.action) == (
        "PATCH", "/apis/vni.pycxi.dev/v1alpha1/vnis/vni-7/status", "vnis", "status", "vni-7",
        None, enums.action.UPDATE)
    assert patch.url.host == "127.0.0.1" and patch.url.port == int(api.url.rsplit(":", 1)[1])
    assert patch.params == {"fieldManager": FIELD_MANAGER}
    assert patch.headers["Content-Type"] == "application/merge-patch+json"
    assert patch.headers["User-Agent"].startswith("pycxi")
    assert json.loads(patch.body)["status"] == {"releasedAt": "t"} == patch.data["status"]
    assert patch.resource == kmock.resource("vni.pycxi.dev/v1alpha1/vnis")
    assert (lst.method.value.upper(), lst.params, lst.action, lst.namespace, lst.subresource,
            lst.resource.plural) == ("GET", {"labelSelector": "a=b"}, enums.action.LIST, "ns",
                                     None, "configmaps")
