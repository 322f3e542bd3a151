#!/usr/bin/env bash
# The GPU measurements behind BENCHMARKS.md (issues 3 and 4), all at once on one CUDA GPU:
#   * plain CMA-ES tuning of SmolLM2 on the five tasks with BBT's settings (prompt 50, d 500,
#     popsize 20, budget 8000, k 16, seed 42; full test sets), SST-2 and AG News also at alpha 0.1;
#   * research/rfa_layers.py: the server's choice of RFA layers (first call), then tuning against it.
# Every run is resumable: a second call with the same WORK directory continues them (--resume).
# Usage (from the repository root): scripts/gpu_campaign.sh WORK MINUTES   (MINUTES: time limit of each
# tuning run in this call)
set -u
WORK=${1:?usage: gpu_campaign.sh WORK MINUTES}
MINUTES=${2:?usage: gpu_campaign.sh WORK MINUTES}
PY=${PYTHON:-python3}
mkdir -p "$WORK/tune"
resume() { [ -f "$1/checkpoint.pt" ] && echo --resume; }

tune() {  # tune NAME TASK [extra flags]
  local name=$1 task=$2; shift 2
  local out="$WORK/tune/$name"
  $PY -m secptune tune --task "$task" --mode plain --exact --device cuda --k 16 --seed 42 \
      --prompt-len 50 --intrinsic-dim 500 --popsize 20 --budget 8000 --time-limit "$MINUTES" \
      --quiet --out "$out" $(resume "$out") "$@" >>"$WORK/tune-$name.log" 2>&1 &
}

for task in sst2 agnews mrpc rte yelp; do tune "$task" "$task"; done
tune sst2-alpha0.1 sst2 --alpha 0.1
tune agnews-alpha0.1 agnews --alpha 0.1
# the RFA sweep first; a later call tunes against its choice
$PY -m research.rfa_layers --device cuda --out "$WORK/rfa_layers.json" $([ -f "$WORK/rfa_layers.json" ] && echo --tune 2000 --tune-minutes "$(awk "BEGIN {print $MINUTES / 2.5}")") \
    >>"$WORK/rfa_layers.log" 2>&1 &
wait
echo "campaign: done ($(date -u +%H:%M:%S))"
