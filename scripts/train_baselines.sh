#!/usr/bin/env bash
# Train the six baselines on the networks' folds: the real-brain cohort of scripts/train_demo.sh,
# its standard-space preprocessing at 32x40x32 voxels of 5 mm (the tensor cache the networks filled
# is reused: same settings, same cache key), the networks' splits file (--splits, copied byte for
# byte), the same class-balanced batches, healthy-mean input reference and scanner augmentation,
# Adam 1e-3 with a cosine schedule, fold 0 shipped. Nothing is pretrained. Only the epochs differ,
# sized so all six fit in about 60 minutes on 2 CPU cores (see EPOCHS_* below and the timing in
# the commit message / report). Usage:
#   DATA=/work/runs SPLITS=/work/runs/out/mc3/benchmarks/mc3.splits.json \
#     OUT=/work/runs/out/baselines scripts/train_baselines.sh
# Outputs $OUT/<method>/{<method>.safetensors,<method>.json,benchmarks/<method>.json,...}. Publish:
# benchmarks into weights/benchmarks/, cards (and weights under 10 MB: the card says which) into
# weights/baselines/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA=${DATA:?set DATA to the folder holding cohort/ and the caches}
SPLITS=${SPLITS:?set SPLITS to the splits file of the networks, benchmarks/ARCH.splits.json}
OUT=${OUT:-weights/baselines-run}
# Epochs per method (the networks ran 12, patience 8; mc3 took 1,240 s for 3 folds of 6 epochs:
# about 69 s per epoch of 233 training + 41 validation volumes, 17.8 GFLOPs per volume). Sizing by
# forward GFLOPs per volume at 32x40x32 (FlopCounterMode): cnn_lstm 0.21, conv_ae 0.009 (0.03 to
# reconstruct), cnn3d_small 0.28, resnet18_2d 3.4, googlenet_2d 2.1; assumed a third of mc3's
# throughput for these small or 2D convolutions plus about 10 s per epoch of loading and
# augmentation: about 15, 10 (x2 phases), 15, 50 and 45 s per epoch, so (3 folds) about 9, 12, 9,
# 15 and 9 minutes, hog_svm about 1: some 55 minutes in all. Measured on an idle 2-core AMD EPYC
# (AVX512-BF16, no AMX), 2026-12-03: hog_svm 43 s, cnn3d_small 175, conv_ae 249, cnn_lstm 193,
# resnet18_2d 442, googlenet_2d 255 (the line "<method>: N s" on stderr): 22.6 minutes for all six.
EPOCHS_cnn_lstm=${EPOCHS_cnn_lstm:-12}
EPOCHS_conv_ae=${EPOCHS_conv_ae:-12}         # 12 autoencoder epochs, then 12 for the classifier
EPOCHS_cnn3d_small=${EPOCHS_cnn3d_small:-12}
EPOCHS_resnet18_2d=${EPOCHS_resnet18_2d:-6}
EPOCHS_googlenet_2d=${EPOCHS_googlenet_2d:-4}
for method in ${METHODS:-hog_svm cnn3d_small conv_ae cnn_lstm resnet18_2d googlenet_2d}; do
  var="EPOCHS_$method"
  epochs=${!var:-1}  # hog_svm: no epochs (one fit per fold)
  start=$(date +%s)
  "$PY" train.py --arch "$method" --manifest "$DATA/cohort/manifest.csv" --data-dir "$DATA" \
    --splits "$SPLITS" --folds 3 --epochs "$epochs" --batch-size 8 --lr 1e-3 --spacing 5 \
    --input-shape 32 40 32 --percentiles 0.5 100 --augment scanner --balanced \
    --healthy-reference --ship-fold 0 --out "$OUT/$method" "$@"
  echo "$method: $(( $(date +%s) - start )) s" >&2
done
