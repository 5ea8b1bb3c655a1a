#!/usr/bin/env bash
# Generalisation check of the shipped weights: a NEW synthetic cohort (another seed than the
# training cohort's 2024, same "small" preset, 30 volumes per class) scored with
# `python -m tumortrace evaluate`; one JSON report per network in weights/benchmarks/heldout/.
# Then refresh the README's results section with scripts/results_table.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SEED=${SEED:-11}
COHORT=data/heldout-small-seed$SEED
[ -f "$COHORT/manifest.csv" ] || "$PY" -m tumortrace synth --out "$COHORT" --n-per-class 30 --seed "$SEED" --size small
mkdir -p weights/benchmarks/heldout
for arch in ${ARCHS:-mc3 r2plus1d r3d}; do
  "$PY" -m tumortrace evaluate --weights "weights/$arch.json" --manifest "$COHORT/manifest.csv" \
    --format json > "weights/benchmarks/heldout/$arch.json.tmp"
  mv "weights/benchmarks/heldout/$arch.json.tmp" "weights/benchmarks/heldout/$arch.json"
done
