#!/usr/bin/env bash
# Train the shipped demo weights: all three networks on one identical budget, 3-fold cross-validation
# grouped by base brain, on the real-brain cohort that scripts/build_cohort.py writes (150 real IXI
# healthy T1 scans as they are, the same brains with a synthetic HGG lesion, 43 with an LGG lesion:
# the seed paper's 260:74:260 proportions) through the standard-space pipeline, at 32x40x32 voxels of
# 5 mm (the brain-only template box). Intensities are clipped at the 0.5th percentile only
# (--percentiles 0.5 100) so the enhancing rim stays brighter than white matter; each network
# subtracts the mean healthy input of its fold's training part (--healthy-reference); batches are
# class-balanced; scanner-variation augmentation; Adam 1e-3 with a cosine schedule, 6 epochs (what
# fits about an hour for all three on a 2-core AMD EPYC with AVX512-BF16 and no AMX: 1.5-2 s per batch
# of 8; the shipped run took 20.6 / 14.4 / 19.2 min for MC3 / R3D / R(2+1)D); the network of fold 0
# is shipped. Usage (DATA is the folder holding cohort/ and the caches):
#   DATA=/work/runs OUT=/work/runs/out scripts/train_demo.sh
# Outputs $OUT/<arch>/{<arch>.safetensors,<arch>.json,benchmarks/<arch>.json,...}.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA=${DATA:-data}
OUT=${OUT:-weights}
for arch in ${ARCHS:-mc3 r3d r2plus1d}; do
  "$PY" train.py --arch "$arch" --manifest "$DATA/cohort/manifest.csv" --data-dir "$DATA" \
    --folds 3 --epochs 6 --batch-size 8 --lr 1e-3 --spacing 5 --input-shape 32 40 32 \
    --percentiles 0.5 100 --augment scanner --balanced --healthy-reference --ship-fold 0 \
    --out "$OUT/$arch" "$@"
done
