"""The fake API server's own semantics (fakeapi.py), where its short paths bypass kmock's:
the tests elsewhere rely on them, and the benchmark's numbers are only comparable if the
fake answers as the API server would."""
from __future__ import annotations

import http.client
import json
import urllib.parse

import pytest

from pycxi.vni.kube import KubeError

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
