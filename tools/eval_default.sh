#!/usr/bin/env bash
# Score model weights against the three classical baselines on the dev splits, per task, with the
# issue's headline metrics, in both reconstruction modes (NAME-decoder, NAME-guided).
#
#   tools/eval_default.sh WEIGHTS [LIMIT] [OUT]      # LIMIT: first N pairs of each split (default: all)
#
# Dev splits are for evaluation only (never trained on). Run from the repository root with
# ../shared beside it; results go to OUT/{vif,mef,mff}/ (default runs/eval_default).
set -euo pipefail
cd "$(dirname "$0")/.."
WEIGHTS=$1
LIMIT=${2:-}
OUT=${3:-runs/eval_default}
DATA=../shared/data
TCMOA=${TCMOA:-tcmoa}
limit=()
[ -n "$LIMIT" ] && limit=(--limit "$LIMIT")
baselines=(--method baseline:average --method baseline:laplacian --method baseline:mertens)
$TCMOA eval --a $DATA/vif/VIFB/vi --b $DATA/vif/VIFB/ir --task vif --preset vifb --metrics Qabf,Qcb,VIFF,SSIM \
    --method model="$WEIGHTS" --reconstruction both "${baselines[@]}" "${limit[@]}" -o "$OUT/vif" --quiet
$TCMOA eval --a $DATA/mef/MEFB-dev/over --b $DATA/mef/MEFB-dev/under --task mef --preset mefb --metrics MEF_SSIM,Qabf,Qcb \
    --method model="$WEIGHTS" --reconstruction both "${baselines[@]}" "${limit[@]}" -o "$OUT/mef" --quiet
$TCMOA eval --a $DATA/mff/MFIFB-dev/A --b $DATA/mff/MFIFB-dev/B --task mff --preset mefb --metrics Qabf,Qcb,NMI \
    --method model="$WEIGHTS" --reconstruction both "${baselines[@]}" "${limit[@]}" -o "$OUT/mff" --quiet
for task in vif mef mff; do echo "== $task"; cat "$OUT/$task/means.csv"; done
