"""The DEL fast path (``pycxi.cni.plugin.nothing_to_delete``) against the store on random state
trees: it answers "nothing to do" only when ``StateStore.nothing_for`` does, and both say so only
when nothing of the attachment exists (no record, no index link, no version-1 record or index)."""
import json
import os
import subprocess
import sys
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

from pycxi.cni import layout, plugin
from pycxi.cni import state as store_mod
from pycxi.cni.config import SUPPORTED_VERSIONS, valid_name
from pycxi.cni.state import StateStore

FIXED = {store_mod.LOCK, store_mod.NETWORKS, store_mod.INDEX, store_mod.LEGACY_INDEX}

# small alphabets so that attachments share a network, a containerID or an ifname; odd but
# valid characters (".", "-", "_", "%", "~", "é", " ", ":"), names past MAX_NAME (hashed)
plain = st.from_regex(r"[ab1][ab1._-]{0,3}", fullmatch=True)
odd = st.text(alphabet="ab._-%~é :\udcff", min_size=1, max_size=4).filter(lambda s: s not in (".", ".."))
long_ = st.builds(lambda c, n: c * n, st.sampled_from("ab"), st.integers(190, 260))
name = st.one_of(plain, plain, odd, long_)
network = name.filter(lambda s: s not in FIXED)
ifname = st.one_of(plain, st.sampled_from(["eth0", "net1", "a" * 16]), odd)
attachment = st.tuples(network, name, ifname)

# what exists of an attachment: (record, index link, version-1 record, decoy index entry)
items = st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans())


def build(data_dir, tree, legacy_index):
    """Write ``tree`` with the store's own writers (the version-1 files as that version did);
    the version-1 records made (a name too long for the file system cannot be one)."""
    legacy_made = set()
    for i, ((net, cid, ifn), (rec_, link, legacy, decoy)) in enumerate(tree):
        s = StateStore(data_dir, net)
        s.ensure_dirs()
        rec = s.new_record(cid, ifn, netns_inode=4026531000 + i, phase=store_mod.PHASE_READY)
        if link:
            s.index(rec)
        if rec_:
            s.save(rec)
        if decoy:       # not a link of any attachment: a name the index never has
            os.makedirs(s.index_dir, exist_ok=True)
            open(os.path.join(s.index_dir, f"x{i}.{layout.name_of(net, cid, ifn)}"), "w").close()
        if legacy and "\udcff" not in net + cid + ifn and len(net) < 256 and len(cid + ifn) < 250:
            d = os.path.join(data_dir, net)
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"{cid}_{ifn}.json"), "w") as f:
                json.dump({"network": net, "containerID": cid, "ifname": ifn}, f)
            legacy_made.add((net, f"{cid}_{ifn}"))
    if legacy_index:
        os.makedirs(os.path.join(data_dir, store_mod.LEGACY_INDEX), exist_ok=True)
    return legacy_made


def something_of(tree, legacy_made, legacy_index, q):
    """The model: might DEL of ``q`` have anything to do?"""
    net, cid, ifn = q
    # version 1 named a record "<cid>_<ifname>.json": ("a_b", "c") and ("a", "b_c") share it
    return legacy_index or (net, f"{cid}_{ifn}") in legacy_made or any(
        a == q and (rec_ or link) for a, (rec_, link, _, _) in tree)


def fast(data_dir, q, version="1.0.0"):
    net, cid, ifn = q
    conf = {"cniVersion": version, "name": net, "type": "cxi", "dataDir": data_dir}
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": cid, "CNI_IFNAME": ifn}
    try:
        data = json.dumps(conf).encode()
    except UnicodeEncodeError:      # a lone surrogate: no runtime can send it as JSON
        return False
    return plugin.nothing_to_delete(env, data)


@settings(max_examples=300, deadline=None)
@given(tree=st.lists(st.tuples(attachment, items), max_size=6), legacy_index=st.booleans(),
       query=st.one_of(attachment, st.integers(0, 5)), spelling=st.sampled_from(["", "/", "//", "/."]),
       version=st.sampled_from(SUPPORTED_VERSIONS))
def test_fast_check_agrees_with_the_store(tree, legacy_index, query, spelling, version):
    if isinstance(query, int):      # an attachment of the tree (or its near misses otherwise)
        if not tree:
            return
        query = tree[query % len(tree)][0]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = os.path.join(tmp, "d")
        legacy_made = build(data_dir, tree, legacy_index)
        expect_nothing = not something_of(tree, legacy_made, legacy_index, query)
        net, cid, ifn = query
        assert StateStore(data_dir + spelling, net).nothing_for(cid, ifn) == expect_nothing
        answer = fast(data_dir + spelling, query, version)
        assert not answer or expect_nothing, "the fast path skipped a DEL with work to do"
        if valid_name(net) and valid_name(cid) and plugin._plain_name(ifn, 15) and spelling == "":
            assert answer == expect_nothing, "the fast path missed a plain no-op DEL"


def test_fast_check_falls_back_when_unsure(tmp_path):
    d = str(tmp_path)
    q = ("n1", "c1", "eth0")
    assert fast(d, q)
    os.makedirs(os.path.join(d, store_mod.INDEX, f"{7}.{layout.name_of(*q)}"))   # odd, but a link name
    assert not fast(d, q)
    assert not StateStore(d, "n1").nothing_for("c1", "eth0")
    os.rmdir(os.path.join(d, store_mod.INDEX, f"{7}.{layout.name_of(*q)}"))
    assert fast(d, q)
    open(os.path.join(d, "file"), "w").close()
    assert not fast(os.path.join(d, "file"), q)          # _index not listable: the full path decides
    assert not fast(d, q, version="0.3.1")               # a version the full path refuses
    assert not fast("relative/dir", q)
    assert plugin._VERSIONS == SUPPORTED_VERSIONS


def test_environ_is_decoded_as_os_environ():
    """The plugin reads its environment without importing os; undecodable bytes included."""
    code = ("import os, sys; from pycxi.cni.plugin import _environ; "
            "sys.exit(0 if _environ() == dict(os.environ) else 1)")
    env = {b"PATH": os.environb.get(b"PATH", b"/usr/bin"), b"ODD": b"\xff\xfe-\xc3\xa9",
           b"PYTHONPATH": os.path.dirname(os.path.dirname(plugin.__file__)).encode()}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0
