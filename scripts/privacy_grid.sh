#!/usr/bin/env bash
# The privacy–accuracy–cost grid of issue 25 (reports/privacy/guarded/grid_<model>/): on SST-2 and
# AG News at one budget, tune with every mode — plain (exact), secure softmax, secure RFA (the
# default), PrivTune's crafted noise at two η, the three GuardedTuning variants — record the
# server's view where one exists, run `secptune attack` on it, then `secptune compare --privacy`.
# Budget: CMA-ES modes get BUDGET API calls (candidate evaluations); guarded runs get EPOCHS
# passes over the same k-shot training texts (their API call is one tuning step).
# Secure columns: a SmolLM2 secure call takes minutes on a 2-core CPU, so BUDGET calls would take
# days; the column tunes the secure run's plain oracle (its approximations in float32, equal to the
# secure run within the tested tolerance) at BUDGET, measures one secure call of the same number
# of texts (K per class, test texts) for bytes/rounds/seconds, and takes its attack figures from
# the secure suite's recorded view (SECURE_VIEW; see scripts/privacy_secure_run.sh).
# guarded_online_undefended: the online split with no regulariser and 32-bit wires, GuardedTuning's
# reference for the defended settings' accuracy loss (accuracy only: no view recorded; the attacks'
# positive control on an undefended split is the dcor sweep's, scripts/guarded_sweep.sh).
# Usage: bash scripts/privacy_grid.sh   (env: MODEL TASKS BUDGET POPSIZE EPOCHS K TEST_LIMIT VIEW ONLY CALL_BATCH)
#   ONLY="plain guarded_online" runs a subset of the grid's columns (names below).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-smollm2}
TASKS=${TASKS:-sst2 agnews}
BUDGET=${BUDGET:-200}
POPSIZE=${POPSIZE:-20}
EPOCHS=${EPOCHS:-10}
K=${K:-16}
TEST_LIMIT=${TEST_LIMIT:-200}
VIEW=${VIEW:-64}
TIME_LIMIT=${TIME_LIMIT:-60}  # minutes per CMA-ES run (AG News runs are the long ones)
ETAS=${ETAS:-100 25}
RUNS=${RUNS:-/tmp/secptune-grid-runs}/$MODEL
OUT=${OUT:-reports/privacy/guarded/grid_$MODEL}
PY=${PY:-python}
ATTACK=${ATTACK:---train-texts 500 --game-pairs 100 --mlp-seconds 30 --opt-steps 150 --opt-texts 32 --search-texts $VIEW}
SECURE_VIEW=${SECURE_VIEW:-reports/privacy/secure/attacks.json}
# texts per secure forward in the measured call: SmolLM2's three processes need ~7.7 GB each for 16 AG News
# texts at once (the server was killed for memory beside other jobs on 24 GB), so 8 by default
CALL_BATCH=${CALL_BATCH:-8}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONPATH=$PWD
mkdir -p "$RUNS" "$OUT"
COLUMNS_ALL="plain secure_softmax secure_rfa $(for e in $ETAS; do echo privtune_eta$e; done) guarded_online guarded_gradfree guarded_offline guarded_online_undefended"
ONLY=${ONLY:-$COLUMNS_ALL}

common() { echo --model "$MODEL" --task "$1" --k "$K" --test-limit "$TEST_LIMIT" --quiet; }
cmaes() { echo --budget "$BUDGET" --popsize "$POPSIZE" --prompt-len 10 --intrinsic-dim 100 --time-limit "$TIME_LIMIT"; }
guarded() { echo --mode guarded --epochs "$EPOCHS" --record-view "$VIEW" --quant-bits 8; }

run() {  # NAME TASK ARGS...
  local name=$1 task=$2; shift 2
  rm -rf "${RUNS:?}/$task/$name"
  $PY -m secptune tune $(common "$task") "$@" --out "$RUNS/$task/$name"
  if [ -d "$RUNS/$task/$name/view" ]; then
    $PY -m secptune attack "$RUNS/$task/$name" $ATTACK
  fi
  mkdir -p "$OUT/$task/$name"
  for f in report.json report.md attacks.json attacks.md; do
    [ -f "$RUNS/$task/$name/$f" ] && cp "$RUNS/$task/$name/$f" "$OUT/$task/$name/" || true
  done
}

secure_call() {  # NAME TASK ATTENTION: one call's worth of texts through the MPC forward, measured
  local name=$1 task=$2 n
  n=$(( K * $($PY -c "from secptune.tasks import get_task; print(len(get_task('$task').verbalizers['causal']))") ))
  rm -rf "${RUNS:?}/$task/${name}_call"
  $PY -m secptune infer --mode secure --attention "$3" --model "$MODEL" --task "$task" --limit "$n" --batch-size "$CALL_BATCH" \
    --prompt-len 10 --peer-timeout 1800 --out "$RUNS/$task/${name}_call" > /dev/null
  cp "$RUNS/$task/${name}_call/result.json" "$OUT/$task/$name/secure_call.json"
}

for task in $TASKS; do
  for col in $ONLY; do
    case $col in
      plain) run plain "$task" --mode plain --exact $(cmaes) ;;
      secure_softmax|secure_rfa) run "$col" "$task" --mode plain --precision float32 --attention "${col#secure_}" $(cmaes)
                                 secure_call "$col" "$task" "${col#secure_}" ;;
      privtune_eta*) run "$col" "$task" --mode privtune --noise privtune --eta "${col#privtune_eta}" \
                       --record-view "$VIEW" $(cmaes) ;;
      guarded_online) run guarded_online "$task" $(guarded) --variant online --dcor "${DCOR:-0.5}" ;;
      guarded_gradfree) run guarded_gradfree "$task" $(guarded) --variant gradfree --dcor "${DCOR:-0.5}" ;;
      guarded_offline) run guarded_offline "$task" $(guarded) --variant offline --dcor "${DCOR:-0.5}" ;;
      guarded_online_undefended) run "$col" "$task" --mode guarded --epochs "$EPOCHS" --quant-bits 32 --variant online --dcor 0 ;;
      *) echo "unknown column $col" >&2; exit 2 ;;
    esac
  done
done
$PY -m secptune compare --privacy $(for t in $TASKS; do for c in $ONLY; do
  [ -f "$OUT/$t/$c/report.json" ] && echo "$OUT/$t/$c"; done; done) --out "$OUT" --secure-view "$SECURE_VIEW"
