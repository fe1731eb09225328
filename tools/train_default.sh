#!/usr/bin/env bash
# Train the shipped default model end to end on this machine: backbone pre-training, then TC-MoA
# training; each stage resumes exactly from its last checkpoint when run again.
#
#   nohup nice -n 5 tools/train_default.sh > runs/train_default.log 2>&1 &
#   tcmoa export-default runs/train_small          # ship the latest checkpoint (see docs/model-card.md)
#
# The code runs from a copy taken at start (runs/train_default_src), so editing the checkout
# while it trains cannot change a run half-way.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
SRC=runs/train_default_src
if [ ! -d "$SRC" ]; then
    mkdir -p "$SRC.tmp"
    cp -r tcmoa pipeline "$SRC.tmp"/
    mv "$SRC.tmp" "$SRC"
fi
export PYTHONPATH="$PWD/$SRC"
[ -d runs/photos/rasters ] || "$PY" tools/raster_photos.py ../shared/data/satellite runs/photos/rasters
"$PY" -m pipeline.cli pretrain jobs/pretrain_small.yaml
"$PY" -m pipeline.cli train jobs/train_small.yaml
