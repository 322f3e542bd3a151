#!/usr/bin/env bash
# Issue 26's tuned-accuracy measurement on SmolLM2 (k 16, seed 42, BBT's search: prompt 50, d 500,
# popsize 20, alpha 1; one budget per task): three configurations tuned with the same search —
#   exact    the unmodified model (transformers, float32),
#   softmax  the secure run's approximations with softmax everywhere (float32; research/f32_oracle.py
#            checks float32 against the float64 oracle),
#   rfa      the secure run's default: the server's RFA layers, softmax elsewhere (float32),
# each tuned prompt tested on the first TEST test examples; then the SST-2 rfa prompt scored in secure
# mode on 100 test sentences beside its float64 oracle.  Every run is resumable: call again with the
# same WORK to continue (each call gives each unfinished run MINUTES more).  Runs go JOBS at a time.
# Usage: bash scripts/rfa_accuracy.sh WORK MINUTES [cpu|cuda]
#   (env: MODEL SST2_BUDGET AGNEWS_BUDGET PROMPT_LEN TEST JOBS SECURE_CHECK (0: no secure check, which
#    takes both cores for ~40+ min on a 2-core CPU); each run's log: WORK/NAME.log;
#    RUNS: the runs to make, e.g. "sst2-rfa sst2-exact" (unset: all six, SST-2 first; empty: none, e.g. only the secure check);
#    THREADS: torch threads per run, e.g. 1 with JOBS=2 on a 2-core machine)
# then: python -m research.rfa_accuracy WORK   (writes reports/rfa_accuracy.json)
set -u
WORK=${1:?usage: rfa_accuracy.sh WORK MINUTES [cpu|cuda]}
MINUTES=${2:?usage: rfa_accuracy.sh WORK MINUTES [cpu|cuda]}
DEVICE=${3:-cpu}
PY=${PYTHON:-python}
MODEL=${MODEL:-smollm2}
SST2_BUDGET=${SST2_BUDGET:-1500}    # the H100 run gained +7.4 (alpha 0.1) to +10 points (alpha 1) by 1,500
AGNEWS_BUDGET=${AGNEWS_BUDGET:-600}
PROMPT_LEN=${PROMPT_LEN:-50}
TEST=${TEST:-500}
JOBS=${JOBS:-1}
SECURE_CHECK=${SECURE_CHECK:-100}
RUNS=${RUNS-sst2-exact sst2-softmax sst2-rfa agnews-exact agnews-softmax agnews-rfa}
[ -n "${THREADS:-}" ] && export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
mkdir -p "$WORK/tune"

finished() {  # RUN_DIR: the report says the whole budget ran
  [ -f "$1/report.json" ] && $PY -c "import json,sys; r=json.load(open(sys.argv[1])); \
sys.exit(0 if r['totals']['api_calls'] >= r['config']['budget'] else 1)" "$1/report.json"
}

tune() {  # NAME TASK BUDGET FLAGS...
  local name=$1 task=$2 budget=$3 out="$WORK/tune/$1"; shift 3
  finished "$out" && return 0
  $PY -m secptune tune --model "$MODEL" --task "$task" --k 16 --seed 42 --prompt-len "$PROMPT_LEN" --intrinsic-dim 500 \
    --popsize 20 --alpha 1 --budget "$budget" --test-limit "$TEST" --device "$DEVICE" --time-limit "$MINUTES" \
    --quiet --out "$out" $([ -f "$out/checkpoint.pt" ] && echo --resume) "$@" >>"$WORK/$name.log" 2>&1 ||
    echo "rfa_accuracy: $name failed: $(tr '\r' '\n' <"$WORK/$name.log" | grep -v '^[[:space:]]*$' | tail -n 1)" >&2  # not a progress bar's redraws
}

running=0
for name in $RUNS; do
  task=${name%-*} config=${name#*-}
  budget=$SST2_BUDGET; [ "$task" = agnews ] && budget=$AGNEWS_BUDGET
  case $config in
    exact) flags="--mode plain --exact" ;;
    softmax) flags="--mode plain --precision float32 --attention softmax" ;;
    rfa) flags="--mode plain --precision float32" ;;  # no --attention: the default (the server's RFA layers)
    *) echo "rfa_accuracy: unknown run $name (TASK-exact|softmax|rfa)" >&2; continue ;;
  esac
  # shellcheck disable=SC2086
  tune "$name" "$task" "$budget" $flags &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then wait -n; running=$((running - 1)); fi
done
wait

prompt="$WORK/tune/sst2-rfa/prompt.pt"
if [ "$SECURE_CHECK" -gt 0 ] && finished "$WORK/tune/sst2-rfa" && [ ! -f "$WORK/secure_check/result.json" ]; then
  for mode in plain secure; do  # plain: the float64 oracle the secure run is tested against
    $PY -m secptune infer --mode "$mode" --model "$MODEL" --task sst2 --prompt "$prompt" --limit "$SECURE_CHECK" \
      --batch-size 8 --peer-timeout 1800 --out "$WORK/${mode/plain/oracle}_check" >>"$WORK/secure_check.log" 2>&1
  done
fi
echo "rfa_accuracy: this call is done ($(date -u +%H:%M:%S)); python -m research.rfa_accuracy $WORK writes the report"
