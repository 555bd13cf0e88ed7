#!/usr/bin/env bash
# The test suite against the newest transformers (or PB_TRANSFORMERS="transformers==X.Y") in a scratch virtual
# environment: the wheel's dependencies as pip resolves them today, torch pinned by constraints.txt.
#   PB_TRANSFORMERS="transformers>=5" bash .ci/newest_transformers.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${PB_SMOKE_DIR:-$(mktemp -d)}
spec=${PB_TRANSFORMERS:-transformers}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
grep -v '^transformers' constraints.txt > "$work/constraints.txt"
"${PY:-python3}" -m venv "$work/venv"
"$work/venv/bin/pip" install -q -c "$work/constraints.txt" ".[dev]" "$spec"
"$work/venv/bin/python" -c "import transformers; print('transformers', transformers.__version__)"
# the checkout's tests import the checkout's package (cwd first on sys.path) with this environment's libraries
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
