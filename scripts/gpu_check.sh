#!/usr/bin/env bash
# The GPU check in one command, for a CUDA machine: GPU tests, then the benchmark suite, from the source
# tree (no install, no network). Reports go to benchmarks/results/ (named by date and device) and, when
# $OUT is set (the device tool's output folder), to $OUT too. Budgeted to finish well inside ten minutes.
#
#   bash scripts/gpu_check.sh            # everything
#   QUICK=1 bash scripts/gpu_check.sh    # tests and the quick benchmark only
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
results=benchmarks/results
mkdir -p "$results"

echo "== device"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python - <<'PY' || exit 2
import sys
import gpu_backprop as gb
try:
    print(gb.backend_info("cupy"))
except gb.BackendError as exc:
    sys.exit(f"no GPU check here: {exc}")
PY

echo "== GPU tests"
python -m pytest -q -m gpu -p no:cacheprovider -o addopts="" 2>&1 | tee "$results/gpu-tests.log"
tests_rc=${PIPESTATUS[0]}

echo "== benchmarks"
if [ -n "${QUICK:-}" ]; then
  bench_args=(--quick --backend cupy)
else
  bench_args=(--backend cupy --repeats 5 --seconds 0.5)
fi
timeout 420 python -m gpu_backprop bench "${bench_args[@]}" --out "$results"
bench_rc=$?

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT" && cp "$results"/* "$OUT"/ 2>/dev/null
fi
echo "== done: GPU tests exit $tests_rc, benchmarks exit $bench_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
