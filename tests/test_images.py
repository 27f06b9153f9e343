"""The two Containerfiles are consistent with the manifests that run their images.

There is no container engine in CI (and `docker build` could not fetch HPE's sources or the
base images offline), so nothing here builds an image: the Containerfiles are parsed and
checked against the repository and the rendered `deploy/` manifests -- image names, the
files they copy, the stages they copy from, the commands the manifests run, the user, the
libcxi-only build of the node image.  docs/images.md holds the build commands.
"""
import os
import re
import shlex

import pytest
import yaml

from coreutil import REPO
from kustomize_lite import build
from pycxi._version import __version__

NODE = os.path.join(REPO, "cni", "k8s", "Containerfile")
CONTROLLER = os.path.join(REPO, "deploy", "controller", "Containerfile")
KNOWN = {"FROM", "ARG", "RUN", "COPY", "ENV", "LABEL", "ENTRYPOINT", "CMD", "USER", "WORKDIR"}


def parse(path):
    """[(instruction, text)] with continuations joined and comments dropped."""
    out, buf = [], ""
    for line in open(path).read().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, rest = buf.strip().partition(" ")
        out.append((instr.upper(), rest.strip()))
        buf = ""
    assert not buf, f"{path}: dangling continuation"
    return out


def stages(path):
    """[{"name", "base", "instrs"}] per FROM."""
    st = []
    for instr, text in parse(path):
        assert instr in KNOWN, f"{path}: unexpected instruction {instr}"
        if instr == "FROM":
            words = text.split()
            st.append({"base": words[0], "name": words[2] if len(words) > 2 else None,
                       "instrs": []})
        elif st:
            st[-1]["instrs"].append((instr, text))
    return st


def _env_path(stage):
    for instr, text in stage["instrs"]:
        if instr == "ENV":
            m = re.search(r"\bPATH=(\S+)", text)
            if m:
                return m.group(1).split(":")
    return []


def _labels(stage):
    text = " ".join(t for i, t in stage["instrs"] if i == "LABEL")
    return dict(w.split("=", 1) for w in shlex.split(text))


def _exec_form(stage, instr):
    [text] = [t for i, t in stage["instrs"] if i == instr]
    return yaml.safe_load(text)


def _copies(stage):
    """[(from-stage or None, [sources], dest)]"""
    out = []
    for instr, text in stage["instrs"]:
        if instr != "COPY":
            continue
        words = shlex.split(text)
        frm = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
        words = [w for w in words if not w.startswith("--")]
        out.append((frm, words[:-1], words[-1]))
    return out


def _dockerignore():
    return [ln.strip() for ln in open(os.path.join(REPO, ".dockerignore"))
            if ln.strip() and not ln.startswith("#")]


def _rendered():
    return build(os.path.join(REPO, "deploy"))


def _pod(kind, name):
    [d] = [d for d in _rendered() if d["kind"] == kind and d["metadata"]["name"] == name]
    return d["spec"]["template"]["spec"]


@pytest.mark.parametrize("path", [NODE, CONTROLLER], ids=["node", "controller"])
def test_copies_name_files_and_stages_that_exist(path):
    st = stages(path)
    names = []
    for s in st:
        for frm, srcs, dest in _copies(s):
            if frm:
                assert frm in names, f"COPY --from={frm}: no earlier stage of that name"
            else:
                for src in srcs:
                    assert os.path.exists(os.path.join(REPO, src)), f"COPY {src}: not in the repo"
                    top = src.strip("/").split("/")[0]
                    assert top not in _dockerignore(), f"COPY {src}: excluded by .dockerignore"
        names.append(s["name"])
    assert ".venv" in _dockerignore() and ".git" in _dockerignore()


def test_node_image_is_what_the_daemonset_runs():
    final = stages(NODE)[-1]
    [c] = _pod("DaemonSet", "cxi-cni")["containers"]
    repo, tag = c["image"].rsplit(":", 1)
    assert repo.rsplit("/", 1)[-1] == _labels(final)["org.opencontainers.image.title"] == "pycxi-cni"
    assert tag == __version__
    copied = {dest for _, _, dest in _copies(final)}
    entry = c.get("command") or _exec_form(final, "ENTRYPOINT")
    args = c.get("args") or ([] if c.get("command") else [])
    from_path = {"pycxi", "cxi", "python", "python3"}  # console scripts of the venv on PATH
    prog = entry[0]
    if prog.startswith("/"):
        assert prog in copied or prog.startswith(("/bin/", "/usr/bin/", "/opt/pycxi/")), prog
    else:
        assert "/opt/pycxi/venv/bin" in _env_path(final) and prog in from_path, prog
    # a script the entry point runs is one the image carries; a module it runs exists
    words = list(entry[1:]) + list(args)
    for i, word in enumerate(words):
        if word.endswith(".sh"):
            assert word in copied, f"{word}: not copied into the node image"
        if word == "-m":
            mod = os.path.join(REPO, *words[i + 1].split("."))
            assert os.path.exists(mod + ".py") or os.path.exists(os.path.join(mod, "__main__.py"))
    # the prefix install.sh copies to the node and the launcher's interpreter are the image's
    install = open(os.path.join(REPO, "cni", "k8s", "install.sh")).read()
    assert "/opt/pycxi/venv/bin/python" in install
    assert re.search(r"cp -a /opt/pycxi/\.|:-/opt/pycxi\}", install), "install.sh copies /opt/pycxi"
    assert "/opt/pycxi" in copied
    text = open(NODE).read()
    assert "-m venv /opt/pycxi/venv" in text and "--prefix=/opt/pycxi/python" in text
    # the DaemonSet mounts the node's /opt where install.sh writes /host/opt/pycxi
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert any("/host/opt/pycxi" == m.rstrip("/") or "/host/opt/pycxi".startswith(m.rstrip("/") + "/")
               for m in mounts), mounts


def test_node_image_builds_against_libcxi_only():
    text = open(NODE).read()
    [st_build] = [s for s in stages(NODE) if s["name"] == "build"]
    [pip] = [t for i, t in st_build["instrs"] if i == "RUN" and "pip install" in t]
    assert "PYCXI_BACKEND=libcxi" in pip and "PKG_CONFIG_PATH=/opt/libcxi/lib/pkgconfig" in pip
    # and the build proves it: the import says libcxi or the RUN fails
    assert 'sys.exit(pycxi.BACKEND != "libcxi")' in pip
    assert not re.search(r"PYCXI_BACKEND=(sim|auto)", text)
    # HPE's sources at the release the build-arg names; our patches applied when present
    arg = re.search(r"^ARG SHS_RELEASE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"\d+\.\d+\.\d+", arg)
    assert 'release/shs-${SHS_RELEASE}' in text
    for kind in ("shs-cxi-driver", "shs-libcxi"):
        assert f"/src/patches/{kind}/release-shs-${{SHS_RELEASE}}" in text
    for d in os.listdir(os.path.join(REPO, "patches", "shs-libcxi")):
        assert re.fullmatch(r"release-shs-\d+\.\d+\.\d+", d), d
    # oldest glibc: built on an EL8 base and checked against 2.28
    seen = []
    for s in stages(NODE):
        assert s["base"] in seen or s["base"].startswith("docker.io/library/almalinux:8"), s
        seen.append(s["name"])
    assert "2.28" in [s for i, s in st_build["instrs"] if i == "RUN" and "objdump" in s][0]


def test_controller_image_is_what_the_deployment_runs():
    st = stages(CONTROLLER)
    final = st[-1]
    pod = _pod("Deployment", "pycxi-vni-controller")
    [c] = pod["containers"]
    repo, tag = c["image"].rsplit(":", 1)
    assert repo.rsplit("/", 1)[-1] == _labels(final)["org.opencontainers.image.title"] == "pycxi"
    assert tag == __version__
    # the Deployment's command: `python -m pycxi.vni.controller`, python being the venv's
    assert c["command"][:3] == ["python", "-m", "pycxi.vni.controller"]
    assert _env_path(final)[0] == "/opt/venv/bin"
    assert ("build", ["/opt/venv"], "/opt/venv") in _copies(final)
    assert os.path.exists(os.path.join(REPO, "pycxi", "vni", "controller.py"))
    assert _exec_form(final, "ENTRYPOINT") == c["command"][:3]
    # the image's user is the one the pod runs as (and it is not root)
    [user] = [t for i, t in final["instrs"] if i == "USER"]
    uid, gid = (int(x) for x in user.split(":"))
    assert uid == pod["securityContext"]["runAsUser"] != 0
    assert gid == pod["securityContext"]["runAsGroup"]
    # no libcxi and no guess: the controller's pycxi is built on the software device, stated
    text = open(CONTROLLER).read()
    assert "PYCXI_BACKEND=sim" in text and "[controller]" in text


def test_docs_give_the_build_commands_the_containerfiles_give():
    doc = open(os.path.join(REPO, "docs", "images.md")).read()
    for path in (NODE, CONTROLLER):
        header = open(path).read()
        cmd = re.search(r"#\s+(podman build -f \S+)", header).group(1)
        assert cmd in doc, cmd
    for glibc in ("2.28", "2.31", "2.34"):
        assert glibc in doc


def test_controller_bases_are_args_the_offline_script_sets():
    """deploy/controller/Containerfile's bases are ARGs (defaults: the python images that
    docs/images.md names); scripts/build-images-offline.sh overrides exactly those."""
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", open(CONTROLLER).read(), re.M))
    st = stages(CONTROLLER)
    assert [s["base"] for s in st] == ["${BUILD_BASE}", "${RUNTIME_BASE}"]
    assert args["BUILD_BASE"] == "docker.io/library/python:3.12-bookworm"
    assert args["RUNTIME_BASE"] == "docker.io/library/python:3.12-slim-bookworm"
    script = open(os.path.join(REPO, "scripts", "build-images-offline.sh")).read()
    assert set(re.findall(r"--build-arg (\w+)=", script)) == {"BUILD_BASE", "RUNTIME_BASE"}
    assert "-f deploy/controller/Containerfile" in script
