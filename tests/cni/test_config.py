"""The pure parts: configuration parsing and the dispatcher (no device, no namespace)."""
import json

import pytest

from pycxi.cni import config, skel
from pycxi.cni.config import DEFAULT_LIMITS, parse_conf
from pycxi.cni.errors import CniError

BASE = {"cniVersion": "1.0.0", "name": "net1", "type": "cxi"}


def conf(**kw):
    d = dict(BASE)
    d.update(kw)
    return json.dumps(d).encode()


def code_of(data, command="ADD"):
    with pytest.raises(CniError) as ei:
        parse_conf(data, command)
    return ei.value


def test_defaults():
    c = parse_conf(conf())
    assert c.devices is None and c.vnis is None
    assert c.tcs == ["LOW_LATENCY", "BEST_EFFORT"]
    assert c.limits == DEFAULT_LIMITS and c.limits["TLE"] == (0, 0)
    assert c.data_dir == "/run/cni/cxi" and c.local_allocator is None and c.kubernetes is None


def test_full():
    c = parse_conf(conf(devices=["cxi0", "cxi1"], vnis=[100, 101], tcs="all",
                        limits={"LE": {"max": 64, "res": 0}, "TXQ": [8, 2]},
                        localAllocator={"path": "/var/lib/x.db", "ranges": [[1000, 1999]]},
                        kubernetes={"kubeconfig": "/etc/k", "timeout": 1}))
    assert c.devices == ["cxi0", "cxi1"] and c.vnis == [100, 101] and c.tcs is None
    assert c.limits["LE"] == (64, 0) and c.limits["TXQ"] == (8, 2) and c.limits["TLE"] == (0, 0)
    assert c.local_allocator["ranges"] == [(1000, 1999)] and c.kubernetes["timeout"] == 1.0


def test_limits_null_means_no_resource_limits():
    assert parse_conf(conf(limits=None)).limits is None


@pytest.mark.parametrize("key,value", [
    ("vnis", []), ("vnis", [1, 2, 3, 4, 5]), ("vnis", [0]), ("vnis", [70000]), ("vnis", ["1"]),
    ("vnis", [5, 5]), ("vnis", [True]), ("devices", []), ("devices", ["eth0"]), ("devices", "cxi0"),
    ("tcs", ["FAST"]), ("tcs", []), ("limits", {"LE": [1, 2]}),
    ("limits", {"LE": {"max": -1}}), ("limits", []), ("dataDir", "rel/path"), ("timeout", 0),
    ("logLevel", "loud"), ("localAllocator", {"path": "x"}), ("localAllocator", {"ranges": [[5, 1]]}),
    ("localAllocator", {"quarantine": -1}), ("kubernetes", {"kubeconfig": "rel"}),
    ("kubernetes", {"timeout": 99}), ("destroyRetries", -1), ("name", "bad name"), ("name", 5),
])
def test_invalid_values_code_7(key, value):
    e = code_of(conf(**{key: value}))
    assert e.code == 7
    assert key.split(".")[0] in e.msg + e.details or key in e.msg


def test_unknown_keys_ignored_with_a_warning():
    """As the Go plugins' JSON decoding: a key this version does not know (config drift, a
    newer plugin's key) is ignored and named in the log, never a refusal of every sandbox."""
    c = parse_conf(conf(foo=1, barKey=2, limits={"XX": [1, 1], "LE": [5, 0]},
                        localAllocator={"zz": 1}, kubernetes={"yy": 2}))
    text = " | ".join(c.warnings)
    assert len(c.warnings) == 4 and "'foo'" in text and "'barKey'" in text
    assert "'XX' in limits" in text and "'zz' in localAllocator" in text and "'yy' in kubernetes" in text
    assert c.limits["LE"] == (5, 0) and "XX" not in c.limits
    assert parse_conf(conf()).warnings == []


def test_reserved_keys_accepted():
    parse_conf(conf(**{"cni.dev/whatever": 1, "runtimeConfig": {}, "args": {"cni": {"x": 1}}}))


@pytest.mark.parametrize("data,code", [(b"", 6), (b"{", 6), (b"[]", 6), (b"\xff", 6),
                                       (json.dumps({"name": "n"}).encode(), 1),
                                       (conf(cniVersion="0.3.1"), 1), (conf(cniVersion="2.0.0"), 1),
                                       (conf(cniVersion="x"), 7)])
def test_decode_and_version(data, code):
    assert code_of(data).code == code


def test_gc_valid_attachments():
    c = parse_conf(conf(cniVersion="1.1.0", **{"cni.dev/valid-attachments": [
        {"containerID": "a", "ifname": "eth0"}]}), "GC")
    assert c.valid_attachments == {("a", "eth0")}
    assert code_of(conf(**{"cni.dev/valid-attachments": [{"containerID": 1}]}), "GC").code == 7


def test_cni_args():
    assert config.parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=p;bad;=x") == {
        "IgnoreUnknown": "1", "K8S_POD_NAME": "p"}


# --- dispatcher

def _dispatch(env, data=b"", handlers=None):
    rc, out = skel.dispatch(env, lambda: data, handlers or {})
    return rc, (json.loads(out) if out else None)


def test_version_verb():
    rc, out = _dispatch({"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"1.0.0"}')
    assert rc == 0 and out == {"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}
    rc, out = _dispatch({"CNI_COMMAND": "VERSION"}, b"garbage")
    assert rc == 0 and out["cniVersion"] == "1.1.0"


def test_missing_env_all_named():
    rc, out = _dispatch({"CNI_COMMAND": "ADD"})
    assert rc == 1 and out["code"] == 4
    for k in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"):
        assert k in out["msg"]
    rc, out = _dispatch({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c"})
    assert out["code"] == 4 and "CNI_IFNAME" in out["msg"] and "CNI_NETNS" not in out["msg"]
    rc, out = _dispatch({"CNI_COMMAND": "GC"})
    assert out["code"] == 4 and "CNI_PATH" in out["msg"]


def test_unknown_command():
    rc, out = _dispatch({"CNI_COMMAND": "FROB"})
    assert rc == 1 and out["code"] == 4


@pytest.mark.parametrize("cid,ifname", [("-bad", "eth0"), ("a b", "eth0"), ("c", "x" * 16),
                                        ("c", "a/b"), ("c", ".."), ("c", "e th")])
def test_container_id_and_ifname(cid, ifname):
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname, "CNI_NETNS": "/x"}
    rc, out = _dispatch(env, conf())
    assert rc == 1 and out["code"] == 4


@pytest.mark.parametrize("cmd,version,code", [("CHECK", "0.4.0", None), ("GC", "1.0.0", 1),
                                              ("STATUS", "1.0.0", 1), ("STATUS", "1.1.0", None)])
def test_verb_versions(cmd, version, code):
    env = {"CNI_COMMAND": cmd, "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x",
           "CNI_PATH": "/p"}
    called = []
    rc, out = _dispatch(env, conf(cniVersion=version),
                        {cmd: lambda c, e, log: called.append(c) or None})
    if code is None:
        assert rc == 0 and called
    else:
        assert rc == 1 and out["code"] == code and out["cniVersion"] == version and not called


def test_exception_becomes_999():
    env = {"CNI_COMMAND": "STATUS"}

    def boom(c, e, log):
        raise RuntimeError("kaput")
    rc, out = _dispatch(env, conf(cniVersion="1.1.0"), {"STATUS": boom})
    assert rc == 1 and out["code"] == 999 and "kaput" in out["details"]


def test_empty_command_prints_about(capsys):
    rc, out = _dispatch({})
    assert rc == 0 and out is None
    assert "cxi" in capsys.readouterr().err
