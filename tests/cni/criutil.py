"""A real containerd (Debian's 1.6, its CRI plugin) driven over the CRI gRPC API, the way a kubelet
drives it, for tests/cni/test_cri.py.

* :func:`build_pause_image` compiles ``cri/pause.c`` with ``gcc -static`` and packs it as an OCI
  image tarball (layout, index, manifest, config, one uncompressed layer) -- no registry needed;
* :func:`cri_stubs` generates the gRPC stubs from ``cri/cri_min.proto`` (our own minimal copy of
  the CRI's ``runtime.v1`` messages) with grpcio-tools, into a temporary directory;
* :class:`Containerd` writes a config whose root, state, socket, CNI ``bin_dir``/``conf_dir`` are all
  under one scratch directory, starts containerd under ``nsenter --net=<a namespace of ours>`` (so
  the bridge and everything a plugin does to "the host" happens there, not in the machine's
  namespace), stops it by pid, and cleans up shims, mounts and pod namespaces it leaves.
"""
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
CRI_DIR = os.path.join(HERE, "cri")
PAUSE_IMAGE = "localhost/pycxi-test/pause:1"


def missing_tools():
    out = [t for t in ("containerd", "ctr", "runc", "nsenter", "gcc", "ip") if not shutil.which(t)]
    try:
        import grpc  # noqa: F401
        import grpc_tools  # noqa: F401
    except ImportError:
        out.append("grpcio/grpcio-tools (pip install '.[test]')")
    return out


# ---------------------------------------------------------------------------------------------
# the sandbox image

def _blob(d, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(d, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def build_pause_image(workdir, name=PAUSE_IMAGE):
    """Compile the pause program statically and write an OCI image tarball; returns its path."""
    exe = os.path.join(workdir, "pause")
    subprocess.run(["gcc", "-static", "-O2", "-s", "-o", exe, os.path.join(CRI_DIR, "pause.c")],
                   check=True, capture_output=True)
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tf.gettarinfo(exe, arcname="pause")
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        ti.mtime = 0
        with open(exe, "rb") as f:
            tf.addfile(ti, f)
    layer = layer.getvalue()
    lay = os.path.join(workdir, "oci")
    os.makedirs(os.path.join(lay, "blobs", "sha256"))
    layer_desc = _blob(lay, layer)
    config = {"architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine,
                                                                          os.uname().machine),
              "os": "linux",
              "config": {"Entrypoint": ["/pause"], "User": "0:0"},
              "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
              "history": [{"created_by": "tests/cni/criutil.py: gcc -static pause.c"}]}
    cfg_desc = _blob(lay, json.dumps(config).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": dict(cfg_desc, mediaType="application/vnd.oci.image.config.v1+json"),
                "layers": [dict(layer_desc, mediaType="application/vnd.oci.image.layer.v1.tar")]}
    man_desc = _blob(lay, json.dumps(manifest).encode())
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [dict(man_desc, mediaType="application/vnd.oci.image.manifest.v1+json",
                                annotations={"io.containerd.image.name": name,
                                             "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]})]}
    with open(os.path.join(lay, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(lay, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    tar = os.path.join(workdir, "pause-image.tar")
    with tarfile.open(tar, "w") as tf:
        for n in ("oci-layout", "index.json", "blobs"):
            tf.add(os.path.join(lay, n), arcname=n)
    return tar


# ---------------------------------------------------------------------------------------------
# gRPC stubs from our minimal proto

def cri_stubs(outdir):
    """(messages module, grpc stub class) generated from cri/cri_min.proto into ``outdir``."""
    from grpc_tools import protoc
    import importlib
    rc = protoc.main(["grpc_tools.protoc", f"-I{CRI_DIR}", f"--python_out={outdir}",
                      f"--grpc_python_out={outdir}", os.path.join(CRI_DIR, "cri_min.proto")])
    assert rc == 0, "protoc failed on cri_min.proto"
    sys.path.insert(0, outdir)
    try:
        pb = importlib.import_module("cri_min_pb2")
        rpc = importlib.import_module("cri_min_pb2_grpc")
    finally:
        sys.path.remove(outdir)
    return pb, rpc.RuntimeServiceStub


# ---------------------------------------------------------------------------------------------
# containerd

CONFIG = """\
version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.sock.ttrpc"
[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  # root lacks CAP_SYS_RESOURCE on these VMs: runc cannot raise oom_score_adj otherwise
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin_dir}"
    conf_dir = "{conf_dir}"
    max_conf_num = 1
"""


class Containerd:
    """One private containerd: everything under ``self.dir``, in the network namespace ``host_ns``."""

    def __init__(self, host_ns, bin_dirs, env):
        self.dir = tempfile.mkdtemp(prefix="cxc", dir="/tmp")     # short: unix socket paths
        self.host_ns = host_ns
        self.env = env
        self.sock = f"{self.dir}/c.sock"
        self.conf_dir = f"{self.dir}/net.d"
        # containerd 1.6 takes one bin_dir: link every plugin it needs into one directory
        self.bin_dir = f"{self.dir}/bin"
        os.makedirs(self.conf_dir)
        os.makedirs(self.bin_dir)
        for d in bin_dirs:
            for n in os.listdir(d):
                if not os.path.exists(os.path.join(self.bin_dir, n)):
                    os.symlink(os.path.join(d, n), os.path.join(self.bin_dir, n))
        self.config = f"{self.dir}/config.toml"
        with open(self.config, "w") as f:
            f.write(CONFIG.format(d=self.dir, image=PAUSE_IMAGE, bin_dir=self.bin_dir,
                                  conf_dir=self.conf_dir))
        self.proc = None
        self.netns_seen = set()      # pod namespaces (containerd pins them in /var/run/netns)
        self.log = f"{self.dir}/containerd.log"
        self.channel = None
        self.pb = None
        self.stub = None

    # -- process
    def start(self, timeout=30):
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.host_ns}", "containerd", "--config", self.config],
            env=self.env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"containerd exited {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            if os.path.exists(self.sock) and self.stub is not None:
                try:
                    self.call("Version", self.pb.VersionRequest(version="v1"), timeout=2)
                    return
                except Exception:
                    pass
            elif os.path.exists(self.sock):
                self.connect()
            time.sleep(0.1)
        raise AssertionError(f"containerd did not answer in {timeout} s:\n{self.log_text()[-3000:]}")

    def stop(self, timeout=20):
        """SIGTERM containerd (by pid) and wait; running sandboxes live on in their shims."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.channel is not None:
            self.channel.close()
            self.channel = None
            self.stub = None

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    # -- CRI
    def set_stubs(self, pb, stub_class):
        self.pb = pb
        self.stub_class = stub_class

    def connect(self):
        import grpc
        if self.channel is not None:
            self.channel.close()
        self.channel = grpc.insecure_channel(f"unix://{self.sock}")
        self.stub = self.stub_class(self.channel)

    def call(self, method, request, timeout=60):
        return getattr(self.stub, method)(request, timeout=timeout)

    def ctr(self, *args, check=True):
        p = subprocess.run(["ctr", "-a", self.sock, "-n", "k8s.io", *args], capture_output=True,
                           text=True, timeout=60)
        if check and p.returncode:
            raise AssertionError(f"ctr {' '.join(args)}: rc {p.returncode}\n{p.stdout}{p.stderr}")
        return p

    def run_pod(self, name, namespace, uid=None, attempt=0):
        pb = self.pb
        cfg = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, namespace=namespace,
                                           uid=uid or str(uuid.uuid4()), attempt=attempt),
            hostname=name, log_directory=f"{self.dir}/pods/{namespace}_{name}",
            labels={"app": name}, linux=pb.LinuxPodSandboxConfig())
        return self.call("RunPodSandbox", pb.RunPodSandboxRequest(config=cfg)).pod_sandbox_id

    def status(self, sid):
        return self.call("PodSandboxStatus", self.pb.PodSandboxStatusRequest(pod_sandbox_id=sid,
                                                                               verbose=True))

    def netns_path(self, sid):
        """The sandbox's network namespace path, from the runtime spec in the verbose status."""
        info = json.loads(self.status(sid).info["info"])
        for ns in info["runtimeSpec"]["linux"]["namespaces"]:
            if ns["type"] == "network":
                self.netns_seen.add(ns["path"])
                return ns["path"]
        raise AssertionError(f"no network namespace in sandbox {sid}'s spec")

    def stop_pod(self, sid):
        self.call("StopPodSandbox", self.pb.StopPodSandboxRequest(pod_sandbox_id=sid))

    def remove_pod(self, sid):
        self.call("RemovePodSandbox", self.pb.RemovePodSandboxRequest(pod_sandbox_id=sid))

    def pods(self):
        return list(self.call("ListPodSandbox", self.pb.ListPodSandboxRequest()).items)

    # -- cleanup
    def cleanup(self):
        """Remove every sandbox (through CRI if containerd still runs), stop containerd, kill the
        shims it started (found by our socket in their command line), unmount and delete."""
        if self.proc is not None and self.proc.poll() is None and self.stub is not None:
            try:
                for p in self.pods():
                    try:
                        self.stop_pod(p.id)
                        self.remove_pod(p.id)
                    except Exception:
                        pass
            except Exception:
                pass
        self.stop()
        for pid in _pids_mentioning(self.dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f if line.split()[4].startswith(self.dir)]
        for m in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        for path in self.netns_seen:         # only if a failure left a sandbox behind
            if os.path.exists(path):
                subprocess.run(["umount", "-l", path], capture_output=True)
                try:
                    os.unlink(path)
                except OSError:
                    pass
        shutil.rmtree(self.dir, ignore_errors=True)


def _pids_mentioning(text):
    out = []
    me = os.getpid()
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == me:
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    out.append(int(p))
        except OSError:
            pass
    return out
