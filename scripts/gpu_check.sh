#!/usr/bin/env bash
# The first run on a CUDA machine, in one command of at most ten minutes, from the source tree
# (PYTHONPATH=., no install, no network):
#
#   preflight  python3, then one line each for numpy, cupy, pytest, hypothesis and tqdm (a missing
#              one, hypothesis aside, stops the run here with what to install), the device, and
#              `gpu_backprop doctor`: versions, NVRTC, the CUDA headers, every kernel compiled for
#              the device                                                      at most 120 s
#   gpu-tests  python3 -m pytest -m gpu -ra                                     at most 180 s
#   fit        python3 -m gpu_backprop train --preset fashion --backend cupy --data-dir DIR --json,
#              then the same with $WIDER (784-512-512-10, batch 256, 20 epochs: better on held-out
#              training data) and with $FEWER (784-512-512-10, batch 1024, 30 epochs: nearly as good
#              on it in 38% of the steps) (Fashion-MNIST: only when DIR holds its four IDX files)
#                                                                             at most 90 s
#   targets    python3 benchmarks/gpu_targets.py --out OUT --no-plot [--data-dir DIR --fit-json fit.json]:
#              every figure of the GPU targets (the suite beside PyTorch on the same GPU, the
#              fused per-sample kernel, NumPy-CuPy agreement, launches per step, the host's and
#              the device's time per call, CUDA graphs, torch.compile), saved section by section
#                                                                             at most 300 s
#
#   bash scripts/gpu_check.sh [--data-dir DIR] [--dry-run] [--backend cupy|numpy]
#
# Every phase has its own time box (`timeout -s INT`: pytest and Python still print what they have),
# cut to what is left of a deadline of GPU_CHECK_DEADLINE seconds (default 570) from the start, and
# writes its own log as it goes, so a time-out loses only the phase it stopped. The outputs go to
# $OUT when it is set (the device tool's folder: at most 8 files come back, so there are at most 8:
# summary.txt, preflight.log, gpu-tests.log, fit.log, fit.json, targets.log, targets.json,
# targets.md; the plot is drawn afterwards with `gpu_targets.py --render`), else to
# runs/gpu-check-DATE/. The last lines are one summary line per phase, also in summary.txt; exit
# status 0 when every phase passed (or had nothing to do), 1 when one did not, 2 when the preflight
# stopped the run.
#
# Decisions:
# * hypothesis may be missing on the GPU machine. tests/test_data.py and tests/test_properties.py
#   import it at module level, and pytest stops the whole session at a collection error, so without
#   it the test files that import it are left out (--ignore, found with grep; the preflight says
#   which; today neither holds a GPU test) and every other test runs. `-p no:hypothesis` would not
#   help: the import is the test module's own.
# * `-ra` (addopts' own) and not `-rs`: -r is not additive, and -rs would drop the failures and
#   errors from the short summary; -ra shows the skip reasons too.
# * A missing python3 module, no CUDA device, or no NVRTC / CUDA headers (doctor exit 2) stops the
#   run after the preflight: every later phase would only fail. A kernel that does not compile
#   (doctor exit 1) does not: the tests then show what it breaks.
# * --dry-run runs the preflight's quick checks (no doctor) and prints each phase's command and box.
#   --backend numpy rehearses the whole run on a machine without a GPU (the GPU tests then skip,
#   the doctor compiles for sm_90 where CuPy and NVRTC are installed, and the targets run small on
#   the tests' CuPy stand-in, which needs g++). The box of each phase can be set by BOX_DOCTOR,
#   BOX_TESTS, BOX_FIT and BOX_TARGETS (seconds), the interpreter by PYTHON.
# * The fit runs before the targets, which put its result in their table.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

PY=${PYTHON:-python3}
WIDER="--hidden 512,512 --batch-size 256 --lr 0.1 --epochs 20"  # the fit's second run: the fashion preset widened
FEWER="--hidden 512,512 --batch-size 1024 --lr 0.2 --epochs 30"  # its third: widened, in fewer, larger steps
DATA_DIR=""
DRY=0
[ -n "${DRY_RUN:-}" ] && [ "${DRY_RUN}" != 0 ] && DRY=1
BACKEND=cupy
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) [ $# -ge 2 ] || { echo "gpu_check.sh: --data-dir needs a directory" >&2; exit 2; }
                DATA_DIR=$2; shift 2 ;;
    --data-dir=*) DATA_DIR=${1#--data-dir=}; shift ;;
    --dry-run) DRY=1; shift ;;
    --backend) [ "${2:-}" = cupy ] || [ "${2:-}" = numpy ] || {
                 echo "gpu_check.sh: --backend takes cupy or numpy" >&2; exit 2; }
               BACKEND=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

DEADLINE=${GPU_CHECK_DEADLINE:-570}
BOX_DOCTOR=${BOX_DOCTOR:-120}
BOX_TESTS=${BOX_TESTS:-180}
BOX_FIT=${BOX_FIT:-90}
BOX_TARGETS=${BOX_TARGETS:-300}
GRACE=10  # seconds between SIGINT and SIGKILL when a box runs out

dir=${OUT:-runs/gpu-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$dir" || { echo "gpu_check.sh: cannot create the output folder $dir" >&2; exit 2; }
: > "$dir/summary.txt"
failed=0

record() {  # PHASE STATUS SECONDS DETAIL: one summary line, kept in summary.txt as the run goes
  printf '%-10s %-8s %4ss  %s\n' "$1" "$2" "$3" "$4" >> "$dir/summary.txt"
  case "$2" in ok|SKIPPED|DRY-RUN) ;; *) failed=1 ;; esac
}

finish() {  # the summary, then exit with $1
  echo "== summary ($SECONDS s; outputs in $dir)"
  cat "$dir/summary.txt"
  exit "$1"
}

stop_after() {  # PHASE REASON: every phase after PHASE is SKIPPED for REASON; then the summary, exit 2
  local p later=0
  for p in preflight doctor gpu-tests fit targets; do
    [ "$later" = 1 ] && record "$p" SKIPPED 0 "$2"
    [ "$p" = "$1" ] && later=1
  done
  finish 2
}

box() {  # the time box of a phase: its own, cut to what is left before the deadline
  local left=$(( DEADLINE - SECONDS - GRACE ))
  if [ "$1" -lt "$left" ]; then echo "$1"; elif [ "$left" -gt 0 ]; then echo "$left"; else echo 0; fi
}

status_of() {  # exit status -> summary word
  case "$1" in 0) echo ok ;; 124) echo TIMEOUT ;; 137) echo KILLED ;; *) echo FAILED ;; esac
}

run_phase() {  # NAME BOX LOG COMMAND...: the command in its box, its output in $dir/LOG; sets $rc
  local name=$1 want=$2 log=$3 b t0
  shift 3
  b=$(box "$want")
  rc=0
  if [ "$DRY" = 1 ]; then
    echo "== $name (at most ${b}s): $*"
    record "$name" DRY-RUN 0 "would run: $* (at most ${b}s, log $log)"
    return
  fi
  if [ "$b" -le 0 ]; then
    record "$name" SKIPPED 0 "no time left before the ${DEADLINE} s deadline"
    rc=0
    return
  fi
  echo "== $name (at most ${b}s): $*"
  t0=$SECONDS
  timeout -s INT -k "$GRACE" "$b" "$@" 2>&1 | tee "$dir/$log"
  rc=${PIPESTATUS[0]}
  phase_seconds=$(( SECONDS - t0 ))
}

# -------------------------------------------------------------------------------------------------
# preflight
# -------------------------------------------------------------------------------------------------
pre=$dir/preflight.log
{
  echo "== preflight $(date '+%F %T'), $(uname -n), $(nproc 2>/dev/null || echo '?') cores, backend $BACKEND"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/gpu     /'
  else
    echo "gpu     nvidia-smi not found"
  fi
} | tee "$pre"
if ! command -v "$PY" >/dev/null; then
  echo "MISSING $PY: install Python 3 or name the interpreter with PYTHON=..." | tee -a "$pre"
  record preflight FAILED "$SECONDS" "no $PY (set PYTHON=...)"
  stop_after preflight "the preflight stopped the run"
fi
"$PY" - "$BACKEND" <<'PY' 2>&1 | tee -a "$pre"
import importlib
import sys

backend = sys.argv[1]
print(f"ok      python {sys.version.split()[0]} ({sys.executable})")
fixes = {"numpy": "pip install numpy", "cupy": "pip install cupy-cuda13x (CUDA 13 driver) or cupy-cuda12x",
         "pytest": "pip install pytest", "hypothesis": "pip install hypothesis", "tqdm": "pip install tqdm"}
required = ["numpy", "pytest", "tqdm"] + (["cupy"] if backend == "cupy" else [])
missing, found = [], []
for name in ("numpy", "cupy", "pytest", "hypothesis", "tqdm"):
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if name in required:
            missing.append(name)
            print(f"MISSING {name} ({why}): {fixes[name]}")
        elif name == "hypothesis":
            print(f"MISSING hypothesis ({why}): the test files that import it are left out; {fixes[name]}")
        else:
            print(f"MISSING {name} ({why}): not needed with --backend {backend}")
    else:
        print(f"ok      {name} {getattr(module, '__version__', '(no version)')}")
        found.append(f"{name} {getattr(module, '__version__', '?')}")
try:
    import gpu_backprop
    print(f"ok      gpu_backprop {gpu_backprop.__version__} from {gpu_backprop.__file__}")
except Exception as exc:  # noqa: BLE001
    missing.append("gpu_backprop")
    print(f"MISSING gpu_backprop ({type(exc).__name__}: {exc}): run from the source tree")
print(f"found   {', '.join(found)}")
if missing:
    print(f"stop: {' '.join(missing)} missing")
    sys.exit(3)
PY
imports_rc=${PIPESTATUS[0]}
if [ "$imports_rc" -ne 0 ]; then
  record preflight FAILED "$SECONDS" "$(grep '^stop: ' "$pre" | tail -1 | sed 's/^stop: //') (see preflight.log)"
  stop_after preflight "the preflight stopped the run"
fi

ignores=()
if ! "$PY" -c "import hypothesis" >/dev/null 2>&1; then
  while IFS= read -r f; do ignores+=("--ignore=$f"); done < <(grep -rlE '^\s*(from|import) hypothesis' tests --include='*.py' | sort)
  echo "note    without hypothesis, left out: ${ignores[*]#--ignore=}" | tee -a "$pre"
fi

device_ok=1
if [ "$BACKEND" = cupy ]; then
  "$PY" - <<'PY' 2>&1 | tee -a "$pre"
import sys

import gpu_backprop as gb

try:
    print(f"ok      device {gb.backend_info('cupy')}")
except gb.BackendError as exc:
    print(f"MISSING device: {exc}")
    sys.exit(1)
PY
  [ "${PIPESTATUS[0]}" -eq 0 ] || device_ok=0
fi
if [ "$device_ok" = 0 ]; then
  reason=$(grep '^MISSING device: ' "$pre" | tail -1 | sed 's/^MISSING device: //')
  record preflight FAILED "$SECONDS" "${reason:-no CUDA device answers (see preflight.log)}"
  if [ "$DRY" != 1 ]; then
    stop_after preflight "the preflight stopped the run"
  fi
else
  found=$(grep '^found ' "$pre" | tail -1 | sed 's/^found *//')
  record preflight ok "$SECONDS" "${found}$([ ${#ignores[@]} -gt 0 ] && echo "; no hypothesis: ${#ignores[@]} test files left out")"
fi

# -------------------------------------------------------------------------------------------------
# doctor: versions, NVRTC, headers, every kernel compiled (for the device, or sm_90 in a rehearsal)
# -------------------------------------------------------------------------------------------------
doctor_cmd=("$PY" -m gpu_backprop doctor)
[ "$BACKEND" = numpy ] && doctor_cmd+=(--arch sm_90)
if [ "$DRY" = 1 ]; then
  run_phase doctor "$BOX_DOCTOR" preflight.log "${doctor_cmd[@]}"
elif [ "$(box "$BOX_DOCTOR")" -le 0 ]; then
  record doctor SKIPPED 0 "no time left before the ${DEADLINE} s deadline"
else
  b=$(box "$BOX_DOCTOR")
  echo "== doctor (at most ${b}s): ${doctor_cmd[*]}" | tee -a "$pre"
  t0=$SECONDS
  timeout -s INT -k "$GRACE" "$b" "${doctor_cmd[@]}" 2>&1 | tee -a "$pre"
  rc=${PIPESTATUS[0]}
  kernels=$(grep '^kernels ' "$pre" | tail -1 | sed 's/^kernels *//; s/ (NVRTC options.*//')
  if [ "$rc" -eq 2 ]; then
    why=$(grep '^error: ' "$pre" | tail -1 | sed 's/^error: //')
    if [ "$BACKEND" = cupy ]; then
      record doctor FAILED $(( SECONDS - t0 )) "${why:-exit 2} (nothing can be compiled: the run stops)"
      stop_after doctor "the doctor found no compiler"
    fi
    record doctor SKIPPED $(( SECONDS - t0 )) "${why:-exit 2}"
  else
    record doctor "$(status_of "$rc")" $(( SECONDS - t0 )) "${kernels:-no kernel line} (exit $rc)"
  fi
fi

# -------------------------------------------------------------------------------------------------
# the GPU tests
# -------------------------------------------------------------------------------------------------
run_phase gpu-tests "$BOX_TESTS" gpu-tests.log \
  "$PY" -m pytest -m gpu -ra -p no:cacheprovider --durations=15 ${ignores[@]+"${ignores[@]}"}
if [ "$DRY" != 1 ] && [ -n "${phase_seconds+x}" ] && [ -f "$dir/gpu-tests.log" ]; then
  counts=$(grep -E '(passed|failed|skipped|error|no tests ran)' "$dir/gpu-tests.log" | grep -E '^=+ .* =+$|^[0-9]+ ' | tail -1 | tr -d '=' | sed 's/^ *//; s/ *$//')
  record gpu-tests "$(status_of "$rc")" "$phase_seconds" "${counts:-no pytest summary} (exit $rc)"
  unset phase_seconds
fi

# -------------------------------------------------------------------------------------------------
# Fashion-MNIST fit, where the data is
# -------------------------------------------------------------------------------------------------
[ -z "$DATA_DIR" ] && [ -d /usr/share/datasets/fashion-mnist ] && DATA_DIR=/usr/share/datasets/fashion-mnist
have_data=0
if [ -n "$DATA_DIR" ]; then
  have_data=1
  for stem in train-images train-labels t10k-images t10k-labels; do
    compgen -G "$DATA_DIR/$stem*" >/dev/null || have_data=0
  done
fi
if [ "$have_data" = 0 ]; then
  record fit SKIPPED 0 "no Fashion-MNIST IDX files${DATA_DIR:+ in $DATA_DIR} (pass --data-dir DIR)"
else
  # the preset, then the preset widened, then widened in fewer steps ("or better": the other settings won on
  # held-out training data, CPU); the exit status is the first run's that failed
  # (the box's SIGINT ends them all: train exits 130 on it, and bash would otherwise start the next run)
  runs='trap "exit 130" INT; rc=0; for extra in "" "$WIDER" "$FEWER"; do "$@" $extra; r=$?; [ "$rc" = 0 ] && rc=$r; done; exit "$rc"'
  run_phase fit "$BOX_FIT" fit.log env WIDER="$WIDER" FEWER="$FEWER" bash -c "$runs" \
    fit "$PY" -m gpu_backprop train --preset fashion --backend "$BACKEND" --data-dir "$DATA_DIR" --json --no-progress
  if [ "$DRY" != 1 ] && [ -n "${phase_seconds+x}" ]; then
    grep '^{' "$dir/fit.log" > "$dir/fit.json" || rm -f "$dir/fit.json"  # one JSON line a run
    metrics=""
    if [ -f "$dir/fit.json" ]; then
      metrics=$("$PY" - "$dir/fit.json" 2>/dev/null <<'PY'
import json
import sys

runs = [json.loads(line) for line in open(sys.argv[1])]
print("; ".join((f"{'-'.join(map(str, d['sizes']))}, batch {d['batch_size']}: " if i else "")
                + f"test accuracy {d['test_accuracy']:.4f} after {d['epochs']} epochs, "
                f"{d['samples_per_second']:.0f} samples/s" for i, d in enumerate(runs)))
PY
)
    fi
    record fit "$(status_of "$rc")" "$phase_seconds" "${metrics:-no JSON line} (exit $rc)"
    unset phase_seconds
  fi
fi

# -------------------------------------------------------------------------------------------------
# the targets: every figure the GPU measurements need (a rehearsal runs them small on the stand-in)
# -------------------------------------------------------------------------------------------------
targets_cmd=("$PY" benchmarks/gpu_targets.py --out "$dir" --no-plot)
[ "$have_data" = 1 ] && targets_cmd+=(--data-dir "$DATA_DIR" --fit-json "$dir/fit.json")
if [ "$BACKEND" = numpy ]; then
  targets_cmd=(env "PYTHONPATH=$PWD/tests:$PYTHONPATH" "$PY" -m fakecupy "${targets_cmd[@]:1}" --small --no-peers)
fi
run_phase targets "$BOX_TARGETS" targets.log "${targets_cmd[@]}"
if [ "$DRY" != 1 ] && [ -n "${phase_seconds+x}" ]; then
  verdict=""
  if [ -f "$dir/targets.json" ]; then
    verdict=$("$PY" - "$dir/targets.json" 2>/dev/null <<'PY'
import json
import sys

r = json.load(open(sys.argv[1]))
judged = [t for t in r["targets"] if t["met"] is not None]
failed = [name for name, s in r["sections"].items() if "error" in s]
text = f"{sum(t['met'] for t in judged)} of {len(judged)} targets met"
text += f", {len(r['targets']) - len(judged)} rows not judged"
print(text + (f"; failed sections: {', '.join(failed)}" if failed else "") + ("" if r["complete"] else "; incomplete"))
PY
)
  fi
  record targets "$(status_of "$rc")" "$phase_seconds" "${verdict:-no report} (exit $rc)"
  unset phase_seconds
fi

if [ "$DRY" = 1 ] && [ "$device_ok" = 0 ]; then finish 2; fi
finish "$failed"
