#!/usr/bin/env bash
# Tables IV and V of the paper: GeM + NetVLAD ensembles by plain concatenation (IV) and by
# concatenation after reducing NetVLAD with PCA (V), Recall@1/5/10/20, from stored descriptors,
# on the real data of ../shared/data (corridor test, nordland test). (Timing of combine + evaluate
# against re-extraction: benchmarks/bench_combine.py.)
#
# Usage: commands/tables45_ensembles.sh [DATA [OUT]]
#   DATA  folder holding corridor/ and nordland/  [<repository root>/../shared/data]
#   OUT   output folder  [<repository root>/results/tables45]
# Environment [defaults]: SIZE [small] (or full: see commands/common.sh)
#   BACKBONE [efficientnet_lite0]  WEIGHTS [imagenet]  DEVICE [auto]  WORKERS [2]
#   PCA [2048]  PCA dimension of NetVLAD, fitted on training images (the benchmark's way: the
#               dataset's own train split, or the training dataset's with SIZE=full)
#   PCA_NO_TRAIN [128]  for a dataset without a train split (corridor): fitted on its own
#               query and database rows (222 on corridor; a PCA cannot have more dimensions)
# GeM (112-D for efficientnet_lite0, 256-D for resnet18conv4) is narrower than the PCA dimension
# and is kept as it is, as in the paper (NetVLAD 16384 -> 2048 plus GeM 256).
set -euo pipefail

default_out=results/tables45
# shellcheck source=commands/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"
common=("${size_args[@]}" --device "${DEVICE:-auto}" --workers "${WORKERS:-2}")
PCA=${PCA:-2048}
PCA_NO_TRAIN=${PCA_NO_TRAIN:-128}

files=()
for dataset in "${test_datasets[@]}"; do
  read -r -a gem <<< "$(model_args gem "$dataset")"
  read -r -a netvlad <<< "$(model_args netvlad "$dataset")"
  run vprkit extract "$data/$dataset" -o "$out/${dataset}_gem.h5" "${common[@]}" "${gem[@]}"
  run vprkit extract "$data/$dataset" -o "$out/${dataset}_netvlad.h5" "${common[@]}" "${netvlad[@]}"
  run vprkit combine "$out/${dataset}_gem.h5" "$out/${dataset}_netvlad.h5" \
    -o "$out/${dataset}_concat.h5" --overwrite --quiet
  # PCA fitted on training images of the same model: the training dataset's when the models are
  # trained (one model for every dataset), else the dataset's own train split; a dataset without
  # one fits on its own queries and database, with PCA_NO_TRAIN dimensions
  fit_dataset=$dataset
  [ "$TRAINED_MODELS" = 1 ] && fit_dataset=$train_dataset
  if has_split "$fit_dataset" train; then
    fit_file=$out/${fit_dataset}_train_netvlad.h5
    [ -f "$fit_file" ] && [ "$fit_dataset" != "$dataset" ] ||
      run vprkit extract "$data/$fit_dataset" -o "$fit_file" --split train "${common[@]}" "${netvlad[@]}"
    fit=(--pca "$PCA" --pca-fit "$fit_file")
  else
    fit=(--pca "$PCA_NO_TRAIN" --pca-fit queries+database)
  fi
  run vprkit combine "$out/${dataset}_gem.h5" "$out/${dataset}_netvlad.h5" "${fit[@]}" \
    -o "$out/${dataset}_pca.h5" --overwrite --quiet
  files+=("$out/${dataset}"_{gem,netvlad,concat,pca}.h5)
done
run vprkit evaluate "${files[@]}" --json "$out/tables45.json"
