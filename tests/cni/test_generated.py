"""hypothesis-generated configurations and environments: always a valid CNI answer (the error
JSON with a spec or plugin code, never 999 or a traceback), never a leaked service."""
import json
import os
import subprocess
import sys

import pytest

hyp = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from cniutil import HERE, PY  # noqa: E402

VALID = {"cniVersion": "1.0.0", "name": "gen", "type": "cxi", "vnis": [3000],
         "prevResult": {"cniVersion": "1.0.0", "interfaces": [], "ips": []}}
KEYS = ["cniVersion", "name", "type", "vnis", "devices", "tcs", "limits", "dataDir", "timeout",
        "logLevel", "logFile", "localAllocator", "kubernetes", "prevResult", "runtimeConfig",
        "args", "destroyRetries", "destroyRetryDelay", "cni.dev/valid-attachments", "bogus"]

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2, 70000),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                      st.sampled_from(["1.0.0", "1.1.0", "0.4.0", "0.3.1", "cxi0", "cxi9", "all",
                                       "BEST_EFFORT", "/tmp/x", "debug"]))
json_val = st.recursive(json_leaf, lambda c: st.one_of(st.lists(c, max_size=5),
                                                        st.dictionaries(st.text(max_size=6), c, max_size=4)),
                        max_leaves=10)


@st.composite
def stdin_bytes(draw, data_dir):
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "raw", "valid"]))
    if kind == "raw":
        return draw(st.one_of(st.binary(max_size=64),
                              st.text(max_size=64).map(lambda s: s.encode("utf-8", "replace"))))
    conf = dict(VALID, dataDir=data_dir)
    if kind == "mutated":
        for k in draw(st.lists(st.sampled_from(KEYS), max_size=4, unique=True)):
            if draw(st.booleans()):
                conf.pop(k, None)
            else:
                conf[k] = draw(json_val)
        if isinstance(conf.get("dataDir"), str) and conf["dataDir"].startswith("/"):
            conf["dataDir"] = data_dir          # never write outside the test's tmp dir
        if "logFile" in conf:
            conf.pop("logFile")
    return json.dumps(conf).encode()


@st.composite
def environ(draw, pod_path):
    if draw(st.integers(0, 9)) < 6:       # mostly a well-formed environment: reach the config
        return {"CNI_COMMAND": draw(st.sampled_from(["ADD", "ADD", "DEL", "CHECK", "GC", "STATUS"])),
                "CNI_CONTAINERID": draw(st.sampled_from(["ctr1", "ctr2"])), "CNI_IFNAME": "eth0",
                "CNI_NETNS": pod_path, "CNI_PATH": "/usr/lib/cni"}
    env = {}
    opt = st.one_of(st.none(), st.text(max_size=20))
    cmd = draw(st.one_of(st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "ADD"]), opt))
    for k, v in (("CNI_COMMAND", cmd),
                 ("CNI_CONTAINERID", draw(st.one_of(st.sampled_from(["ctr1", "ctr2"]), opt))),
                 ("CNI_IFNAME", draw(st.one_of(st.just("eth0"), opt))),
                 ("CNI_NETNS", draw(st.one_of(st.just(pod_path), st.just("/nonexistent/ns"), opt))),
                 ("CNI_ARGS", draw(opt)),
                 ("CNI_PATH", draw(st.one_of(st.just("/usr/lib/cni"), opt)))):
        if v is not None:
            env[k] = v.replace("\0", "")
    return env


class Worker:
    def __init__(self, env):
        self.p = subprocess.Popen([PY, os.path.join(HERE, "hyp_worker.py")], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, req):
        self.p.stdin.write(json.dumps(req) + "\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def close(self):
        self.p.stdin.close()
        self.p.wait(10)


def test_generated_input(cni_env, netns):
    pod = netns.add()
    pod_path = netns.path(pod)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(HERE)), **cni_env.env)
    w = Worker(env)
    data_dir = cni_env.data_dir
    seen = {}

    @settings(max_examples=300, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(environ(pod_path), stdin_bytes(data_dir))
    def check(e, data):
        e = dict(e, PYCXI_SIM_ROOT=os.environ["PYCXI_SIM_ROOT"])
        r = w.ask({"env": e, "stdin": data.decode("latin-1")})
        assert "Traceback" not in r["err"], r["err"]
        out = r["out"]
        if r["rc"] != 0:
            err = json.loads(out)
            assert set(err) <= {"cniVersion", "code", "msg", "details"}
            assert isinstance(err["code"], int) and isinstance(err["msg"], str)
            assert isinstance(err["cniVersion"], str)
            assert err["code"] != 999, err
            seen[err["code"]] = seen.get(err["code"], 0) + 1
        elif out:
            assert isinstance(json.loads(out), dict)
        # clean up like a runtime would, then nothing may be left
        if e.get("CNI_COMMAND") == "ADD":
            if r["rc"] == 0:
                seen["add-ok"] = seen.get("add-ok", 0) + 1
                d = w.ask({"env": dict(e, CNI_COMMAND="DEL"), "stdin": data.decode("latin-1")})
                assert d["rc"] == 0, d
            assert w.ask({"count": True})["count"] == 0

    try:
        check()
    finally:
        w.close()
    assert {4, 6, 7, "add-ok"} <= set(seen), seen
