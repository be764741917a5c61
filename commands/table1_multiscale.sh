#!/usr/bin/env bash
# Table I of the paper: the multi-scale pyramid versus vanilla single-scale inference, for GeM and
# NetVLAD, Recall@1/5/10/20, on the real data of ../shared/data (corridor test, nordland test).
#
# Usage: commands/table1_multiscale.sh [DATA [OUT]]
#   DATA  folder holding corridor/ and nordland/  [<repository root>/../shared/data]
#   OUT   folder for the descriptor files and table1.json  [<repository root>/results/table1]
# Environment [defaults]: SIZE [small] (or full: see commands/common.sh)
#   BACKBONE [efficientnet_lite0]  WEIGHTS [imagenet]  (efficientnet_lite0's ImageNet weights are
#            offline, from the vprkit[efficientnet] extra; e.g. BACKBONE=resnet18conv4 WEIGHTS=none)
#   SCALES [1,2,3]  DEVICE [auto]  WORKERS [2]  BATCH_SIZE [16]
#   EXTRACT_ARGS []  extra options for every extract, e.g. --overwrite
#
# Images are used at their native size (--native-size): corridor is 160x120, so its scales are
# 160x120, 80x60 and 53x40 pixels (about 10x8, 5x4 and 4x3 cells of a stride-16 backbone);
# nordland is 64x32, so scale 3 (21x10) is smaller than one stride-16 cell and is a weak pyramid
# level there. File names do not name the model: use one OUT per BACKBONE/WEIGHTS (vprkit refuses
# to add to a file made by another model). A rerun resumes an interrupted extraction and only
# evaluates again where the files are complete.
set -euo pipefail

default_out=results/table1
# shellcheck source=commands/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"
SCALES=${SCALES:-1,2,3}
read -r -a extract_args <<< "${EXTRACT_ARGS:-}"
start=$SECONDS

files=()
for dataset in "${test_datasets[@]}"; do
  for agg in gem netvlad; do
    read -r -a model <<< "$(model_args "$agg" "$dataset")"
    run vprkit extract "$data/$dataset" -o "$out/${dataset}_${agg}.h5" --split test "${model[@]}" \
      "${size_args[@]}" --scales "$SCALES" --device "${DEVICE:-auto}" --workers "${WORKERS:-2}" \
      --batch-size "${BATCH_SIZE:-16}" ${extract_args[@]+"${extract_args[@]}"}
    files+=("$out/${dataset}_${agg}.h5")
  done
done

# vanilla scale 1, then the pyramids 1+2, 1+2+3, ...
scale_args=() spec=""
IFS=, read -r -a scales <<< "$SCALES"
for s in "${scales[@]}"; do spec=${spec:+$spec+}$s; scale_args+=(--scale "$spec"); done
run vprkit evaluate "${files[@]}" "${scale_args[@]}" \
  --json "$out/table1.json"
echo "# done in $((SECONDS - start)) s"
