#!/usr/bin/env bash
# Every recipe for every model, then docs/results.md and its plots with `vprkit report`.
#
# Usage: commands/run_all.sh [DATA [OUT]]   (OUT default: results/all; the report goes to
#        REPORT [<repository root>/docs/results.md], with the notes of NOTES
#        [<repository root>/docs/results_notes.md] under its title when that file exists)
# Environment [defaults]: SIZE [small] (or full: see commands/common.sh)
#   MODELS ["efficientnet_lite0:imagenet resnet18conv4:none"], or with SIZE=full
#          ["resnet18conv4:imagenet"]: BACKBONE:WEIGHTS pairs, one OUT/<backbone> folder each
#   QUERIES [500] EPOCHS [2] for every training recipe (fig45 included); anything the recipes take.
#   NORDLAND_BEST [1]: with SIZE=small, then commands/nordland_best.sh (its own model and sizes)
#   into OUT/nordland_best; 0 leaves it out.
# Measured (SIZE=small, 2 idle CPU cores): efficientnet_lite0 29 min, resnet18conv4 (random
# weights: no ImageNet ResNet offline) 24 min.
set -euo pipefail
default_out=results/all
# shellcheck source=commands/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"
if [ "$SIZE" = full ]; then MODELS=${MODELS:-resnet18conv4:imagenet}
else MODELS=${MODELS:-efficientnet_lite0:imagenet resnet18conv4:none}; fi
report=${REPORT:-$repo_root/docs/results.md}
notes=${NOTES:-$repo_root/docs/results_notes.md}
start=$SECONDS

tables=() runs=() names=()
for model in $MODELS; do
  backbone=${model%%:*} weights=${model#*:}
  names+=("$backbone ($weights)")
  for recipe in table1_multiscale tables45_ensembles table2_optimizers fig45_schedulers \
                table6_night table7_occlusion; do
    echo "# $recipe, $backbone ($weights)"  # (a recipe prints its own commands; DRY_RUN too)
    BACKBONE=$backbone WEIGHTS=$weights MODEL_DIR=$out/$backbone/models \
      "$script_dir/$recipe.sh" "$data" "$out/$backbone/$recipe"
    [ "${DRY_RUN:-0}" = 1 ] && continue
    tables+=("$(ls "$out/$backbone/$recipe"/*.json)")
    for run_dir in "$out/$backbone/$recipe"/*/; do
      [ -f "$run_dir/metrics.jsonl" ] && runs+=("${run_dir%/}")
    done
  done
  for run_dir in "$out/$backbone/models"/*/; do  # models of tables I, IV, V (TRAINED_MODELS=1)
    [ -f "$run_dir/metrics.jsonl" ] && runs+=("${run_dir%/}")
  done
done
if [ "$SIZE" = small ] && [ "${NORDLAND_BEST:-1}" = 1 ]; then
  echo "# nordland_best"  # its own sizes and model, not the loop's
  env -u BACKBONE -u WEIGHTS -u QUERIES -u EPOCHS -u CACHE_REFRESH -u PATIENCE -u RESIZE \
    -u TRAINED_MODELS "$script_dir/nordland_best.sh" "$data" "$out/nordland_best"
  if [ "${DRY_RUN:-0}" != 1 ]; then
    tables+=("$out/nordland_best/nordland_best.json")
    for run_dir in "$out/nordland_best"/*/; do
      [ -f "$run_dir/metrics.jsonl" ] && runs+=("${run_dir%/}")
    done
  fi
fi
notes_args=()
[ -f "$notes" ] && notes_args=(--notes "$notes")
label=$(printf '%s, ' "${names[@]}")
run vprkit report "${tables[@]}" ${runs[@]+"${runs[@]}"} -o "$report" "${notes_args[@]}" \
  --title "vprkit results ($SIZE size: ${label%, }; made by commands/run_all.sh)"
echo "# done in $((SECONDS - start)) s"
