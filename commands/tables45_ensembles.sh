#!/usr/bin/env bash
# Tables IV and V of the paper: GeM + NetVLAD ensembles by plain concatenation (IV) and by
# concatenation after reducing NetVLAD with PCA (V), Recall@1/5/10/20, from stored descriptors,
# on the real data of ../shared/data (corridor test, nordland test). (Timing of combine + evaluate
# against re-extraction: benchmarks/bench_combine.py.)
#
# Usage: commands/tables45_ensembles.sh [DATA [OUT]]
#   DATA  folder holding corridor/ and nordland/  [<repository root>/../shared/data]
#   OUT   output folder  [<repository root>/results/tables45]
# Environment [defaults]:
#   BACKBONE [efficientnet_lite0]  WEIGHTS [imagenet]  DEVICE [auto]  WORKERS [2]
#   PCA_NORDLAND [2048]  PCA dimension on nordland, fitted on the train split (the benchmark's way)
#   PCA_CORRIDOR [128]   PCA dimension on corridor, fitted on its 222 query and database rows (it
#                        has no train split, and a PCA cannot have more dimensions than rows)
# GeM (112-D for efficientnet_lite0, 256-D for resnet18conv4) is narrower than the PCA dimension
# and is kept as it is, as in the paper (NetVLAD 16384 -> 2048 plus GeM 256).
set -euo pipefail

default_out=results/tables45
# shellcheck source=commands/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"
common=(--backbone "$BACKBONE" --weights "$WEIGHTS" --native-size --device "${DEVICE:-auto}"
        --workers "${WORKERS:-2}")

for dataset in corridor nordland; do
  cluster=()
  [ "$dataset" = nordland ] && cluster=(--cluster-split train)
  run vprkit extract "$data/$dataset" -o "$out/${dataset}_gem.h5" "${common[@]}" --aggregation gem
  run vprkit extract "$data/$dataset" -o "$out/${dataset}_netvlad.h5" "${common[@]}" \
    --aggregation netvlad ${cluster[@]+"${cluster[@]}"}
done
# the same NetVLAD model on nordland's train split, to fit the PCA on (as the benchmark does)
run vprkit extract "$data/nordland" -o "$out/nordland_train_netvlad.h5" --split train \
  "${common[@]}" --aggregation netvlad --cluster-split train

for dataset in corridor nordland; do
  run vprkit combine "$out/${dataset}_gem.h5" "$out/${dataset}_netvlad.h5" \
    -o "$out/${dataset}_concat.h5" --overwrite --quiet
done
run vprkit combine "$out/corridor_gem.h5" "$out/corridor_netvlad.h5" --pca "${PCA_CORRIDOR:-128}" \
  --pca-fit queries+database -o "$out/corridor_pca.h5" --overwrite --quiet
run vprkit combine "$out/nordland_gem.h5" "$out/nordland_netvlad.h5" --pca "${PCA_NORDLAND:-2048}" \
  --pca-fit "$out/nordland_train_netvlad.h5" -o "$out/nordland_pca.h5" --overwrite --quiet
run vprkit evaluate "$out"/{corridor,nordland}_{gem,netvlad,concat,pca}.h5 --json "$out/tables45.json"
