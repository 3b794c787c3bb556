#!/usr/bin/env bash
# Set-up and entry points, idempotent: creates .venv (or $VENV) if missing, installs
# torch 2.14.1 and the test tools, builds and installs this package (each only when its
# inputs changed), then
#   ./dev.sh demo [ARGS...]   the main job: trains a GPT eager and fused (python -m nanogpt_kernels demo)
#   ./dev.sh check            runs the self-check (python -m nanogpt_kernels check)
#   ./dev.sh test [ARGS...]   runs the test suite (python -m pytest tests ARGS...)
set -euo pipefail
cd "$(dirname "$0")"

command="${1:-}"
case "$command" in
  demo|check|test) shift ;;
  *) echo "usage: ./dev.sh demo [demo args...] | check | test [pytest args...]" >&2; exit 2 ;;
esac

VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
# Each step runs only when what it depends on changed since it last succeeded: its stamp, in the
# venv, holds a hash of its inputs. An unchanged checkout goes straight to the command.
stamp() { sha256sum | cut -c1-64; }
requirements="torch==2.14.1 pytest pytest-benchmark ninja numpy transformers matplotlib tqdm"
if [ "$(cat "$VENV/.nk-requirements" 2>/dev/null)" != "$(echo "$requirements" | stamp)" ]; then
  # shellcheck disable=SC2086
  python -m pip install -q $requirements
  echo "$requirements" | stamp > "$VENV/.nk-requirements"
fi
# The build's inputs: every source, the build scripts, torch, and the knobs setup.py reads.
build_inputs() {
  find csrc setup.py pyproject.toml nanogpt_kernels/_build_flags.py -type f -print0 | LC_ALL=C sort -z \
    | xargs -0 sha256sum
  python -c "import sys, torch; print(sys.version, torch.__version__)"
  env | grep -E '^(NANOGPT_KERNELS_CUDA_ARCH_LIST|TORCH_CUDA_ARCH_LIST|NANOGPT_KERNELS_SKIP_CUDA|CUDA_HOME)=' | LC_ALL=C sort || true
  pwd
}
build_stamp="$(build_inputs | stamp)"
if [ "$(cat "$VENV/.nk-build" 2>/dev/null)" != "$build_stamp" ]; then
  # --no-build-isolation: build against the torch installed above, not a fresh download.
  # setup.py keeps its object files in build/, so ninja recompiles only what changed.
  MAX_JOBS="${MAX_JOBS:-2}" python -m pip install -q --no-build-isolation --no-deps -e .
  echo "$build_stamp" > "$VENV/.nk-build"
fi

if [ "$command" = demo ]; then
  exec python -m nanogpt_kernels demo "$@"
fi
if [ "$command" = check ]; then
  exec python -m nanogpt_kernels check
fi
exec python -m pytest tests "$@"
