#!/usr/bin/env bash
# Do the regression tests still catch real faults? Each patch in tests/data/faults/ plants one
# (a sign flipped in a Gauss-Newton product term, α_W changed by 1 %, one CG product fewer per
# truncated-GN step) in a copy of the tree; the regression tests then run on that copy and must
# fail. Prints the failing tests per fault; exits 1 if any fault goes unnoticed.
#
#   tests/data/check_faults.sh [PYTEST ARGS]     (run from anywhere; uses .venv/bin/python)
set -u
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
export GNVPRO_DATA=${GNVPRO_DATA:-$(cd .. && pwd)/shared}  # the copy has no ../shared beside it
TESTS="tests/test_experiment_regression.py tests/test_iterate_regression.py"
missed=0
for patch in tests/data/faults/*.patch; do
  tmp=$(mktemp -d)
  cp -r src tests benchmarks pyproject.toml "$tmp"/
  (cd "$tmp" && patch -s -p1) < "$patch" || { echo "cannot apply $patch"; exit 2; }
  log="$tmp/pytest.log"
  (cd "$tmp" && OMP_NUM_THREADS=1 PYTHONPATH="$tmp/src" "$OLDPWD/$PY" -m pytest -q \
      -p no:cacheprovider $TESTS "$@") > "$log" 2>&1
  failed=$(grep -E '^FAILED' "$log" | cut -c1-230)
  echo "== $(basename "$patch" .patch): $(tail -1 "$log")"
  [ -n "$failed" ] && echo "$failed" || { echo "   NOT CAUGHT"; missed=1; }
  rm -rf "$tmp"
done
exit $missed
