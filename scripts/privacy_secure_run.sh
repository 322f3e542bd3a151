#!/usr/bin/env bash
# The secure column of the privacy figures (issue 24): a SmolLM2 SST-2 secure run that records
# the server's view, the unprotected split on the same texts (positive control), and
# `secptune attack` on both; reports go to reports/privacy/secure/ (and sst2_split0_inf_same/).
# Usage: N=96 bash scripts/privacy_secure_run.sh [control|secure|attack|all]
# Time limits: the secure call 40 min, the suite 25 min (2-core CPU, three processes).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-/tmp/secptune-privacy-runs}
PY=${PY:-python}
N=${N:-96}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONPATH=$PWD
mkdir -p "$RUNS" reports/privacy/secure reports/privacy/sst2_split0_inf_same

control() {
  rm -rf "${RUNS:?}/sst2_split0_inf_same"
  $PY -m secptune infer --mode privtune --model smollm2 --task sst2 --limit "$N" --split-layer 0 --eta inf \
    --record-view "$N" --out "$RUNS/sst2_split0_inf_same"
  $PY -m secptune attack "$RUNS/sst2_split0_inf_same" --train-texts 500 --game-pairs 300 --mlp-seconds 30
  cp "$RUNS/sst2_split0_inf_same"/{attacks.json,attacks.md,result.json} reports/privacy/sst2_split0_inf_same/
}

secure() {
  rm -rf "${RUNS:?}/sst2_secure"
  timeout 40m $PY -m secptune infer --mode secure --model smollm2 --task sst2 --limit "$N" --record-view "$N" \
    --out "$RUNS/sst2_secure"
  cp "$RUNS/sst2_secure/result.json" "$RUNS/sst2_secure/view/view.json" reports/privacy/secure/
}

attack() {
  timeout 25m $PY -m secptune attack "$RUNS/sst2_secure" --train-texts "${TRAIN:-64}" --game-pairs "${PAIRS:-64}" \
    --mlp-seconds 60 --control "$RUNS/sst2_split0_inf_same" --report-dir reports/privacy/secure
}

case ${1:-all} in
  control) control ;;
  secure) secure ;;
  attack) attack ;;
  all) control && secure && attack ;;
  *) echo "usage: $0 [control|secure|attack|all]" >&2; exit 2 ;;
esac
