#!/usr/bin/env bash
# Every GPU measurement of issue 25 in one run of the device tool (docs/benchmarks.md, "GPU: one device run"):
#   run(command="bash scripts/gpu_benchmark.sh", carry=[".whl"], timeout_s=540)
# Parts (each under its own `timeout`, so one slow part cannot eat the others; at most ~7.5 minutes together):
#   install  the carried wheels (.whl/) into /tmp/site, PYTHONPATH=/tmp/site:$PWD; versions and nvidia-smi
#   plan     the few-shot grid's (method, dataset) budgets, composed on the CPU in the background meanwhile
#   steps    one training step of CoOp, VPT-shallow, MaPLe, Biomed-DPT (bf16-mixed and 32-true) + the tower's forward
#   more     the other trainable methods' steps in bf16-mixed (for the projection)
#   limits   CoOp cell vs plain loop vs physical limit (bf16-mixed, then 32-true)
#   share    a 16-cell demo grid with 1, 2 and 8 joblib workers on the one GPU
#   project  the few-shot grid's GPU-hours from those numbers; then report (docs/benchmarks.md)
# Results: docs/bench_data/*.json and docs/benchmarks.md, copied with the log into $OUT (6 files come back).
#
#   bash scripts/gpu_benchmark.sh           # on the GPU machine (needs $OUT and .whl/)
#   bash scripts/gpu_benchmark.sh --dry     # the same pipeline here on the CPU: medclip_tiny, 1-2 steps, a tiny
#                                           # grid, into a temp folder (PYTHON=... to pick the interpreter)
#   bash scripts/gpu_benchmark.sh --wheels  # once, where pip reaches PyPI: download the wheels into .whl/
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
case "${1:-}" in
  "") ;;
  --dry) MODE=dry ;;
  --wheels) MODE=wheels ;;
  *) echo "usage: bash scripts/gpu_benchmark.sh [--dry | --wheels]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}

# promptbench's runtime dependencies the nvidia-h200 image lacks (the device tool's KINDS.md), pinned by
# requirements-lock.txt; antlr4-python3-runtime 4.9.3 (hydra-core's pin) has no wheel on PyPI: built here
WHEELS="open-clip-torch ftfy wcwidth hydra-core omegaconf hydra-joblib-launcher"
SDIST_WHEELS="antlr4-python3-runtime"
pins() { for n in "$@"; do grep -i "^$n==" requirements-lock.txt || { echo "no pin for $n" >&2; return 1; }; done; }
if [ "$MODE" = wheels ]; then
  set -e
  mkdir -p .whl
  $PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $(pins $WHEELS)
  $PY -m pip wheel --no-deps -w .whl $(pins $SDIST_WHEELS)
  ls -l .whl; du -ch .whl/*.whl | tail -1
  exit 0
fi

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
export PYTHONWARNINGS="ignore::UserWarning,ignore::DeprecationWarning"
if [ "$MODE" = dry ]; then
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/pb_gpu_dry.XXXXXX")
  OUTDIR=$WORK/out SITE=$WORK/site
  export PB_BENCH_DATA=$WORK/bench_data PB_BENCH_REPORT=$WORK/benchmarks.md
  DEV=cpu BB=medclip_tiny
  STEPS=(--warmup 1 --repeat 1 --rounds 1 --forward-batch 16)
  MORE=(--methods coop --warmup 1 --repeat 1 --rounds 1)  # already measured: skipped (the --append path)
  LIMITS=(--precision 32-true --epochs 2)
  SHARE=(--methods coop --dataset demo_btmri --shots 1 --seeds 1,2 --jobs 2)
  GRID="experiment=few_shot dataset=btmri"
  T_INSTALL=60 T_PLAN=120 T_STEPS=90 T_MORE=60 T_LIMITS=120 T_SHARE=120 T_PROJECT=60 TOTAL_S=600
else
  OUTDIR=${OUT:?OUT is set on the device machine; here use --dry} SITE=/tmp/site WORK=/tmp
  DEV=cuda BB=biomedclip_arch
  STEPS=(--warmup 5 --repeat 10 --rounds 3)
  # the projection's costliest first (CLIP-LoRA: 500 x K steps through the tower), then every other one that trains
  MORE=(--methods clip_lora,clap,biomedcoop,clip_svd,medical_vpt,cocoop,all --warmup 3 --repeat 5 --rounds 2)
  LIMITS=(--precision bf16-mixed,32-true --workers 8)  # the loaders conf/trainer/gpu.yaml gives a GPU sweep
  SHARE=(--methods coop,vpt_shallow --dataset demo_btmri,demo_ctkidney --shots 1,16 --seeds 1,2 --jobs 1,2,8)
  GRID="experiment=few_shot"
  # worst case (every part at its budget) ~455 s; TOTAL_S caps the whole at 470 s (8 minutes = 480)
  T_INSTALL=40 T_PLAN=300 T_STEPS=90 T_MORE=60 T_LIMITS=130 T_SHARE=120 T_PROJECT=25 TOTAL_S=470
fi
DATA=${PB_BENCH_DATA:-docs/bench_data}
PAGE=${PB_BENCH_REPORT:-docs/benchmarks.md}
mkdir -p "$OUTDIR" "$DATA"
LOG=$OUTDIR/gpu_benchmark.log

part() {  # part NAME BUDGET_S COMMAND...: under timeout (its whole process group); logs exit code and seconds.
  # The budget shrinks to what the run's TOTAL_S leaves after RESERVE_S (kept for project, report and the copy).
  local name=$1 budget=$2 t0=$SECONDS rc left
  shift 2
  left=$((TOTAL_S - (SECONDS - START) - RESERVE_S))
  [ "$left" -lt "$budget" ] && budget=$left
  if [ "$budget" -lt 10 ]; then
    echo "== $name: SKIPPED (${left}s left of the run's ${TOTAL_S}s)"; SUMMARY+=("$name=skipped"); return 0
  fi
  echo "== $name (budget ${budget}s, at $((SECONDS - START))s)"
  timeout -k 10 "$budget" "$@"
  rc=$?
  [ $rc = 124 ] && echo "== $name: TIMED OUT after ${budget}s"
  echo "== $name: exit $rc after $((SECONDS - t0))s"
  SUMMARY+=("$name=$rc/$((SECONDS - t0))s")
}

main() {
  START=$SECONDS
  RESERVE_S=40
  SUMMARY=()
  echo "gpu_benchmark.sh mode=$MODE device=$DEV backbone=$BB data=$DATA started $(date -u '+%F %T UTC')"
  echo "== install"
  if ls .whl/*.whl >/dev/null 2>&1; then
    du -ch .whl/*.whl | tail -1
    if timeout -k 5 "$T_INSTALL" $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl; then
      export PYTHONPATH=$SITE:$PWD
    else
      echo "pip install of .whl/ failed"; [ "$MODE" = dry ] || return 1
      export PYTHONPATH=$PWD
    fi
  else
    echo "no .whl/*.whl (run bash scripts/gpu_benchmark.sh --wheels once, then carry .whl)"
    [ "$MODE" = dry ] || return 1
    export PYTHONPATH=$PWD
  fi
  $PY - <<'EOF2'
import importlib.metadata as md
import platform

import torch

print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for name in ("open_clip_torch", "timm", "transformers", "lightning", "torchmetrics", "hydra-core", "omegaconf",
             "hydra-joblib-launcher", "torchvision", "numpy", "psutil"):
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name} MISSING")
import hydra, omegaconf, open_clip  # the carried packages import
from packaging.version import Version
if Version(md.version("timm")) < Version("1.0.17"):  # open_clip_torch 3.3.0 asks for it (not carried: --no-deps)
    print("WARNING: timm", md.version("timm"), "< 1.0.17, which open_clip_torch 3.3.0 requires")
EOF2
  [ $? = 0 ] || echo "WARNING: the environment check failed (see above)"
  if [ "$DEV" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
    $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "no CUDA: stop"; return 1; }
  fi
  local B="$PY scripts/benchmark.py"

  # the grid's plan composes ~220 configs on one CPU core: in the background while the device parts run
  (timeout -k 5 "$T_PLAN" $B plan --grid "$GRID" >"$WORK/plan.log" 2>&1; echo "plan: exit $?" >>"$WORK/plan.log") &
  local plan_pid=$!

  part steps "$T_STEPS" $B steps --device $DEV --backbone $BB --precision bf16-mixed,32-true "${STEPS[@]}"
  part more "$T_MORE" $B steps --device $DEV --backbone $BB --precision bf16-mixed --append "${MORE[@]}"
  part limits "$T_LIMITS" $B limits --device $DEV --backbone $BB "${LIMITS[@]}"
  part share "$T_SHARE" $B share --device $DEV --backbone $BB "${SHARE[@]}"
  echo "== plan (background, budget ${T_PLAN}s): waiting at $((SECONDS - START))s"
  wait $plan_pid
  cat "$WORK/plan.log"
  RESERVE_S=0
  part project "$T_PROJECT" $B project --device $DEV --backbone $BB --precision bf16-mixed --grid "$GRID"
  part report 20 $B report

  for f in steps limits share projection; do
    [ -f "$DATA/${f}_${DEV}_${BB}.json" ] && cp "$DATA/${f}_${DEV}_${BB}.json" "$OUTDIR/"
  done
  [ -f "$PAGE" ] && cp "$PAGE" "$OUTDIR/benchmarks.md"
  echo "== done after $((SECONDS - START))s: ${SUMMARY[*]}"
  ls -l "$OUTDIR"
}

main 2>&1 | tee -a "$LOG"
