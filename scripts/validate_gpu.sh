#!/usr/bin/env bash
# One-command GPU validation, for a fresh GPU machine with the repository checked out:
#
#   scripts/validate_gpu.sh [--full] [REPORT_DIR]
#
# 1. build     the extension for this GPU's architecture only, with every core, in place
#              (setup.py build_ext --inplace: no install, no network)
# 2. check     python -m nanogpt_kernels check: every op on every backend against eager, on the GPU
# 3. tests     the tests that run on the GPU (pytest --gpu-only: those parametrised with
#              device="cuda"); the CPU, interpreter and harness tests are CI's, which has no GPU
# 4. kernels   the kernel resource report of the CUDA kernels (python -m tools kernels --no-triton;
#              CI runs the whole report, Triton included, since it needs no GPU)
# 5. bench     the benchmark suite (--quick unless --full): CSV, JSON, summary.md, plots, and
#              beside each measured time the static model's prediction for this GPU
# 6. readme    README.md's performance section regenerated from this run (python -m tools readme)
#
# Python: the venv ./dev.sh made, if there is one; else this machine's python3 when it holds
# torch (a GPU image with no network: nothing is installed, the build uses its torch); else
# ./dev.sh sets up a venv first. The Triton version check is waived (the image's Triton is what
# there is; SUMMARY.md records its version, and `check` says whether our kernels agree there).
#
# Every step runs even when an earlier one fails; everything lands in one folder, by default
# benchmarks/results/<gpu>-<date>/ (commit it: the README's performance section is generated from
# the latest one):
#   REPORT_DIR/SUMMARY.md      GPU, versions, each step's result and time, the benchmark summary
#   REPORT_DIR/logs/*.log      each step's full output
#   REPORT_DIR/tests.xml       the test results (JUnit XML)
#   REPORT_DIR/kernels.json    the kernel report
#   REPORT_DIR/bench/          results.csv, results.json, summary.md, plots/*.png
# The exit status is 0 only if every step passed. With --quick (the default) the steps' time
# limits add up to 8 minutes (an H200 with 16 cores is the machine it is sized for).
set -uo pipefail
cd "$(dirname "$0")/.."

QUICK=--quick
if [ "${1:-}" = "--full" ]; then QUICK=; shift; fi
gpu_slug() {  # "NVIDIA H200" -> h200, "NVIDIA A100-SXM4-80GB" -> a100-sxm4-80gb
  nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 | sed -e 's/^NVIDIA //' |
    tr '[:upper:] ' '[:lower:]-' | tr -cd 'a-z0-9-'
}
OUT="${1:-benchmarks/results/$(gpu_slug || true)-$(date -u +%Y-%m-%d)}"
mkdir -p "$OUT/logs"
OUT="$(cd "$OUT" && pwd)"
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ] && ! python3 -c "import torch" 2>/dev/null; then
  ./dev.sh check > "$OUT/logs/setup.log" 2>&1 || echo "./dev.sh set-up failed: $OUT/logs/setup.log"
fi
if [ -x "$VENV/bin/python" ]; then PY="$VENV/bin/python"; else PY="$(command -v python3)"; fi
export MAX_JOBS="${MAX_JOBS:-$(nproc)}" NANOGPT_KERNELS_UNSUPPORTED_TRITON=1 PYTHONUNBUFFERED=1
# Build for this GPU's architecture only (the kernel report still compiles sm_80 and sm_90a).
if [ -z "${NANOGPT_KERNELS_CUDA_ARCH_LIST:-}" ] && command -v nvidia-smi >/dev/null; then
  cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' ')"
  case "$cap" in
    9.0) export NANOGPT_KERNELS_CUDA_ARCH_LIST="9.0a" ;;
    "") ;;
    *) export NANOGPT_KERNELS_CUDA_ARCH_LIST="$cap" ;;
  esac
fi

status=0
: > "$OUT/steps.md"
step() {  # step NAME TIMEOUT_S COMMAND...: runs it, logs it, records result and time
  local name="$1" limit="$2"; shift 2
  local start result rc
  start=$(date +%s)
  echo "== $name: $*"
  timeout --kill-after=30 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  rc=$?
  if [ "$rc" -eq 0 ]; then result="pass"
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then result="FAIL (timed out after ${limit}s)"; status=1
  else result="FAIL (exit $rc)"; status=1; fi
  echo "| $name | $result | $(( $(date +%s) - start )) s | logs/$name.log |" | tee -a "$OUT/steps.md"
}

started=$(date +%s)
# The limits (8 minutes together with --quick) are estimates for 16 cores and an H200, to be
# replaced by the first run's times.
step build 140 "$PY" setup.py -q build_ext --inplace
step check 50 "$PY" -m nanogpt_kernels check
step tests 90 "$PY" -m pytest tests --gpu-only -q -p no:cacheprovider --durations=20 --junitxml="$OUT/tests.xml"
step kernels 60 "$PY" -m tools kernels --no-triton --json "$OUT/kernels.json"
step bench "$([ -n "$QUICK" ] && echo 120 || echo 1800)" "$PY" -m tools bench $QUICK --kernel-report "$OUT/kernels.json" --out "$OUT/bench"
step readme 20 "$PY" -m tools readme

{
  echo "# GPU validation: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 || echo "nvidia-smi not found"
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'triton', triton.__version__)" 2>&1
  echo "git $(git rev-parse HEAD 2>/dev/null)$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo ' (with local changes)')"
  echo '```'
  echo
  echo "Overall: $([ "$status" -eq 0 ] && echo PASS || echo FAIL), $(( $(date +%s) - started )) s"
  echo
  echo "| step | result | time | log |"
  echo "| --- | --- | ---: | --- |"
  cat "$OUT/steps.md"
  echo
  echo "## Tests"
  echo '```'
  tail -n 3 "$OUT/logs/tests.log"
  echo '```'
  echo "## Kernel resources"
  echo '```'
  tail -n 4 "$OUT/logs/kernels.log"
  echo '```'
  echo "Full table: logs/kernels.log; JSON: kernels.json."
  echo
  if [ -f "$OUT/bench/summary.md" ]; then
    echo "## Benchmarks (bench/summary.md, plots in bench/plots/)"
    echo
    sed -e 's/^#/##/' -e 's#](plots/#](bench/plots/#' "$OUT/bench/summary.md"
  fi
} > "$OUT/SUMMARY.md"
rm -f "$OUT/steps.md"
echo "report: $OUT/SUMMARY.md ($([ "$status" -eq 0 ] && echo PASS || echo FAIL))"
exit "$status"
