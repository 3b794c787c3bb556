#!/usr/bin/env bash
# One-command GPU validation, for a fresh GPU machine with the repository checked out:
#
#   scripts/validate_gpu.sh [--full] [REPORT_DIR]
#
# 1. build + check   ./dev.sh check: creates .venv if missing, installs torch and the package
#                    (builds the CUDA kernels for this GPU's arch), runs `python -m nanogpt_kernels check`
# 2. tests           the whole test suite, CPU and CUDA-parametrised (pytest tests)
# 3. kernels         the kernel resource report (registers, spills, occupancy, tensor cores), JSON too
# 4. bench           the benchmark suite (--quick unless --full): CSV, JSON, summary.md, plots
#
# Every step runs even when an earlier one fails; everything lands in one folder:
#   REPORT_DIR/SUMMARY.md      GPU, versions, each step's result and time, the benchmark summary
#   REPORT_DIR/logs/*.log      each step's full output
#   REPORT_DIR/tests.xml       the test results (JUnit XML)
#   REPORT_DIR/kernels.json    the kernel report
#   REPORT_DIR/bench/          results.csv, results.json, summary.md, plots/*.png
# The exit status is 0 only if every step passed. Needs no network beyond what ./dev.sh's
# install needs. With --quick (the default) it is meant to finish within 10 minutes on an H100.
set -uo pipefail
cd "$(dirname "$0")/.."

QUICK=--quick
if [ "${1:-}" = "--full" ]; then QUICK=; shift; fi
OUT="${1:-validation-$(date -u +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT/logs"
OUT="$(cd "$OUT" && pwd)"
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
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
step build-and-check 600 ./dev.sh check
step tests 900 "$PY" -m pytest tests -q -p no:cacheprovider --durations=20 --junitxml="$OUT/tests.xml"
step kernels 600 "$PY" -m tools kernels --json "$OUT/kernels.json"
step bench 900 "$PY" -m tools bench $QUICK --out "$OUT/bench"

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
