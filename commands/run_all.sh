#!/usr/bin/env bash
# Every recipe at its small (CPU) size, then docs/results.md and its plots with `vprkit report`.
#
# Usage: commands/run_all.sh [DATA [OUT]]   (OUT default: results/all; the report goes to
#        <repository root>/docs/results.md)
# Environment [defaults]: BACKBONE [efficientnet_lite0] WEIGHTS [imagenet] QUERIES [500]
#   EPOCHS [2] for every training recipe (fig45 included); anything the recipes take.
# Measured: 29 min on 2 CPU cores (27 training runs of about a minute each).
set -euo pipefail
default_out=results/all
# shellcheck source=commands/common.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"
export QUERIES EPOCHS BACKBONE WEIGHTS
start=$SECONDS

for recipe in table1_multiscale tables45_ensembles table2_optimizers fig45_schedulers \
              table6_night table7_occlusion; do
  run "$script_dir/$recipe.sh" "$data" "$out/$recipe"
done
runs=()
for recipe in table2_optimizers fig45_schedulers table6_night table7_occlusion; do
  for run_dir in "$out/$recipe"/*/; do runs+=("${run_dir%/}"); done
done
run vprkit report "$out"/table1_multiscale/table1.json "$out"/tables45_ensembles/tables45.json \
  "$out"/table2_optimizers/table2.json "$out"/fig45_schedulers/fig45.json \
  "$out"/table6_night/table6.json "$out"/table7_occlusion/table7.json "${runs[@]}" \
  -o "$repo_root/docs/results.md" \
  --title "vprkit results on ../shared/data ($BACKBONE, $WEIGHTS; made by commands/run_all.sh)"
echo "# done in $((SECONDS - start)) s"
