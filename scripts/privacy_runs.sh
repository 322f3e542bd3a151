#!/usr/bin/env bash
# The privacy figures of issue 24 (reports/privacy/): SmolLM2 split runs with a recorded
# server view, then `secptune attack` on each.  Views stay in $RUNS (tens of MB each); the
# reports (result/report.json, attacks.json, attacks.md) are copied into reports/privacy/NAME.
# Usage: bash scripts/privacy_runs.sh CHAIN   (CHAIN: controls | perCall | sweep | privtune | tuned | tunedSecure | attack NAME...)
# `tuned` tunes a prompt through each AG News mechanism of `sweep` and `privtune` at one budget (env: K BUDGET
# POPSIZE TEST_LIMIT JOBS; JOBS runs in parallel, one thread each) and keeps its report as NAME/tuned.json.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-/tmp/secptune-privacy-runs}
PY=${PY:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONPATH=$PWD
mkdir -p "$RUNS" reports/privacy

infer() {  # NAME TASK LIMIT ARGS...
  local name=$1 task=$2 limit=$3; shift 3
  rm -rf "${RUNS:?}/$name"
  $PY -m secptune infer --mode privtune --model smollm2 --task "$task" --limit "$limit" \
    --record-view "$limit" --out "$RUNS/$name" "$@"
}

attack() {  # NAME ARGS...
  local name=$1; shift
  $PY -m secptune attack "$RUNS/$name" "$@"
  mkdir -p "reports/privacy/$name"
  cp "$RUNS/$name"/attacks.json "$RUNS/$name"/attacks.md "reports/privacy/$name/"
  for f in result.json report.json report.md; do
    [ -f "$RUNS/$name/$f" ] && cp "$RUNS/$name/$f" "reports/privacy/$name/" || true
  done
}

case ${1:?chain} in
  controls)  # positive control (split 0, no noise) and split layer 2 without noise, SST-2
    infer sst2_split0_inf sst2 200 --split-layer 0 --eta inf && attack sst2_split0_inf
    infer sst2_split2_inf sst2 200 --split-layer 2 --eta inf && attack sst2_split2_inf
    ;;
  perCall)  # eta 25, fresh noise on every call: 64 tuning calls release each training text 64 times
    rm -rf "${RUNS:?}/sst2_split0_eta25_percall"
    $PY -m secptune tune --mode privtune --model smollm2 --task sst2 --k 8 --popsize 2 --budget 128 \
      --prompt-len 5 --intrinsic-dim 50 --test-limit 32 --eta 25 --release per-call --record-view 16 \
      --out "$RUNS/sst2_split0_eta25_percall" --quiet
    attack sst2_split0_eta25_percall --train-texts 500
    ;;
  sweep)  # isotropic dχ at split 0 on AG News (zero-shot accuracy is the utility figure)
    for eta in inf 200 100 50 25; do
      infer "agnews_split0_dchi_eta$eta" agnews 200 --split-layer 0 --noise dchi --eta "$eta"
      attack "agnews_split0_dchi_eta$eta"
    done
    ;;
  privtune)  # PrivTune's crafted noise at split 0 on AG News
    for eta in ${ETAS:-inf 100 50 25}; do
      infer "agnews_split0_privtune_eta$eta" agnews 200 --split-layer 0 --noise privtune --eta "$eta"
      attack "agnews_split0_privtune_eta$eta"
    done
    ;;
  tuned)  # tuned accuracy at one budget through each mechanism (η = inf: the plain split, i.e. no noise)
    tune_one() {  # NAME NOISE ETA
      local name=$1 noise=$2 eta=$3 dir="$RUNS/tuned_$1"
      rm -rf "${dir:?}"
      $PY -m secptune tune --mode privtune --model smollm2 --task agnews --split-layer 0 --noise "$noise" --eta "$eta" \
        --k "${K:-4}" --budget "${BUDGET:-60}" --popsize "${POPSIZE:-6}" --prompt-len 10 --intrinsic-dim 100 \
        --test-limit "${TEST_LIMIT:-200}" --out "$dir" --quiet > "$dir.log" 2>&1
      mkdir -p "reports/privacy/$name"
      cp "$dir/report.json" "reports/privacy/$name/tuned.json"
      cp "$dir/report.md" "reports/privacy/$name/tuned.md"
    }
    export -f tune_one; export PY RUNS K BUDGET POPSIZE TEST_LIMIT
    # one "NAME NOISE ETA" per line; SPECS replaces the list (η = inf with either noise is the same plain split)
    printf '%s\n' "${SPECS:-agnews_split0_dchi_etainf dchi inf
agnews_split0_privtune_eta25 privtune 25
agnews_split0_dchi_eta200 dchi 200
agnews_split0_dchi_eta100 dchi 100
agnews_split0_dchi_eta50 dchi 50
agnews_split0_dchi_eta25 dchi 25
agnews_split0_privtune_eta50 privtune 50
agnews_split0_privtune_eta100 privtune 100}" \
      | xargs -P "${JOBS:-2}" -I{} bash -c 'tune_one {}'
    ;;
  tunedSecure)  # the secure mode's tuned accuracy at the same budget: its plain oracle (float32, the secure run's
    # approximations, default attention), which the secure run equals within the tested fixed-point tolerance
    dir="$RUNS/tuned_agnews_secure_oracle"; rm -rf "${dir:?}"
    $PY -m secptune tune --mode plain --precision float32 --model smollm2 --task agnews --k "${K:-4}" \
      --budget "${BUDGET:-60}" --popsize "${POPSIZE:-6}" --prompt-len 10 --intrinsic-dim 100 \
      --test-limit "${TEST_LIMIT:-200}" --out "$dir" --quiet
    mkdir -p reports/privacy/secure
    cp "$dir/report.json" reports/privacy/secure/tuned_agnews_oracle.json
    cp "$dir/report.md" reports/privacy/secure/tuned_agnews_oracle.md
    ;;
  attack)  # re-run the suite on recorded views: bash scripts/privacy_runs.sh attack NAME...
    for name in "${@:2}"; do attack "$name"; done
    ;;
  *) echo "unknown chain $1" >&2; exit 2 ;;
esac
