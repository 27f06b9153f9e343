#!/bin/bash
# The podman recipe of docs/cni.md, end to end, in a scratch directory; cleans up after itself.
#
#   PYTHON=/path/to/venv/bin/python cni/podman/demo.sh
#
# Needs root, podman 4.x with the CNI backend (Debian bookworm: podman 4.3), runc,
# containernetworking-plugins, busybox-static, util-linux (nsenter), iproute2.
# Nothing is written to /etc: containers.conf, the conflist, storage and state live in $SCRATCH.
# podman runs in a scratch network namespace (nsenter --net=...) so that its bridge is created
# there, not in the machine's namespace.  With pycxi's software device, the device state lives
# in $SCRATCH/sim (PYCXI_SIM_ROOT); on a real NIC nothing of that is needed.
set -euo pipefail
PYTHON=${PYTHON:-$(command -v python3)}
SCRATCH=$(mktemp -d /tmp/cxi-podman.XXXXXX)
HOSTNS=cxidemo$$
VNI_A=${VNI_A:-4100}
VNI_B=${VNI_B:-4200}
PYCXI=("$PYTHON" -c 'import sys; from pycxi.cli import main; sys.exit(main())')

export CONTAINERS_CONF=$SCRATCH/containers.conf
P=(nsenter --net=/run/netns/$HOSTNS podman --root "$SCRATCH/storage" --runroot "$SCRATCH/run" --storage-driver vfs)

cleanup() {
    "${P[@]}" rm -af -t 0 >/dev/null 2>&1 || true
    ip netns del "$HOSTNS" 2>/dev/null || true
    grep -o "$SCRATCH[^ ]*" /proc/self/mountinfo 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$SCRATCH"
}
trap cleanup EXIT

# 1. the plugin launcher (#!<python> -IS) in a CNI bin dir
"$PYTHON" -m pycxi.cni.install --bin-dir "$SCRATCH/bin"

# 2. a busybox rootfs (no image pull)
mkdir -p "$SCRATCH/rootfs/bin" "$SCRATCH"/rootfs/{proc,sys,dev,etc,tmp,run}
cp "$(command -v busybox)" "$SCRATCH/rootfs/bin/busybox"
for t in sh ip sleep cat; do ln -s busybox "$SCRATCH/rootfs/bin/$t"; done

# 3. containers.conf: CNI backend, runc (crun 1.8 fails on hybrid cgroups), explicit ulimits
mkdir -p "$SCRATCH/net.d"
cat > "$CONTAINERS_CONF" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[network]
network_backend = "cni"
cni_plugin_dirs = ["$SCRATCH/bin", "/usr/lib/cni"]
network_config_dir = "$SCRATCH/net.d"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
CONF

# 4. the node's policy: which static VNIs a network may name (the default, /etc/pycxi/cni-policy.json,
#    grants none); then two networks (two tenants), bridge then cxi with a static VNI each
cat > "$SCRATCH/cni-policy.json" <<POLICY
{"staticVnis": [[$VNI_A, $VNI_A], [$VNI_B, $VNI_B]], "logDir": "$SCRATCH"}
POLICY
export PYCXI_CNI_POLICY=$SCRATCH/cni-policy.json
for n in a b; do
    vni=$([ $n = a ] && echo $VNI_A || echo $VNI_B)
    sub=$([ $n = a ] && echo 71 || echo 72)
    cat > "$SCRATCH/net.d/tenant-$n.conflist" <<NET
{"cniVersion": "1.0.0", "name": "tenant-$n", "plugins": [
  {"type": "bridge", "bridge": "cxidemo$n", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.89.$sub.0/24"}]], "dataDir": "$SCRATCH/ipam"}},
  {"type": "cxi", "vnis": [$vni], "dataDir": "$SCRATCH/state", "logFile": "$SCRATCH/cxi.log", "logLevel": "info"}]}
NET
done

# 5. the software device (skip on a real NIC); the plugin uses it only with PYCXI_SIM_ROOT set
if [ "$("$PYTHON" -c 'import pycxi; print(pycxi.BACKEND)')" = sim ]; then
    export PYCXI_SIM_ROOT=$SCRATCH/sim
    "${PYCXI[@]}" sim reset --devices 1
fi

ip netns add "$HOSTNS"
ip -n "$HOSTNS" link set lo up

# 6. one container per tenant
"${P[@]}" run -d --name ca --network tenant-a --rootfs "$SCRATCH/rootfs" /bin/sleep 600 >/dev/null
"${P[@]}" run -d --name cb --network tenant-b --rootfs "$SCRATCH/rootfs" /bin/sleep 600 >/dev/null
NS_A=$("${P[@]}" inspect ca --format '{{.NetworkSettings.SandboxKey}}')
NS_B=$("${P[@]}" inspect cb --format '{{.NetworkSettings.SandboxKey}}')
SVC_A=$("$PYTHON" -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['services'][0]['svc'])" \
        "$(ls "$SCRATCH"/state/_networks/tenant-a/*.json)")   # the record (docs/cni.md, state layout)
echo "container ca: netns $NS_A (inode $(stat -L -c %i "$NS_A")), CXI service $SVC_A on VNI $VNI_A"

echo "--- access from ca's netns (allowed):"
nsenter --net="$NS_A" "${PYCXI[@]}" -d cxi0 access-check --svc "$SVC_A" --vni "$VNI_A"
echo "--- access from cb's netns (must be EPERM):"
if nsenter --net="$NS_B" "${PYCXI[@]}" -d cxi0 access-check --svc "$SVC_A" --vni "$VNI_A"; then
    echo "FAIL: cb could use ca's service"; exit 1
fi

# 7. podman rm -> DEL -> no service left
"${P[@]}" rm -f -t 0 ca cb >/dev/null
left=$("$PYTHON" -c 'import pycxi; print(sum(len([s for s in pycxi.Device(d.name).svc_list() if s.svc_id != 1]) for d in pycxi.devices()))')
echo "services left after podman rm: $left"
[ "$left" = 0 ]
echo OK
