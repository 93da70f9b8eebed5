#!/usr/bin/env bash
# The GPU check in one command, for a CUDA machine: the GPU tests, then the benchmark suite on CuPy
# (FP32, then TF32 for mlp-1024), from the source tree (PYTHONPATH=., no install, no network).
# Reports, named by date and device, go to benchmarks/results/ and, when $OUT is set (the device
# tool's output folder), to $OUT too, with the test log. Budgeted well inside ten minutes: every
# stage has its own time limit (180 + 300 + 100 s at most), scikit-learn is skipped on the GPU
# (it is CPU-only), and blocks and repeats are capped.
#
#   bash scripts/gpu_check.sh            # everything
#   QUICK=1 bash scripts/gpu_check.sh    # the GPU tests and the quick benchmark only
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
results=benchmarks/results
run=$(mktemp -d)
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
timeout 180 python -m pytest -q -m gpu -p no:cacheprovider -o addopts="" 2>&1 | tee "$run/gpu-tests-$(date +%F).log"
tests_rc=${PIPESTATUS[0]}

echo "== benchmarks (FP32)"
if [ -n "${QUICK:-}" ]; then
  timeout 100 python -m gpu_backprop bench --quick --backend cupy --no-sklearn --out "$run"
  bench_rc=$?
  tf32_rc=0
else
  timeout 300 python -m gpu_backprop bench --backend cupy --no-sklearn --repeats 5 --seconds 0.5 \
    --patience 30 --out "$run"
  bench_rc=$?
  echo "== benchmarks (TF32, mlp-1024)"
  timeout 100 python -m gpu_backprop bench --backend cupy --tf32 --model mlp-1024 --batch 128 1024 full \
    --no-sklearn --no-tta --no-breakdown --repeats 5 --seconds 0.5 --patience 10 --out "$run"
  tf32_rc=$?
fi

cp "$run"/* "$results"/ 2>/dev/null
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT" && cp "$run"/* "$OUT"/ 2>/dev/null
fi
echo "== done: GPU tests exit $tests_rc, benchmarks exit $bench_rc (TF32 $tf32_rc); reports in $results/:"
ls "$run"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$tf32_rc" -eq 0 ]
