#!/usr/bin/env bash
# Install what the tests and the demo need on a fresh Debian 12 machine, then build
# pycxi into ./.venv.  Safe to run again.  Needs root for apt (skipped otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(gcc pkg-config openssl iproute2 util-linux procps containernetworking-plugins podman runc
              busybox-static iputils-ping hyperfine containerd)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== apt-get install ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
  fi
else
  echo "== not root: skipping apt packages (${APT_PACKAGES[*]})" >&2
fi

# The interpreter for the venv: not the pyenv shim on PATH (slow); any CPython >= 3.9.
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in "$(command -v python3 2>/dev/null)" /usr/bin/python3; do
    [ -n "$cand" ] || continue
    real=$("$cand" -c 'import sys; print(sys.executable)' 2>/dev/null) || continue
    "$real" -c 'import venv, ensurepip' 2>/dev/null && { PY=$real; break; }
  done
fi
[ -n "$PY" ] || { echo "no python3 with venv and ensurepip found" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $PY"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel cython build
echo "== building pycxi (.venv, editable)"
.venv/bin/python -m pip install -q --no-build-isolation -e ".[test]"
