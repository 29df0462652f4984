#!/usr/bin/env bash
# The paper-budget CIFAR-10 runs (docs/results.md, "CIFAR-10 at the paper's budget"), spread over
# as many stretches of work as it takes: each call starts or resumes (--resume) every listed run
# in turn, at low priority on one thread, checkpointing every few minutes into results/cifar10
# (committed: any clone resumes them). Finished runs are skipped by the runner.
#
#   benchmarks/cifar10_paper_runs.sh METHOD:SEED [METHOD:SEED ...]
#   e.g. benchmarks/cifar10_paper_runs.sh gnvpro-stochastic:0 gn-stochastic:0 &
#        benchmarks/cifar10_paper_runs.sh sgd:0 lbfgs-vpro-stochastic:0 &
#
# Run at most one Gauss-Newton-type run (gnvpro-, gn-stochastic) at a time on a 24 GB machine.
# Environment: OUT (results/cifar10), GNVPRO (.venv/bin/gnvpro), CHECKPOINT_EVERY (240 s),
# RETRIES (5) and RETRY_PAUSE (300 s) for a run the kernel killed.
# SIGINT/SIGTERM to this script stop the current run with a checkpoint (the runner's own signal
# handling) and end the script. results/cifar10/parts.log gets one line per stretch: start and
# stop time, run, commit, host, exit status (130/143: stopped by a signal, resumable).
set -u
cd "$(dirname "$0")/.."
# Under memory pressure the kernel is to kill these runs (they resume from their checkpoints),
# never a test or the user's shell: a paper-budget GN run holds ~12 GB (a 10000-image sub-batch).
echo 1000 > /proc/self/oom_score_adj 2>/dev/null || true
OUT=${OUT:-results/cifar10}
GNVPRO=${GNVPRO:-.venv/bin/gnvpro}
mkdir -p "$OUT/logs"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain -- src 2>/dev/null)" ] || commit="$commit+dirty"
child=0
stop() { [ "$child" -ne 0 ] && kill -"$1" "$child" 2>/dev/null; stopped=1; }
stopped=0
trap 'stop TERM' INT  # a background child ignores SIGINT: forward TERM
trap 'stop TERM' TERM
run_one() {  # method seed -> the runner's exit status (resumes when the run directory exists)
  local method=$1 seed=$2 start rc resume=()
  [ -d "$OUT/$method/seed-$seed" ] && resume=(--resume)
  start=$(date -u +%FT%TZ)
  OMP_NUM_THREADS=1 nice -n 19 "$GNVPRO" run cifar10 --methods "$method" --seeds "$seed" \
    --out "$OUT" --threads 1 --checkpoint-every "${CHECKPOINT_EVERY:-240}" --no-progress \
    "${resume[@]}" >> "$OUT/logs/$method-seed-$seed.log" 2>&1 &
  child=$!
  while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done
  wait "$child" 2>/dev/null; rc=${rc:-$?}
  child=0
  echo "$start $(date -u +%FT%TZ) $method seed-$seed commit=$commit host=$(hostname) rc=$rc" \
    >> "$OUT/parts.log"
  return "$rc"
}

# A run killed from outside (137: SIGKILL, usually the kernel's out-of-memory killer) is retried
# from its checkpoint after a pause, up to RETRIES times; any other failure ends the chain (the
# next run would meet the same problem); 0 moves on to the next run.
for item in "$@"; do
  method=${item%%:*}; seed=${item##*:}
  for attempt in $(seq 0 "${RETRIES:-5}"); do
    run_one "$method" "$seed"; rc=$?
    [ "$stopped" -eq 1 ] && exit "$rc"
    [ "$rc" -eq 137 ] || break
    sleep "${RETRY_PAUSE:-300}"
    [ "$stopped" -eq 1 ] && exit 143
  done
  [ "$rc" -eq 0 ] || exit "$rc"
done
