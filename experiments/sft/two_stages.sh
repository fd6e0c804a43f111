#!/usr/bin/env bash
# LLaMA Pro's two stages on the default base: stage one (SmolLM2-135M expanded, new blocks
# post-pretrained on the offline code/math mixture), then stage two, instruction tuning of every
# block on the generated chat set, starting from stage one's export. Small budgets for a 2-core CPU.
#   experiments/sft/two_stages.sh [OUT]        (OUT: where runs go; default /tmp/lp-sft)
set -euo pipefail
OUT=${1:-/tmp/lp-sft}
PY=${PY:-.venv/bin/python}
STEPS1=${STEPS1:-6}
STEPS2=${STEPS2:-10}
nice -n 15 "$PY" -m lp.train hydra.run.dir="$OUT/stage1" trainer.max_steps="$STEPS1" \
  trainer.val_check_interval="$STEPS1" callbacks.checkpoint.enabled=false
nice -n 15 "$PY" -m lp.train stage=sft model=hf model.name_or_path="$OUT/stage1/export" \
  hydra.run.dir="$OUT/stage2" trainer.max_steps="$STEPS2" trainer.val_check_interval="$STEPS2" \
  data.eval_tokens=2048 callbacks.checkpoint.enabled=false
"$PY" experiments/sft/summary.py "$OUT/stage2"
