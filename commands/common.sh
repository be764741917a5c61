# Shared by the recipes (sourced, not run): arguments, the two sizes, the data check and the
# command printer. Expects $default_out (relative to the repository root) to be set before sourcing.
#
# SIZE=small (default): the real data of ../shared/data on a CPU. Test on corridor and nordland
#   test at the images' native size; train on nordland train (validation on val); untrained
#   (ImageNet / random) models in tables I, IV and V; efficientnet_lite0 with ImageNet weights.
# SIZE=full: the paper's setting on a GPU server with the benchmark's datasets in DATA (pitts30k,
#   sf_xs, tokyo_xs, tokyo_night, laid out as the benchmark's datasets_vg scripts write them).
#   Test on all four at 480x640; train on pitts30k (5000 queries per epoch, up to 50 epochs,
#   patience 3); tables I, IV and V use GeM and NetVLAD models trained there; resnet18conv4 with
#   ImageNet weights (downloaded by torchvision).
# Every default below can be set from the environment; DRY_RUN=1 prints the commands only;
# MODEL_DIR [OUT] holds the trained models of tables I, IV and V (run_all.sh shares them).

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[1]}")" && pwd)
repo_root=$(dirname -- "$script_dir")
case "${1:-}" in
  -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[1]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
data=${1:-$repo_root/../shared/data}
out=${2:-$repo_root/$default_out}
SIZE=${SIZE:-small}
case "$SIZE" in
  small)
    read -r -a test_datasets <<< "${TEST_DATASETS:-corridor nordland}"
    train_dataset=${TRAIN_DATASET:-nordland}
    BACKBONE=${BACKBONE:-efficientnet_lite0}
    QUERIES=${QUERIES:-500} EPOCHS=${EPOCHS:-2} CACHE_REFRESH=${CACHE_REFRESH:-$QUERIES}
    PATIENCE=${PATIENCE:-3} TRAINED_MODELS=${TRAINED_MODELS:-0}
    if [ -n "${RESIZE:-}" ]; then read -r -a size_args <<< "--resize $RESIZE"
    else size_args=(--native-size); fi ;;
  full)
    read -r -a test_datasets <<< "${TEST_DATASETS:-pitts30k sf_xs tokyo_xs tokyo_night}"
    train_dataset=${TRAIN_DATASET:-pitts30k}
    BACKBONE=${BACKBONE:-resnet18conv4}
    QUERIES=${QUERIES:-5000} EPOCHS=${EPOCHS:-50} CACHE_REFRESH=${CACHE_REFRESH:-1000}
    PATIENCE=${PATIENCE:-3} TRAINED_MODELS=${TRAINED_MODELS:-1}
    read -r -a size_args <<< "--resize ${RESIZE:-480 640}" ;;
  *) echo "error: SIZE must be small or full, not '$SIZE'" >&2; exit 1 ;;
esac
WEIGHTS=${WEIGHTS:-imagenet}
export SIZE BACKBONE WEIGHTS QUERIES EPOCHS CACHE_REFRESH PATIENCE TRAINED_MODELS

run() {  # print a command (shell-quoted, so it can be pasted), then run it unless DRY_RUN=1
  printf '+'; printf ' %q' "$@"; printf '\n'
  [ "${DRY_RUN:-0}" = 1 ] || "$@"
}

for dataset in "${test_datasets[@]}"; do
  [ -d "$data/$dataset/images/test" ] || {
    echo "error: $data/$dataset/images/test does not exist; pass the folder holding the" \
      "datasets (SIZE=$SIZE needs: ${test_datasets[*]})" >&2
    exit 1; }
done
mkdir -p -- "$out"

has_split() {  # DATASET SPLIT
  [ -d "$data/$1/images/$2" ]
}

cluster_args() {  # DATASET: NetVLAD k-means on the training images where the dataset has them
  if has_split "$1" train; then echo "--cluster-split train"; fi
}

# Training recipes: train on $train_dataset's train split (validation on val), then extract the
# best model on every test dataset. Sized by QUERIES (queries per epoch) and EPOCHS.
AGGREGATION=${AGGREGATION:-gem}
trained=()
train_model() {  # NAME [extra vprkit train options...]: OUT/NAME/best.pth, trained once
  local name=$1
  shift
  if [ ! -f "$out/$name/best.pth" ]; then
    [ "${DRY_RUN:-0}" = 1 ] || rm -rf -- "${out:?}/$name"
    run vprkit train "$data/$train_dataset" -o "$out/$name" --backbone "$BACKBONE" \
      --weights "$WEIGHTS" --aggregation "$AGGREGATION" "${size_args[@]}" \
      --queries-per-epoch "$QUERIES" --cache-refresh "$CACHE_REFRESH" --epochs "$EPOCHS" \
      --patience "$PATIENCE" --device "${DEVICE:-auto}" --workers "${WORKERS:-2}" --quiet "$@"
  fi
}

train_and_test() {  # NAME [extra vprkit train options...]: train, then OUT/NAME[_DATASET].h5
  local name=$1 dataset file
  train_model "$@"
  for dataset in "${test_datasets[@]}"; do
    [ "$dataset" = "$train_dataset" ] || [ "$SIZE" = full ] || continue
    file=$out/$name.h5
    [ "$SIZE" = full ] && file=$out/${name}_$dataset.h5
    run vprkit extract "$data/$dataset" -o "$file" --checkpoint "$out/$name/best.pth" \
      "${size_args[@]}" --device "${DEVICE:-auto}" --workers "${WORKERS:-2}" --quiet
    trained+=("$file")
  done
}

model_args() {  # AGGREGATION DATASET: the model options of tables I, IV and V
  local agg=$1 dataset=$2
  if [ "$TRAINED_MODELS" = 1 ]; then  # (run in $(...): a subshell, so out can change)
    out=${MODEL_DIR:-$out}
    AGGREGATION=$agg train_model "$agg" >&2
    echo "--checkpoint $out/$agg/best.pth"
  else
    local cluster=""
    [ "$agg" = netvlad ] && cluster=$(cluster_args "$dataset")
    echo "--backbone $BACKBONE --weights $WEIGHTS --aggregation $agg $cluster"
  fi
  return 0
}

augmentation_table() {  # FAMILY (night | occlusion) TABLE_NAME: vanilla and presets M1..M6
  local family=$1 table=$2 m
  read -r -a train_args <<< "${TRAIN_ARGS:---lr 1e-4}"
  train_and_test vanilla "${train_args[@]}"
  for m in M1 M2 M3 M4 M5 M6; do
    train_and_test "${family}_$m" "${train_args[@]}" --augment "$family:$m"
  done
  run vprkit evaluate "${trained[@]}" --json "$out/$table.json"
}
