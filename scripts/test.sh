#!/usr/bin/env bash
# The whole test suite: installs what it needs (scripts/setup-env.sh), then pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/test_core_rules.py -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-env.sh
export PYTHONDONTWRITEBYTECODE=1
set +e
.venv/bin/python -m pytest -p no:cacheprovider -q "$@"
rc=$?
set -e
# leave no network namespaces or bridges of ours behind, even after a failure
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^(pycxit-|cxt|pycxi-demo-)' || true); do
  ip netns del "$ns" 2>/dev/null || true
done
[ "$rc" = 5 ] && { echo "no tests were collected" >&2; exit 1; }
exit "$rc"
