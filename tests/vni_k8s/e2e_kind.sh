#!/usr/bin/env bash
# End-to-end test of the VNI service on a real cluster (kind or k3s), for users' own CI.
#
# NOT run by this repository's test suite: no kube-apiserver (nor docker for kind) can be
# installed on the machines it runs on; tests/vni_k8s/ uses kmock's emulator instead.
#
# Usage:
#   tests/vni_k8s/e2e_kind.sh                      # creates a kind cluster "pycxi-vni"
#   KUBECONFIG=~/.kube/k3s.yaml E2E_CLUSTER=existing tests/vni_k8s/e2e_kind.sh
# Needs: kubectl, python3 with pycxi installed (pip install .), and kind + docker unless
# E2E_CLUSTER=existing.  IMAGE: the controller image to deploy (built from this checkout
# with `docker build -t pycxi:e2e .` if it does not exist and docker is available).
set -euo pipefail

CLUSTER=${E2E_CLUSTER:-kind}
NAME=${E2E_NAME:-pycxi-vni}
IMAGE=${IMAGE:-pycxi:e2e}
NS=vni-e2e
PY=${PYTHON:-python3}
TIMEOUT=${E2E_TIMEOUT:-120}

log() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

cleanup() {
  kubectl delete namespace "$NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  if [ "$CLUSTER" = kind ] && [ -z "${E2E_KEEP:-}" ]; then kind delete cluster --name "$NAME" || true; fi
}
trap cleanup EXIT

if [ "$CLUSTER" = kind ]; then
  log "creating kind cluster $NAME"
  kind create cluster --name "$NAME" --wait 120s
  if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "building $IMAGE (the controller is pure Python; pip builds pycxi's extension too)"
    df=$(mktemp)
    cat > "$df" <<'DOCKERFILE'
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN pip wheel --no-cache-dir -w /wheels '/src[controller]'
FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 65532:65532
ENTRYPOINT ["python", "-m", "pycxi.vni.controller"]
DOCKERFILE
    docker build -f "$df" -t "$IMAGE" "$(dirname "$0")/../.."
    rm -f "$df"
  fi
  kind load docker-image "$IMAGE" --name "$NAME"
fi

log "applying manifests (image $IMAGE)"
$PY -c "from pycxi.vni.manifests import manifests; print(manifests(image='$IMAGE'))" > /tmp/pycxi-vni.yaml
kubectl apply -f /tmp/pycxi-vni.yaml
kubectl -n pycxi-vni set env deployment/pycxi-vni-controller PYCXI_VNI_QUARANTINE=5 PYCXI_VNI_RESYNC=5
kubectl wait --for=condition=Established crd/vnis.vni.pycxi.dev crd/vniclaims.vni.pycxi.dev --timeout=60s
kubectl -n pycxi-vni rollout status deployment/pycxi-vni-controller --timeout=180s
kubectl create namespace "$NS"
kubectl create namespace "$NS-other" --dry-run=client -o yaml | kubectl apply -f -

# The condition the CNI plugin reads, via the same module it uses.
lookup() {  # ns pod -> prints the VNIs, "notready" or "error: ..."
  $PY - "$1" "$2" <<'EOF'
import sys
from pycxi.vni.lookup import lookup_pod_vnis, VniNotReady, VniLookupError
try:
    print(",".join(map(str, lookup_pod_vnis(sys.argv[1], sys.argv[2]))))
except VniNotReady:
    print("notready")
except VniLookupError as e:
    print(f"error: {e}")
EOF
}
wait_vni() {  # ns pod -> prints the VNIs once stamped
  local i out
  for i in $(seq "$TIMEOUT"); do
    out=$(lookup "$1" "$2")
    case "$out" in ""|notready|error*) sleep 1 ;; *) echo "$out"; return 0 ;; esac
  done
  fail "no VNI for $1/$2 (last: $out)"
}
first_pod() { kubectl -n "$1" get pods -l "$2" -o jsonpath='{.items[0].metadata.name}'; }

log "a Job gets a VNI; released when it completes"
kubectl -n "$NS" apply -f - <<'EOF'
apiVersion: batch/v1
kind: Job
metadata: {name: train, annotations: {vni.pycxi.dev/vni: "true"}}
spec:
  template:
    metadata: {labels: {app: train}, annotations: {vni.pycxi.dev/vni: "true"}}
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox:1.36, command: [sleep, "15"]}]
EOF
sleep 3
V=$(wait_vni "$NS" "$(first_pod "$NS" app=train)")
echo "train -> VNI $V"
kubectl get vni "vni-$V" -o wide
kubectl -n "$NS" wait --for=condition=Complete job/train --timeout=120s
released=""
for i in $(seq 30); do
  # released: quarantined (releasedAt set), or already gone after the quarantine
  if ! kubectl get vni "vni-$V" >/dev/null 2>&1 \
     || [ -n "$(kubectl get vni "vni-$V" -o jsonpath='{.status.releasedAt}')" ]; then
    released=1; break
  fi
  sleep 1
done
[ -n "$released" ] || fail "VNI $V not released after the Job completed"

log "a Deployment keeps ONE VNI across a rollout"
kubectl -n "$NS" apply -f - <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: serve, annotations: {vni.pycxi.dev/vni: "true"}}
spec:
  replicas: 2
  selector: {matchLabels: {app: serve}}
  template:
    metadata: {labels: {app: serve}, annotations: {vni.pycxi.dev/vni: "true"}}
    spec:
      containers: [{name: c, image: busybox:1.36, command: [sleep, "3600"]}]
EOF
sleep 3
D1=$(wait_vni "$NS" "$(first_pod "$NS" app=serve)")
kubectl -n "$NS" set env deployment/serve ROLL=2
kubectl -n "$NS" rollout status deployment/serve --timeout=120s
D2=$(wait_vni "$NS" "$(first_pod "$NS" app=serve)")
[ "$D1" = "$D2" ] || fail "rollout changed the VNI: $D1 -> $D2"
N=$(kubectl get vnis -o json | $PY -c 'import json,sys; print(sum(1 for o in json.load(sys.stdin)["items"] if o["spec"]["holder"]["name"] in ("serve",) or o["spec"]["holder"]["name"].startswith("serve-")))')
[ "$N" = 1 ] || fail "$N Vni objects for the Deployment"

log "a claim shared by two Jobs; another namespace's claim is refused"
kubectl -n "$NS" apply -f - <<'EOF'
apiVersion: vni.pycxi.dev/v1alpha1
kind: VniClaim
metadata: {name: shared}
---
apiVersion: batch/v1
kind: Job
metadata: {name: a}
spec:
  template:
    metadata: {labels: {app: a}, annotations: {vni.pycxi.dev/vni: shared}}
    spec: {restartPolicy: Never, containers: [{name: c, image: busybox:1.36, command: [sleep, "20"]}]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: b}
spec:
  template:
    metadata: {labels: {app: b}, annotations: {vni.pycxi.dev/vni: shared}}
    spec: {restartPolicy: Never, containers: [{name: c, image: busybox:1.36, command: [sleep, "20"]}]}
EOF
sleep 3
A=$(wait_vni "$NS" "$(first_pod "$NS" app=a)")
B=$(wait_vni "$NS" "$(first_pod "$NS" app=b)")
[ "$A" = "$B" ] || fail "claim users got $A and $B"
kubectl -n "$NS" get vniclaims
kubectl -n "$NS-other" apply -f - <<EOF
apiVersion: batch/v1
kind: Job
metadata: {name: sneaky}
spec:
  template:
    metadata: {labels: {app: sneaky}, annotations: {vni.pycxi.dev/vni: "$NS/shared"}}
    spec: {restartPolicy: Never, containers: [{name: c, image: busybox:1.36, command: [sleep, "5"]}]}
EOF
sleep 8
OUT=$(lookup "$NS-other" "$(first_pod "$NS-other" app=sneaky)")
case "$OUT" in error*|notready) echo "refused: $OUT" ;; *) fail "foreign claim granted: $OUT" ;; esac

log "controller replicas killed mid-way: no duplicate, no leak"
for i in $(seq 20); do
  kubectl -n "$NS" create job "k$i" --image=busybox:1.36 --dry-run=client -o json -- sleep 30 \
    | $PY -c 'import json,sys; d=json.load(sys.stdin); d["metadata"].setdefault("annotations",{})["vni.pycxi.dev/vni"]="true"; print(json.dumps(d))' \
    | kubectl apply -f - >/dev/null
done
kubectl -n pycxi-vni delete pod -l app.kubernetes.io/name=pycxi-vni-controller --grace-period=0 --force
kubectl -n pycxi-vni rollout status deployment/pycxi-vni-controller --timeout=180s
sleep 10
kubectl get vnis -o json | $PY -c '
import json, sys, collections
items = [o for o in json.load(sys.stdin)["items"] if not o.get("status", {}).get("releasedAt")]
by = collections.Counter(o["spec"]["holder"]["uid"] for o in items)
dup = [u for u, n in by.items() if n > 1]
assert not dup, f"holders with two VNIs: {dup}"
print(f"{len(items)} allocated, one per holder")'

log "deletion releases"
kubectl delete namespace "$NS-other" --wait=true --timeout=120s
kubectl -n "$NS" delete deployment serve --wait=true
sleep 8
kubectl get vnis -o wide
echo
echo "e2e OK"
