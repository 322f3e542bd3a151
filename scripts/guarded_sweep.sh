#!/usr/bin/env bash
# Issue 25's GuardedTuning figures (reports/privacy/guarded/sweep/): the --dcor sweep of Online and
# Gradfree at 8 bits, the undefended split (online, dcor 0, 32-bit: the positive control), the 8-bit
# counterpart for the byte cut, and Offline; each run's view attacked with `secptune attack`; then
# research/guarded_figures.py writes sweep.json / sweep.md / sweep.png and the compare table + tradeoff.png.
# Usage: bash scripts/guarded_sweep.sh [NAME ...]   (env: MODEL TASK K TEST_LIMIT EPOCHS LR VIEW SEARCH_ONLY)
# SEARCH_ONLY=1: tune and attack nothing anew; add the exhaustive search's figures to each existing run's
# attacks.json (`secptune attack RUN --search-only`), then copy and assemble as usual.
# NAME: <variant>_d<dcor>_b<bits>, e.g. online_d0_b32; without names, the default grid below.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-tiny-llama}
TASK=${TASK:-sst2}
K=${K:-16}
TEST_LIMIT=${TEST_LIMIT:-100}
EPOCHS=${EPOCHS:-6}
LR=${LR:-3e-3}
VIEW=${VIEW:-24}
RUNS=${RUNS:-/tmp/secptune-guarded-runs}/$MODEL-$TASK
OUT=${OUT:-reports/privacy/guarded/sweep}
PY=${PY:-python}
ATTACK=${ATTACK:---train-texts 300 --game-pairs 30 --mlp-seconds 15 --opt-steps 100 --opt-texts 16 --search-texts $VIEW}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONPATH=$PWD
DEFAULT="online_d0_b32 online_d0_b8 gradfree_d1_b8 online_d1_b8 gradfree_d4_b8 online_d4_b8 gradfree_d0_b8 offline_d1_b8"
mkdir -p "$RUNS" "$OUT"
for name in ${@:-$DEFAULT}; do
  variant=${name%%_*}; rest=${name#*_d}; dcor=${rest%%_b*}; bits=${rest#*_b}
  if [ "${SEARCH_ONLY:-0}" = 1 ]; then
    $PY -m secptune attack "$RUNS/$name" --train-texts 300 --search-texts "$VIEW" --search-only
  else
    rm -rf "${RUNS:?}/$name"
    $PY -m secptune tune --mode guarded --variant "$variant" --dcor "$dcor" --quant-bits "$bits" --model "$MODEL" \
      --task "$TASK" --k "$K" --test-limit "$TEST_LIMIT" --epochs "$EPOCHS" --lr "$LR" --harden-steps 200 \
      --record-view "$VIEW" --out "$RUNS/$name" --quiet
    $PY -m secptune attack "$RUNS/$name" $ATTACK
  fi
  mkdir -p "$OUT/$name"
  cp "$RUNS/$name"/report.json "$RUNS/$name"/report.md "$RUNS/$name"/attacks.json "$RUNS/$name"/attacks.md "$OUT/$name/"
done
$PY -m research.guarded_figures "$OUT"
