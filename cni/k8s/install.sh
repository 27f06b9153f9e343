#!/bin/sh
# Entry point of the installer DaemonSet: copy /opt/pycxi to the node, write the cxi launcher
# into the node's CNI bin dir, and keep the plugin's kubeconfig fresh from this pod's service
# account (bound tokens rotate; the copy is refreshed every REFRESH seconds).
set -eu
HOST=${HOST_ROOT:-/host}
BIN=${CNI_BIN_DIR:-/host/opt/cni/bin}
CONF=${CNI_CONF_DIR:-/host/etc/cni/net.d}/cxi.d
SA=/var/run/secrets/kubernetes.io/serviceaccount
REFRESH=${REFRESH:-600}

mkdir -p "$HOST/opt/pycxi.new" "$CONF"
cp -a /opt/pycxi/. "$HOST/opt/pycxi.new/"
rm -rf "$HOST/opt/pycxi.old"
[ -d "$HOST/opt/pycxi" ] && mv "$HOST/opt/pycxi" "$HOST/opt/pycxi.old"
mv "$HOST/opt/pycxi.new" "$HOST/opt/pycxi"
rm -rf "$HOST/opt/pycxi.old"

# The launcher names /opt/pycxi/venv/bin/python: the path it has on the node.
/opt/pycxi/venv/bin/python -m pycxi.cni.install --bin-dir "$BIN" --python /opt/pycxi/venv/bin/python

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
echo "cxi CNI plugin installed in $BIN; kubeconfig in $CONF"
while sleep "$REFRESH"; do write_kubeconfig; done
