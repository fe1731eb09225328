#!/usr/bin/env bash
# Train the shipped default model end to end on this machine: backbone pre-training, then TC-MoA
# training; each stage resumes exactly from its last checkpoint when run again.
#
#   nohup nice -n 5 tools/train_default.sh [TRAIN_CONFIG] > runs/train_default.log 2>&1 &
#   tcmoa export runs/train_small_guided -o weights.safetensors   # the newest weights, any time
#
# TRAIN_CONFIG defaults to jobs/train_small_guided.yaml. The code runs from a copy taken at the
# first start for that config (runs/src_<config name>), so editing the checkout while it trains
# cannot change a run half-way.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
TRAIN_CONFIG=${1:-jobs/train_small_guided.yaml}
SRC=runs/src_$(basename "$TRAIN_CONFIG" .yaml)
if [ ! -d "$SRC" ]; then
    mkdir -p "$SRC.tmp"
    cp -r tcmoa pipeline "$SRC.tmp"/
    mv "$SRC.tmp" "$SRC"
fi
export PYTHONPATH="$PWD/$SRC"
[ -d runs/photos/rasters ] || "$PY" tools/raster_photos.py ../shared/data/satellite runs/photos/rasters
"$PY" -m pipeline.cli pretrain jobs/pretrain_small.yaml
"$PY" -m pipeline.cli train "$TRAIN_CONFIG"
