#!/usr/bin/env bash
# The forgetting study (issue 22), run alone on the 2-core CPU, in four sweeps under one folder:
#   experiments/forgetting_real_base/run.sh [OUT [PART ...]]   (OUT default /work/runs/22/study;
#   PART: 1_core 2_controls 3_lr 4_layout report; default all, in that order)
# 1 core: block expansion (8 blocks) and full fine-tuning (lr 2e-4), seeds 0-2
# 2 controls: LoRA with block expansion's trainable count, the in-place control, seed 0
# 3 lr: full fine-tuning at lr 2e-5 (LR_SEEDS, default 0,1,2)
# 4 layout claims: 4 and 16 interleaved blocks, top and bottom stacking, seed 0, half budget
# then the report. Every sweep's load average and wall time go to OUT/times.log.
set -euo pipefail
OUT=${1:-/work/runs/22/study}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
sweep() {  # sweep NAME OVERRIDES...
  local name=$1
  shift
  echo "$name start $(date -Is) $(uptime)" >>"$OUT/times.log"
  "$PY" -m lp.train -m experiment=forgetting_real_base hydra.sweep.dir="$OUT/$name" "$@" \
    >"$OUT/$name.log" 2>&1 || echo "$name FAILED (see $name.log)" >>"$OUT/times.log"
  echo "$name end $(date -Is) $(uptime)" >>"$OUT/times.log"
}
shift || true
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(1_core 2_controls 3_lr 4_layout report)
for part in "${parts[@]}"; do
  case $part in
    1_core) sweep 1_core 'seed=0,1,2' '+variant=add_8,full_finetune' ;;
    2_controls) sweep 2_controls 'seed=0' '+variant=lora_matched,in_place_8' ;;
    3_lr) sweep 3_lr "seed=${LR_SEEDS:-0,1,2}" '+variant=full_finetune_lr2e-5' ;;  # LR_SEEDS=0: one seed
    4_layout) sweep 4_layout 'seed=0' '+variant=add_4,add_16,suffix_8,prefix_8' trainer.max_steps=50 ;;
    report) "$PY" -m lp.report "$OUT" --out "$OUT/report" ;;
    *) echo "unknown part $part" >&2 && exit 2 ;;
  esac
done
