#!/usr/bin/env bash
# Opt-in (not part of the test suite): build the VNI controller's image with podman on a
# machine that reaches Debian's archive and PyPI but no container registry, and check it.
#
#   scripts/build-images-offline.sh [--keep] [--no-e2e]
#
# 1. A base image from Debian's packages: debootstrap bookworm (python3, venv, headers, gcc)
#    into a scratch dir, `podman import` as localhost/pycxi-offline-base:bookworm (kept and
#    reused; remove it with `podman rmi` to rebuild).  The host's CA bundle goes in too, and
#    pip is told to use it, so that pip in the build trusts what this host's pip trusts.
# 2. `podman build -f deploy/controller/Containerfile` with BUILD_BASE and RUNTIME_BASE set to
#    that base (Debian's Python 3.11 instead of the python:3.12 images).
# 3. Checks: the entrypoint's --help, the user (65532), and (unless --no-e2e) the image's
#    controller against the fake API server (tests/vni_k8s/fakeapi.py, on 127.0.0.1, host
#    network): an annotated Job gets a VNI.
#
# The node image (cni/k8s/Containerfile) cannot be built this way: it is AlmaLinux 8 (glibc
# 2.28, the RHEL 8 ABI the node prefix must keep) with packages from AlmaLinux/EPEL, HPE's
# sources cloned from GitHub and CPython from python.org -- none of which is reachable here.
# Needs root, podman, debootstrap (apt-get install debootstrap), and .venv (scripts/setup-env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
KEEP=0 E2E=1
for a in "$@"; do
  case $a in
    --keep) KEEP=1 ;;
    --no-e2e) E2E=0 ;;
    *) echo "usage: $0 [--keep] [--no-e2e]" >&2; exit 2 ;;
  esac
done
BASE=localhost/pycxi-offline-base:bookworm
TAG=localhost/pycxi:offline
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# the hosts this runs on may have low hard limits; podman's defaults ask for more (EPERM)
LIMITS=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096)
command -v podman >/dev/null || { echo "podman is not installed" >&2; exit 1; }
SCRATCH=$(mktemp -d /tmp/pycxi-offline.XXXXXX)
API_PID=
cleanup() {
  podman rm -f -t 0 pycxi-offline-ctl >/dev/null 2>&1 || true
  [ -n "$API_PID" ] && kill "$API_PID" 2>/dev/null || true
  rm -rf "$SCRATCH"
}
trap cleanup EXIT
t0=$SECONDS

if ! podman image exists "$BASE"; then
  command -v debootstrap >/dev/null || { echo "debootstrap is not installed" >&2; exit 1; }
  echo "== debootstrap bookworm (minbase + python3, venv, headers, gcc)"
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-dev,python-is-python3,gcc,libc6-dev,ca-certificates \
    bookworm "$SCRATCH/root" "$MIRROR" > "$SCRATCH/debootstrap.log" 2>&1 \
    || { tail -20 "$SCRATCH/debootstrap.log" >&2; exit 1; }
  rm -rf "$SCRATCH"/root/var/cache/apt/archives/*.deb "$SCRATCH"/root/var/lib/apt/lists/*
  cp /etc/ssl/certs/ca-certificates.crt "$SCRATCH/root/etc/ssl/certs/ca-certificates.crt"
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$SCRATCH/root/etc/pip.conf"
  echo "== podman import -> $BASE"
  tar -C "$SCRATCH/root" -c . | podman import - "$BASE" > "$SCRATCH/import.log" 2>&1 \
    || { cat "$SCRATCH/import.log" >&2; exit 1; }
  rm -rf "$SCRATCH/root"
  echo "   base image in $((SECONDS - t0)) s"
fi

t1=$SECONDS
echo "== podman build -f deploy/controller/Containerfile -> $TAG"
podman build "${LIMITS[@]}" --network host -f deploy/controller/Containerfile \
  --build-arg BUILD_BASE="$BASE" --build-arg RUNTIME_BASE="$BASE" -t "$TAG" . \
  > "$SCRATCH/build.log" 2>&1 || { tail -30 "$SCRATCH/build.log" >&2; exit 1; }
echo "   built in $((SECONDS - t1)) s"

echo "== checks"
podman run --rm "${LIMITS[@]}" "$TAG" --help | grep -q "python -m pycxi.vni.controller"
echo "   entrypoint --help: ok"
[ "$(podman run --rm "${LIMITS[@]}" --entrypoint id "$TAG" -u)" = 65532 ]
echo "   runs as uid 65532: ok"

if [ "$E2E" = 1 ]; then
  PY=.venv/bin/python
  [ -x "$PY" ] || { echo ".venv missing: run scripts/setup-env.sh (or pass --no-e2e)" >&2; exit 1; }
  KC=$SCRATCH/kubeconfig.json
  "$PY" tests/vni_k8s/fakeapi.py --port 0 --kubeconfig "$KC" > "$SCRATCH/api.log" 2>&1 &
  API_PID=$!
  for _ in $(seq 1 100); do [ -s "$KC" ] && break; sleep 0.1; done
  chmod 644 "$KC"
  "$PY" - "$KC" <<'EOF'
import sys
sys.path[:0] = ["tests/vni_k8s", "."]
from kcluster import Cluster
from pycxi.vni.kube import KubeClient, KubeConfig
c = KubeClient(KubeConfig.load(sys.argv[1]), timeout=5.0)
Cluster(c, sys.argv[1], None).job("team-a", "train")
EOF
  podman run -d --name pycxi-offline-ctl --network host "${LIMITS[@]}" -v "$KC:/kubeconfig.json:ro" \
    "$TAG" --kubeconfig /kubeconfig.json --ranges 1024-2047 --no-leader-election \
    --metrics-port 0 >/dev/null
  ok=0
  for _ in $(seq 1 60); do
    if podman logs pycxi-offline-ctl 2>&1 | grep -q '"allocated VNI 1024 to Job team-a/train"'; then
      ok=1; break
    fi
    sleep 1
  done
  if [ "$ok" != 1 ]; then
    podman logs pycxi-offline-ctl 2>&1 | tail -20 >&2
    echo "   the image's controller gave the Job no VNI within 60 s" >&2; exit 1
  fi
  echo "   the image's controller allocated VNI 1024 to Job team-a/train (fake API server): ok"
  podman rm -f -t 0 pycxi-offline-ctl >/dev/null
fi
[ "$KEEP" = 1 ] || podman rmi "$TAG" >/dev/null
echo "done in $((SECONDS - t0)) s"
