#!/usr/bin/env bash
# The whole flow on the software CXI NIC: two jobs x two pods, CNI ADD through a real
# conflist chain (bridge, then cxi), an isolation table, teardown, proof nothing is left.
# Installs what it needs first (scripts/setup-env.sh).  Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh
exec .venv/bin/python scripts/demo.py "$@"
