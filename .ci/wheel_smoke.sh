#!/usr/bin/env bash
# The package as a user installs it: build the wheel, install it (not editable) into a fresh virtual environment
# with only the torch pins of constraints.txt, and use it from a folder outside the checkout.
#   bash .ci/wheel_smoke.sh            (PB_SMOKE_DIR=<dir> keeps the environment there; default: a temp folder)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=${PB_SMOKE_DIR:-$(mktemp -d)}
py=${PY:-python3}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
unset PYTHONPATH PROMPTBENCH_CONF PROMPTBENCH_CONFIG_PATH PROMPTBENCH_OUTPUT

echo "== wheel smoke check in $work"
rm -rf build ./*.egg-info "$work/dist"
[ -x "$work/venv/bin/python" ] || "$py" -m venv "$work/venv"   # reused when PB_SMOKE_DIR already has one
"$work/venv/bin/pip" install -q --upgrade pip setuptools wheel
"$work/venv/bin/pip" wheel -q --no-deps -w "$work/dist" "$repo"
"$work/venv/bin/pip" install -q -c "$repo/constraints.txt" "$work"/dist/promptbench-*.whl
rm -rf build ./*.egg-info

cd "$work"
pb="$work/venv/bin/promptbench"
"$pb" --version
"$pb" list | tee list.txt
grep -q "^method: .*coop" list.txt
"$pb" train dataset=demo_btmri method=zeroshot shots=1 paths.output_dir="$work/out"
test -f "$work/out/results/few_shot/demo_btmri/medclip_tiny/zeroshot/shots_1/seed_1/result.json"
# a sweep through the installed sweeper plugin (hydra_plugins.promptbench_sweeper) and two joblib workers
"$pb" sweep experiment=demo method=zeroshot,coop dataset=demo_btmri shots=1 seed=1 paths.output_dir="$work/out2" \
  | tee sweep.txt
grep -q "sweep finished: 2 done" sweep.txt
grep -q "CheckedGridSweeper" "$work"/out2/hydra/multirun_*/multirun.yaml
if "$pb" train method.epochs=two 2> err.txt; then echo "expected a config error"; exit 1; fi
test "$(wc -l < err.txt)" -eq 1 && cat err.txt
"$work/venv/bin/python" -c "import transformers, pandas, promptbench; print('wheel smoke ok: promptbench', \
promptbench.__file__, '| transformers', transformers.__version__, '| pandas', pandas.__version__)"
