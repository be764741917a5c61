# Shared by the recipes (sourced, not run): arguments, the data check and the command printer.
# Expects $default_out (relative to the repository root) to be set before sourcing.

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[1]}")" && pwd)
repo_root=$(dirname -- "$script_dir")
case "${1:-}" in
  -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[1]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac
data=${1:-$repo_root/../shared/data}
out=${2:-$repo_root/$default_out}
BACKBONE=${BACKBONE:-efficientnet_lite0}
WEIGHTS=${WEIGHTS:-imagenet}

run() {  # print a command (shell-quoted, so it can be pasted), then run it
  printf '+'; printf ' %q' "$@"; printf '\n'
  "$@"
}

for dataset in corridor nordland; do
  [ -d "$data/$dataset/images/test" ] || {
    echo "error: $data/$dataset/images/test does not exist; pass the shared data folder" >&2
    exit 1; }
done
mkdir -p -- "$out"

# Training recipes: train on nordland's train split (validation on val), then extract the best
# model on nordland test. Sized for a CPU by QUERIES (queries per epoch) and EPOCHS.
QUERIES=${QUERIES:-500}
EPOCHS=${EPOCHS:-2}
AGGREGATION=${AGGREGATION:-gem}
trained=()
train_and_test() {  # NAME [extra vprkit train options...]
  local name=$1
  shift
  if [ ! -f "$out/$name/best.pth" ]; then
    rm -rf -- "${out:?}/$name"
    run vprkit train "$data/nordland" --out "$out/$name" --backbone "$BACKBONE" \
      --weights "$WEIGHTS" --aggregation "$AGGREGATION" --native-size \
      --queries-per-epoch "$QUERIES" --cache-refresh "$QUERIES" --epochs "$EPOCHS" \
      --workers "${WORKERS:-2}" --quiet "$@"
  fi
  run vprkit extract "$data/nordland" -o "$out/$name.h5" --checkpoint "$out/$name/best.pth" \
    --native-size --workers "${WORKERS:-2}" --quiet
  trained+=("$out/$name.h5")
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
