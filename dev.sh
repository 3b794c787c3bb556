#!/usr/bin/env bash
# Set-up and entry points, idempotent: creates .venv (or $VENV) if missing, installs
# torch 2.14.1 and the test tools, builds and installs this package, then
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
python -m pip install -q torch==2.14.1 pytest pytest-benchmark ninja numpy transformers matplotlib tqdm
# --no-build-isolation: build against the torch installed above, not a fresh download.
MAX_JOBS="${MAX_JOBS:-2}" python -m pip install -q --no-build-isolation -e .

if [ "$command" = demo ]; then
  exec python -m nanogpt_kernels demo "$@"
fi
if [ "$command" = check ]; then
  exec python -m nanogpt_kernels check
fi
exec python -m pytest tests "$@"
