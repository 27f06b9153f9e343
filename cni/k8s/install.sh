#!/bin/sh
# Entry point of the cxi-cni DaemonSet's container (cni/k8s/daemonset.yaml), the node component:
#  1. copy /opt/pycxi to the node, write the cxi launcher into the node's CNI bin dir, write the
#     plugin's kubeconfig from this pod's service account (bound tokens rotate: refreshed every
#     REFRESH seconds in the background);
#  2. exec `pycxi node sweep` (SWEEP=on, the default): release what the runtime leaked, serve
#     Prometheus metrics on METRICS_ADDRESS:METRICS_PORT.  SIGTERM stops it cleanly.
# Every path is a container path of a hostPath mount (see the DaemonSet).
set -eu
BIN=${CNI_BIN_DIR:-/host/cni/bin}
CONF=${CNI_CONF_DIR:-/host/cni/net.d}/cxi.d
PREFIX=${PYCXI_PREFIX_DIR:-/host/opt/pycxi}
DATA_DIR=${CXI_DATA_DIR:-/run/cni/cxi}
REFRESH=${REFRESH:-600}
SWEEP=${SWEEP:-on}
SWEEP_INTERVAL=${SWEEP_INTERVAL:-30}
METRICS_PORT=${METRICS_PORT:-9477}
METRICS_ADDRESS=${METRICS_ADDRESS:-0.0.0.0}
SRC=${PYCXI_IMAGE_PREFIX:-/opt/pycxi}    # (these three are overridden only by the tests)
PY=${PYCXI_PYTHON:-/opt/pycxi/venv/bin/python}   # the same path in the image and on the node
SA=${SA_DIR:-/var/run/secrets/kubernetes.io/serviceaccount}

# /opt/pycxi on the node is a mount point here: replace its entries one by one (copy beside,
# then rename), so a plugin call never sees a half-copied tree.
mkdir -p "$PREFIX" "$CONF"
for src in "$SRC"/*; do
    name=$(basename "$src")
    rm -rf "$PREFIX/.$name.new" "$PREFIX/.$name.old"
    cp -a "$src" "$PREFIX/.$name.new"
    if [ -e "$PREFIX/$name" ]; then mv "$PREFIX/$name" "$PREFIX/.$name.old"; fi
    mv "$PREFIX/.$name.new" "$PREFIX/$name"
    rm -rf "$PREFIX/.$name.old"
done

# The launcher's shebang names $PY: the path it has on the node.
"$PY" -m pycxi.cni.install --bin-dir "$BIN" --python "$PY"

write_kubeconfig() {
    umask 077
    cp "$SA/token" "$CONF/token.new" && mv "$CONF/token.new" "$CONF/token"
    cp "$SA/ca.crt" "$CONF/ca.crt.new" && mv "$CONF/ca.crt.new" "$CONF/ca.crt"
    cat > "$CONF/cxi.kubeconfig.new" <<KC
{"apiVersion": "v1", "kind": "Config", "current-context": "cxi",
 "clusters": [{"name": "local", "cluster": {"server": "https://${KUBERNETES_SERVICE_HOST}:${KUBERNETES_SERVICE_PORT}",
                                            "certificate-authority": "ca.crt"}}],
 "users": [{"name": "cxi-cni", "user": {"tokenFile": "token"}}],
 "contexts": [{"name": "cxi", "context": {"cluster": "local", "user": "cxi-cni"}}]}
KC
    mv "$CONF/cxi.kubeconfig.new" "$CONF/cxi.kubeconfig"
}
write_kubeconfig
echo "cxi CNI plugin installed in $BIN (node path: the DaemonSet's cni-bin hostPath); kubeconfig in $CONF"

if [ "$SWEEP" = off ]; then
    while sleep "$REFRESH"; do write_kubeconfig; done
fi
( while sleep "$REFRESH"; do write_kubeconfig || echo "kubeconfig refresh failed" >&2; done ) &
exec "$PY" -m pycxi.cli node sweep --data-dir "$DATA_DIR" --interval "$SWEEP_INTERVAL" \
    --metrics-address "$METRICS_ADDRESS" --metrics-port "$METRICS_PORT"
