#!/usr/bin/env bash
# Paper-budget Fashion-MNIST runs on one CUDA GPU (docs/results.md), after the CUDA tests and a
# smoke run. Needs python3 with torch (CUDA), numpy, scipy, matplotlib, tqdm, pytest; the package
# runs from src/ (no install).
#
#   benchmarks/gpu_image_runs.sh FMNIST_DIR OUT_DIR
#
# Environment: SEED0_S / EXTRA_S (time limits of the seed-0 run of all four sub-batch/SGD methods
# and of the extra seeds 1-2 of gnvpro-stochastic and SGD; defaults 280 / 120), DEVICE (cuda).
# OUT_DIR/fm holds the runs (summary.json merges the invocations); OUT_DIR/fm.tgz packs them.
set -u
FM=$1
OUT=$2
DEVICE=${DEVICE:-cuda}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
run() { python3 -m gnvpro_experiments.cli "$@"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_inner.py \
    -k "cuda" 2>&1 | tail -4
# smoke: every method once at a tiny budget; stop here if anything fails
timeout 60 python3 -m gnvpro_experiments.cli run fashion-mnist --device "$DEVICE" --data "$FM" \
    --subset 500 --epochs 1 --budget-scale 0.1 --out "$OUT/smoke" --no-progress \
    --methods gnvpro-stochastic,gn-stochastic,lbfgs-vpro-stochastic,sgd || exit 1
rm -rf "$OUT/smoke"

methods=gnvpro-stochastic,gn-stochastic,sgd,lbfgs-vpro-stochastic
timeout "${SEED0_S:-280}" python3 -m gnvpro_experiments.cli run fashion-mnist --device "$DEVICE" \
    --data "$FM" --seeds 0 --methods "$methods" --out "$OUT/fm" --no-progress
timeout "${EXTRA_S:-120}" python3 -m gnvpro_experiments.cli run fashion-mnist --device "$DEVICE" \
    --data "$FM" --seeds 1,2 --methods gnvpro-stochastic,sgd --out "$OUT/fm" --no-progress
run report "$OUT/fm" > /dev/null
rm -f "$OUT"/fm/*/seed-*/model.pt
tar czf "$OUT/fm.tgz" -C "$OUT" fm
cat "$OUT/fm/report.md"
